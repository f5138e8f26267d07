"""HSCAN/SSCAN may return an element twice; what the migration reads through them counts once.

Redis guarantees a SCAN-family walk returns every element that stays in the table *at
least* once: when the table shrinks during the walk (fields deleted, e.g. by retention),
buckets already visited are visited again. Issue 11's trap: a re-visited position or TP
order was counted twice by the migration.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from base.clock import ManualClock
from mmops.app import App
from storage import session_reader as reader
from storage.keys import Keys
from tests.conftest import MakeApp
from tests.test_migrator import T0, full_session, table
from workers.migration import MigrationStatus, migrate_session


class Revisiting:
    """The real client, except that a scan of a hash or set is served in two pages, the
    second of which returns the first page's first element again: a re-visit."""

    def __init__(self, real: aioredis.Redis) -> None:
        self.real = real
        self.revisits: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def hscan(self, key: str, cursor: int = 0, **kw: Any) -> tuple[int, dict[bytes, bytes]]:
        items = list((await self.real.hgetall(key)).items())
        return self._page(key, cursor, items, dict)  # type: ignore[return-value]

    async def sscan(self, key: str, cursor: int = 0, **kw: Any) -> tuple[int, list[bytes]]:
        members = sorted(await self.real.smembers(key))
        return self._page(key, cursor, members, list)  # type: ignore[return-value]

    def _page(self, key: str, cursor: int, elements: list[Any], kind: Any) -> tuple[int, Any]:
        half = (len(elements) + 1) // 2
        if cursor == 0:
            return (1 if len(elements) > 1 else 0), kind(elements[:half])
        self.revisits[key] += 1
        return 0, kind(elements[:1] + elements[half:])


class Pages:
    """A client whose HSCAN answers a crafted sequence of pages."""

    def __init__(self, pages: list[dict[bytes, bytes]]) -> None:
        self.pages = pages

    async def hscan(self, key: str, cursor: int = 0, **kw: Any) -> tuple[int, dict[bytes, bytes]]:
        return (0 if cursor + 1 == len(self.pages) else cursor + 1), self.pages[cursor]


async def collect(source: AsyncIterator[list[Any]]) -> list[Any]:
    return [x async for chunk in source for x in chunk]


async def test_a_crafted_sequence_of_pages_yields_each_field_once() -> None:
    pages = [{b"a": b"1", b"b": b"2"}, {b"b": b"2", b"c": b"3"}, {b"a": b"1", b"d": b"4"}]
    client: Any = Pages(pages)
    assert await collect(reader.scan_items(client, "h")) == [
        ("a", b"1"),
        ("b", b"2"),
        ("c", b"3"),
        ("d", b"4"),
    ]
    assert await collect(reader.scan_values(Pages(pages), "h")) == [b"1", b"2", b"3", b"4"]  # type: ignore[arg-type]


async def test_a_real_hash_shrinking_during_the_walk_is_read_once(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Small COUNT, most unseen fields deleted after the second page: Redis shrinks the table
    and re-visits buckets. The raw walk shows the duplicates; the reader returns none."""
    key = keys.positions("s-shrink")
    raw_dups = 0
    for _ in range(5):  # the bucket layout follows the server's random hash seed
        raw_dups += await _walk(redis, key, raw=True)
        if raw_dups:
            break
    assert raw_dups > 0, "Redis never re-visited a bucket: the setup no longer forces it"
    assert await _walk(redis, key, raw=False) == 0


async def _walk(redis: aioredis.Redis, key: str, *, raw: bool) -> int:
    """Duplicates returned by one walk of a 4096-field hash shrunk after its 2nd page."""
    n = 4096
    await redis.delete(key)
    await redis.hset(key, mapping={f"p{i}": "x" for i in range(n)})
    seen: list[bytes | str] = []

    async def shrink() -> None:
        kept = set(seen)
        gone = [f"p{i}" for i in range(n) if f"p{i}" not in kept and f"p{i}".encode() not in kept]
        for start in range(0, int(n * 0.95), 500):
            await redis.hdel(key, *gone[start : min(start + 500, int(n * 0.95))])
        for _ in range(100):  # operations move the incremental rehash along
            await redis.hget(key, "p0")

    if raw:
        cursor, pages = 0, 0
        while True:
            cursor, chunk = await redis.hscan(key, cursor, count=10)
            seen += list(chunk)
            pages += 1
            if pages == 2:
                await shrink()
            if cursor == 0:
                break
    else:
        pages = 0
        async for items in reader.scan_items(redis, key, count=10):
            seen += [field for field, _ in items]
            pages += 1
            if pages == 2:
                await shrink()
    survivors = set(map(lambda k: k.decode() if isinstance(k, bytes) else k, seen))
    assert survivors >= {f.decode() for f in await redis.hkeys(key)}  # nothing missed
    await redis.delete(key)
    return len(seen) - len(set(seen))


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(T0 + 60_000))


async def test_a_revisited_position_or_tp_order_counts_once(app: App, pg: asyncpg.Pool) -> None:
    await full_session(app)
    # a TP record no position mentions (an orphan the migration writes from its hash)
    await app.redis.hset(
        app.keys.tp_order("s-1", "TP-ORPHAN"),
        mapping={"position": "o-x", "symbol": "BTC/USD", "price": "61000", "quantity": "0.01"},
    )
    await app.redis.sadd(app.keys.tp_orders("s-1"), "TP-ORPHAN")
    plain = await migrate_session(app, None, "s-1", dry_run=True)
    revisiting = Revisiting(app.redis)
    twice = dataclasses.replace(app, redis=revisiting)
    dry = await migrate_session(twice, None, "s-1", dry_run=True)
    assert revisiting.revisits[app.keys.positions("s-1")] >= 1  # a position was re-visited
    assert revisiting.revisits[app.keys.tp_orders("s-1")] >= 1  # and a TP order id
    assert dry.status is MigrationStatus.DRY_RUN
    figures = ("fills", "orders", "pairs", "pnl", "fees", "duplicates")
    assert [getattr(dry, f) for f in figures] == [getattr(plain, f) for f in figures]
    assert plain.orders == 10  # 9 of the session + the orphan, once

    written = await migrate_session(twice, pg, "s-1")
    assert written.status is MigrationStatus.MIGRATED
    [s] = await table(pg, "SELECT total_orders, total_fills, total_pnl FROM sessions")
    assert (s["total_orders"], s["total_fills"], s["total_pnl"]) == (10, 7, plain.pnl)
    [trips] = await table(pg, "SELECT sum(round_trips)::int AS n FROM session_pairs")
    assert trips["n"] == 3  # two TP fills and one FIFO sell, each once
    assert await pg.fetchval("SELECT count(*) FROM orders WHERE id = 'TP-ORPHAN'") == 1
