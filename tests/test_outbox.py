"""The per-session outbox on a real Redis Cluster: a commit's writes to global keys arrive
once, whatever crash comes between the commit and the move (storage/outbox.py)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from storage import ops
from storage.keys import Keys
from storage.ledger import Applied, Group, Ledger, Write
from storage.outbox import Outbox, hash_tag, split

pytestmark = pytest.mark.redis


def doc(version: int, body: str = "x") -> bytes:
    return b'{"v":%d,"body":"%s"}' % (version, body.encode())


async def takeprofits(redis: Any, keys: Keys) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.takeprofits)]


async def test_a_commit_reaches_the_global_stream_once_on_a_cluster(
    cluster_redis: RedisCluster, keys: Keys
) -> None:
    ledger = Ledger(cluster_redis, keys, cluster=True)  # type: ignore[arg-type]
    event = ops.xadd(keys.takeprofits, {"type": "created", "session_id": "s-1"})
    index = ops.zadd(keys.sessions, 5, "s-1")
    local = ops.hset(keys.session("s-1"), {"seen": 1})
    reply = await ledger.commit("s-1", [Write("p-1", 0, doc(1))], ops=[event, index, local])
    assert isinstance(reply, Applied)
    assert [f[b"type"] for f in await takeprofits(cluster_redis, keys)] == [b"created"]
    assert await cluster_redis.zscore(keys.sessions, "s-1") == 5
    assert await cluster_redis.hget(keys.session("s-1"), "seen") == b"1"
    assert await cluster_redis.xlen(keys.outbox("s-1")) == 0  # moved, then deleted

    groups = {
        "s-2": [Group((), [Write("p-1", 0, doc(1))], [event]), Group((), [Write("p-2", 0, doc(1))])]
    }
    assert await ledger.commit_many(groups) == {"s-2": ["ok", "ok"]}
    assert len(await takeprofits(cluster_redis, keys)) == 2


async def test_a_crash_between_the_move_and_the_delete_doubles_nothing(
    cluster_redis: RedisCluster, keys: Keys
) -> None:
    """An entry whose writes were applied but which is still in the outbox (the mover died
    before XDEL) is applied again by the next drain: the markers make that a no-op."""
    outbox = Outbox(cluster_redis, keys)  # type: ignore[arg-type]
    event = ops.xadd(keys.takeprofits, {"type": "created", "session_id": "s-3"})
    encoded = Outbox.encode([event])
    entry = (await cluster_redis.xadd(keys.outbox("s-3"), {"ops": encoded})).decode()
    await outbox.apply("s-3", entry, encoded)  # the mover applied it, then died
    assert len(await takeprofits(cluster_redis, keys)) == 1
    assert await outbox.drain("s-3") == 1  # the next drain finds it still in the outbox
    assert len(await takeprofits(cluster_redis, keys)) == 1
    assert await cluster_redis.xlen(keys.outbox("s-3")) == 0


def test_routing_keeps_the_session_slot_in_the_script() -> None:
    keys = Keys("t:")
    local, away = split(
        keys.positions("s-1"),
        [
            ops.hset(keys.tp_order("s-1", "o"), {"a": 1}),
            ops.xadd(keys.takeprofits, {"a": 1}),
            ops.decimal_incrby(keys.metrics_takeprofit("s-1"), "v", 1),  # type: ignore[arg-type]
        ],
    )
    assert [op.args[0] for op in local] == ["HSET", keys.metrics_takeprofit("s-1")]
    assert [op.args[1] for op in away] == [keys.takeprofits]
    assert hash_tag("a{b}c") == "b" and hash_tag("a{}c{d}") == "a{}c{d}" and hash_tag("x") == "x"
