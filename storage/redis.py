"""The Redis connection: built from REDIS_URL, checked at start, named (redacted) on failure.

With REDIS_CLUSTER=true the URL names any node of a Redis Cluster and the client is a
`redis.asyncio.cluster.RedisCluster`, which discovers the others and routes each
command to the node serving its key's slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Literal, overload

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from base.logs import one_line
from base.settings import REDIS_SOCKET_TIMEOUT_S, redact_url
from storage.wire import fast_packing

# Errors after which the same command may succeed later: the entry stays pending.
# On a cluster also those of a failover under way, once redis-py's own retries ran out:
# CLUSTERDOWN (a master is failing, no replica promoted yet), TRYAGAIN (a slot migrating)
# and a slot that no node serves in the client's map.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
)


# Either client: the commands mmops uses have the same signatures on both.
AnyRedis = aioredis.Redis | RedisCluster


# redis-py's preamble to the reason it could not reach a cluster's startup node
_NO_NODE = "Redis Cluster cannot be connected. Please provide at least one reachable node: "


class ServerUnreachable(RuntimeError):
    """A server could not be reached; str() names it by its redacted URL."""


def client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client for `url` (redis://, rediss://, unix://; ACL user:password allowed).

    `blocking` clients are for XREADGROUP BLOCK: their socket timeout leaves room for it.
    """
    return fast_packing(
        aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=None if blocking else REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=5,
            health_check_interval=15,
            retry_on_timeout=False,
            max_connections=256,
        )
    )


def cluster_client(
    url: str, *, blocking: bool = False, nodes: Sequence[tuple[str, int]] = ()
) -> RedisCluster:
    """A Redis Cluster client that starts from the node at `url` (redis:// or rediss://)
    and from `nodes` (host, port), e.g. the nodes another client knows now."""
    return RedisCluster.from_url(
        url,
        startup_nodes=[ClusterNode(host, port) for host, port in nodes] or None,
        decode_responses=False,
        socket_timeout=None if blocking else REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5,
        health_check_interval=15,
        max_connections=256,  # per node
    )


@overload
async def connect(
    url: str, *, blocking: bool = False, cluster: Literal[False] = False
) -> aioredis.Redis: ...
@overload
async def connect(url: str, *, blocking: bool = False, cluster: Literal[True]) -> RedisCluster: ...
@overload
async def connect(url: str, *, blocking: bool = False, cluster: bool) -> AnyRedis: ...
async def connect(url: str, *, blocking: bool = False, cluster: bool = False) -> AnyRedis:
    """A client that has answered, or ServerUnreachable naming the URL (password redacted).

    `cluster` (REDIS_CLUSTER): a RedisCluster that has read the slot map from the node at
    `url`. Pointing either mode at the other kind of server is refused with one line.
    """
    where = f"Redis at {redact_url(url)}"
    if cluster:
        try:
            conn: AnyRedis = cluster_client(url, blocking=blocking)
        except (RedisError, RedisClusterException) as exc:  # e.g. a database other than 0
            raise ServerUnreachable(f"{where}: {one_line(exc)} (REDIS_CLUSTER=true)") from None
    else:
        conn = client(url, blocking=blocking)
    try:
        if isinstance(conn, RedisCluster):
            await conn.initialize()
        await _answers(conn)
        if isinstance(conn, aioredis.Redis) and await _cluster_enabled(conn):
            raise ServerUnreachable(
                f"{where} is a Redis Cluster node: set REDIS_CLUSTER=true to use it"
            )
    except (RedisError, RedisClusterException, OSError) as exc:
        await conn.aclose()
        text = one_line(exc).removeprefix(_NO_NODE)
        if cluster and "cluster mode is not enabled" in text.lower():
            raise ServerUnreachable(
                f"{where} is not a Redis Cluster node (REDIS_CLUSTER=true)"
            ) from None
        raise ServerUnreachable(f"{where} is unreachable: {text}") from None
    except ServerUnreachable:
        await conn.aclose()
        raise
    return conn


LOADING_WAIT_S = 60.0  # a Redis that restarts answers LOADING while it reads its AOF


async def _answers(conn: AnyRedis) -> None:
    """PING, waiting while the server loads its data set (a restart): a worker started
    meanwhile comes up once Redis does, instead of exiting."""
    deadline = time.monotonic() + LOADING_WAIT_S
    while True:
        try:
            await conn.ping()
            return
        except BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _cluster_enabled(conn: aioredis.Redis) -> bool:
    """INFO cluster says cluster_enabled:1 (False when INFO is not allowed to this user)."""
    try:
        info = await conn.info("cluster")
    except ResponseError:
        return False
    return bool(info.get("cluster_enabled"))


def is_cluster(redis: AnyRedis) -> bool:
    return isinstance(redis, RedisCluster)


StreamEntry = tuple[str, dict[bytes, bytes]]


def as_text(value: object) -> str:
    """A Redis reply value (bytes with decode_responses=False) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def stream_id(text: str) -> tuple[int, int]:
    """A stream entry id `ms-seq` as (ms, seq), ordered as Redis orders ids."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entries_of(reply: object) -> list[StreamEntry]:
    """An XRANGE/XREVRANGE reply as (id, fields) pairs with text ids (a trimmed payload: {})."""
    out: list[StreamEntry] = []
    for entry_id, fields in reply or []:  # type: ignore[attr-defined]
        out.append((as_text(entry_id), dict(fields or {})))
    return out
