"""REDIS_CLUSTER: the setting, `storage.redis.connect(..., cluster=True)`, and the one-line
errors when the URL is unreachable or names the other kind of server."""

from __future__ import annotations

import subprocess

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from base.settings import Settings, SettingsError
from storage import redis as redis_store
from storage.local_cluster import LocalCluster, cluster_port
from storage.servers import Servers
from tests.conftest import MMOPS, ROOT


def test_the_settings() -> None:
    assert Settings.from_env({}).redis_cluster is False
    on = Settings.from_env({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://10.0.0.7:7000"})
    assert on.redis_cluster is True
    assert Settings.from_env({"REDIS_CLUSTER": "yes", "REDIS_URL": "rediss://h:7000/0"})


@pytest.mark.parametrize(
    "url", ["unix:///run/redis.sock", "redis://127.0.0.1:7000/2", "redis://:pw@h:7000/1"]
)
def test_a_cluster_url_is_a_tcp_address_with_database_0(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"REDIS_CLUSTER": "true", "REDIS_URL": url})
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and "REDIS_CLUSTER=true" in message
    assert "\n" not in message and "pw" not in message


async def test_connect_returns_a_cluster_client(redis_cluster: LocalCluster) -> None:
    for node in redis_cluster.nodes:  # any node will do
        client = await redis_store.connect(node.url, cluster=True)
        try:
            assert isinstance(client, RedisCluster) and redis_store.is_cluster(client)
            assert {n.port for n in client.get_primaries()} == {
                m.port for m in redis_cluster.live_masters()
            }
        finally:
            await client.aclose()


async def test_the_wrong_kind_of_server_is_refused_in_one_line(
    redis_cluster: LocalCluster, servers: Servers
) -> None:
    with pytest.raises(redis_store.ServerUnreachable) as caught:
        await redis_store.connect(redis_cluster.url, cluster=False)
    assert str(caught.value) == (
        f"Redis at {redis_cluster.url} is a Redis Cluster node: set REDIS_CLUSTER=true to use it"
    )
    with pytest.raises(redis_store.ServerUnreachable) as caught:
        await redis_store.connect(servers.redis_url, cluster=True)
    message = str(caught.value)
    assert message.startswith(f"Redis at {servers.redis_url} is not a Redis Cluster node")
    assert "\n" not in message


async def test_an_unreachable_cluster_is_named_with_the_password_redacted() -> None:
    url = f"redis://admin:s3cret@127.0.0.1:{cluster_port()}/0"
    with pytest.raises(redis_store.ServerUnreachable) as caught:
        await redis_store.connect(url, cluster=True)
    message = str(caught.value)
    assert message.startswith(f"Redis at redis://admin:***@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "s3cret" not in message and "\n" not in message


def test_the_command_line_names_the_unreachable_cluster(env: dict[str, str]) -> None:
    port = cluster_port()
    env = {**env, "REDIS_CLUSTER": "true", "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0"}
    done = subprocess.run(
        [*MMOPS, "status"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"mmops: Redis at redis://:***@127.0.0.1:{port}/0 is unreachable")
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.redis
async def test_the_single_client_is_unchanged(servers: Servers) -> None:
    client = await redis_store.connect(servers.redis_url)
    try:
        assert isinstance(client, aioredis.Redis) and not redis_store.is_cluster(client)
    finally:
        await client.aclose()
