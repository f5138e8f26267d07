"""Reading a consumer group's entries as Redis sends them: every (field, value) pair kept.

redis-py turns an entry's fields into a dict, which keeps only the last value of a
repeated field; the contract makes such an entry invalid (docs/contract.md §1), so the
runtime reads through a client whose XREADGROUP and XAUTOCLAIM replies are left as
pairs. On one Redis that client shares the connection pool of the one it is made from.
A RedisCluster keeps one table of reply parsers for all its nodes, so changing it would
change every XREADGROUP of the process: the reader is a RedisCluster of its own (its
own connections, started from the nodes the other client knows), closed after use.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from storage.redis import AnyRedis, as_text, cluster_client, stream_id

Pairs = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: Pairs | None  # None: the payload was trimmed from the stream
    failures: int = 0  # times a handler raised on it (docs/architecture.md: poison entries)

    @property
    def ms(self) -> int:
        """The entry's XADD time (epoch ms), from its id."""
        return stream_id(self.id)[0]


def _pairs(flat: Sequence[Any] | None) -> Pairs | None:
    if not flat:
        return None
    return list(zip(flat[0::2], flat[1::2], strict=True))


def _entries(rows: Sequence[Any] | None) -> list[tuple[Any, Pairs | None]]:
    return [(row[0], _pairs(row[1])) if row is not None else (None, None) for row in rows or ()]


def _raw_xread(response: Any, **_: Any) -> list[Any]:
    if not response:
        return []
    if isinstance(response, dict):  # RESP3
        return [[stream, _entries(rows)] for stream, rows in response.items()]
    return [[stream, _entries(rows)] for stream, rows in response]


def _raw_xautoclaim(response: Any, **options: Any) -> Any:
    if options.get("parse_justid", False):
        return response[1]
    return [response[0], _entries(response[1]), *response[2:]]


def pair_reader(redis: AnyRedis, url: str) -> AnyRedis:
    """A client whose stream reads keep every field pair: on `redis`'s connection pool, or
    for a cluster a RedisCluster of its own from `url` and the nodes `redis` knows (it
    connects on first use; `aclose()` it when done, which leaves a shared pool open)."""
    reader: AnyRedis
    if isinstance(redis, RedisCluster):
        nodes = [(node.host, int(node.port)) for node in redis.get_nodes()]
        reader = cluster_client(url, blocking=True, nodes=nodes)
    else:
        reader = aioredis.Redis(connection_pool=redis.connection_pool)
    reader.set_response_callback("XREADGROUP", _raw_xread)
    reader.set_response_callback("XAUTOCLAIM", _raw_xautoclaim)
    return reader


async def read_group(
    reader: AnyRedis,
    group: str,
    consumer: str,
    stream: str,
    after: str,
    *,
    count: int,
    block_ms: int | None,
) -> list[Entry]:
    """XREADGROUP one stream from `after` ('>' for new entries, an id for our pending ones)."""
    reply: Any = await reader.xreadgroup(
        group, consumer, {stream: after}, count=count, block=block_ms
    )
    if not reply:
        return []
    return [Entry(as_text(mid), fields) for mid, fields in reply[0][1]]


@dataclass(frozen=True, slots=True)
class Claimed:
    cursor: str
    entries: list[Entry]
    nils: int  # Redis 6.2 answers a trimmed entry with a nil and leaves it pending
    deleted: list[str]  # Redis 7: ids whose payload was trimmed (already out of the PEL)


async def autoclaim(
    reader: AnyRedis,
    stream: str,
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    start: str,
    count: int,
) -> Claimed:
    reply: Any = await reader.xautoclaim(
        stream, group, consumer, min_idle_time=min_idle_ms, start_id=start, count=count
    )
    entries = [Entry(as_text(mid), fields) for mid, fields in reply[1] if mid is not None]
    deleted = [as_text(mid) for mid in reply[2]] if len(reply) > 2 and reply[2] else []
    return Claimed(as_text(reply[0]), entries, len(reply[1]) - len(entries), deleted)


Wanted = Callable[[dict[bytes, bytes] | None], bool]


async def pending_before(
    redis: AnyRedis,
    stream: str,
    group: str,
    upto: str,
    wanted: Wanted,
    *,
    skip: Container[str] = (),
    page: int = 200,
    pages: int = 10,
) -> str | None:
    """Why `group` has not processed everything `wanted` before entry `upto` (exclusive):
    the first such entry still pending (delivered, not acked) — or None once it has.

    Entries before `upto` were all delivered when `upto` was; pending ones are looked up
    to see what they are (a payload that is gone counts as wanted). `skip`: ids the caller
    knows are done (handled, not acked yet)."""
    start = "-"
    for _ in range(pages):
        rows = await redis.xpending_range(stream, group, min=start, max=f"({upto}", count=page)
        ids = [as_text(row["message_id"]) for row in rows]
        check = [mid for mid in ids if mid not in skip]
        if check:
            async with redis.pipeline(transaction=False) as pipe:
                for mid in check:
                    pipe.xrange(stream, mid, mid, count=1)
                found = await pipe.execute()
            for mid, entries in zip(check, found, strict=True):
                if wanted(entries[0][1] if entries else None):
                    return f"{group} has entry {mid} before {upto} pending"
        if len(rows) < page:
            return None
        start = "(" + ids[-1]
    return f"{group} has more than {page * pages} entries pending before {upto}"
