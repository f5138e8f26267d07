"""storage/scripts.py and the auto-pipeliner on both clients: a script runs on its keys' slot,
NOSCRIPT loads it and retries, and a call that already ran is never sent twice.

Every script text here is made unique per test (a comment with a token), so it starts out
in no node's cache: the shared Redis's script cache is never flushed under other tests.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from storage import scripts
from storage.local_cluster import LocalCluster
from storage.pipeliner import Pipeliner
from storage.redis import AnyRedis

COUNT = """-- {token}
local n = redis.call('INCR', KEYS[1])
return {{n, ARGV[1]}}"""


def counting_script() -> scripts.Script:
    return scripts.Script(COUNT.format(token=uuid.uuid4().hex))


@pytest.fixture
def client(any_redis: AnyRedis) -> AnyRedis:
    return any_redis


@pytest.fixture
def prefix(client: AnyRedis, names: tuple[str, str]) -> str:
    return names[0]


def session_keys(prefix: str, count: int) -> list[str]:
    """Keys of `count` sessions: many hash slots, so many nodes of a cluster."""
    return [f"{prefix}counter:{{s-{n}}}" for n in range(count)]


async def test_run_loads_a_script_no_node_knows(client: AnyRedis, prefix: str) -> None:
    script = counting_script()
    keys = session_keys(prefix, 12)
    assert [await scripts.run(client, script, [k], [k]) for k in keys] == [
        [1, k.encode()] for k in keys
    ]
    assert [await scripts.run(client, script, [k], ["x"]) for k in keys[:2]] == [[2, b"x"]] * 2


def test_slot_of_names_keys_that_span_slots() -> None:
    assert scripts.slot_of(["fills:{s-1}", "positions:{s-1}", "tp_order:{s-1}:o-9"]) == key_slot(
        b"s-1"
    )
    with pytest.raises(scripts.CrossSlot) as caught:
        scripts.slot_of(["fills:{s-1}", "mm:takeprofits"])
    assert "2 hash slots" in str(caught.value) and "'mm:takeprofits'" in str(caught.value)
    assert scripts.slot_of([]) == 0


async def test_a_cluster_refuses_a_cross_slot_script(
    cluster_redis: RedisCluster, names: tuple[str, str]
) -> None:
    prefix, _ = names
    with pytest.raises(RedisClusterException, match="same key slot"):
        await scripts.run(
            cluster_redis, counting_script(), [f"{prefix}a:{{s-1}}", f"{prefix}b:{{s-2}}"]
        )


async def test_queue_adds_a_script_call_to_either_pipeline(client: AnyRedis, prefix: str) -> None:
    script = counting_script()
    await scripts.load(client, script)
    keys = session_keys(prefix, 8)
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            scripts.queue(pipe, script, [key], ["q"])
        assert await pipe.execute() == [[1, b"q"]] * len(keys)


async def test_the_pipeliner_runs_every_call_once(client: AnyRedis, prefix: str) -> None:
    """Concurrent calls share pipelines; the first ones meet NOSCRIPT everywhere."""
    pipeliner = Pipeliner(client, max_batch=64)
    script = counting_script()
    keys = session_keys(prefix, 150)
    results = await asyncio.gather(
        *(pipeliner.run(script, [k], [str(i)]) for i, k in enumerate(keys))
    )
    assert results == [[1, str(i).encode()] for i in range(len(keys))]
    assert [int(await client.get(k)) for k in keys] == [1] * len(keys)  # type: ignore[arg-type]


async def test_a_partial_noscript_resends_only_the_calls_that_did_not_run(
    client: AnyRedis, prefix: str
) -> None:
    """One script is cached, the other is not: the cached one's calls ran and are not repeated."""
    known, unknown = counting_script(), counting_script()
    await scripts.load(client, known)
    keys = session_keys(prefix, 40)
    pipeliner = Pipeliner(client)
    calls = [pipeliner.run(known if i % 2 else unknown, [k], ["p"]) for i, k in enumerate(keys)]
    assert await asyncio.gather(*calls) == [[1, b"p"]] * len(keys)
    assert [int(await client.get(k)) for k in keys] == [1] * len(keys)  # type: ignore[arg-type]


async def test_a_node_that_lost_its_scripts_gets_them_again(
    cluster_redis: RedisCluster, redis_cluster: LocalCluster, names: tuple[str, str]
) -> None:
    """As after a failover: one master's script cache is empty, the others still have it."""
    prefix, _ = names
    script = counting_script()
    await scripts.load(cluster_redis, script)
    with redis_cluster.live_masters()[0].client() as node:
        node.script_flush()
    keys = session_keys(prefix, 60)
    pipeliner = Pipeliner(cluster_redis)
    results = await asyncio.gather(*(pipeliner.run(script, [k], ["f"]) for k in keys))
    assert results == [[1, b"f"]] * len(keys)
    assert [int(await cluster_redis.get(k)) for k in keys] == [1] * len(keys)  # type: ignore[arg-type]
    with redis_cluster.live_masters()[1].client() as node:
        node.script_flush()
    assert [await scripts.run(cluster_redis, script, [k], ["r"]) for k in keys] == [
        [2, b"r"]
    ] * len(keys)
