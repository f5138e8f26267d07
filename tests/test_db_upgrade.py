"""`mmops db upgrade` through the real command: idempotent, safe from two processes at once,
and it creates the schema named by search_path when it is missing."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import schema
from storage.servers import Servers
from tests.conftest import MMOPS, with_search_path

TABLES = {"sessions", "orders", "fills", "session_pairs", "positions", "schema_migrations"}
VERSIONS = [m.version for m in schema.migrations()]
LATEST = max(VERSIONS)

pytestmark = pytest.mark.postgres


def upgrade(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def upgrade_concurrently(env: dict[str, str], count: int = 2) -> list[tuple[int, str, str]]:
    procs = [
        subprocess.Popen(
            [*MMOPS, "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def applied_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("applied ")]


async def assert_one_schema(servers: Servers, schema_name: str) -> None:
    conn = await asyncpg.connect(servers.database_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            schema_name,
        )
        names = [row["table_name"] for row in tables]
        assert sorted(names) == sorted(TABLES)  # each table once
        rows = await conn.fetch(f'SELECT version FROM "{schema_name}".schema_migrations')
        assert sorted(row["version"] for row in rows) == VERSIONS  # each version once
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1", schema_name
        )
        assert {"orders_session_symbol", "fills_session_symbol"} <= {
            r["indexname"] for r in indexes
        }
    finally:
        await conn.close()


def _schema_of(env: dict[str, str]) -> str:
    return env["DATABASE_URL"].rsplit("search_path=", 1)[1]


def test_upgrade_twice_applies_nothing_the_second_time(env: dict[str, str]) -> None:
    first = upgrade(env)
    assert first.returncode == 0, first.stderr
    assert applied_lines(first.stdout) == [
        f"applied {m.version:04d}_{m.name}" for m in schema.migrations()
    ]
    assert first.stdout.splitlines()[-1] == f"schema at version {LATEST}"

    second = upgrade(env)
    assert second.returncode == 0, second.stderr
    assert applied_lines(second.stdout) == []
    assert second.stdout.strip() == f"schema at version {LATEST}"

    version = subprocess.run(
        [*MMOPS, "db", "version"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0 and version.stdout.strip() == str(LATEST)


async def test_upgrade_twice_leaves_one_schema(env: dict[str, str], servers: Servers) -> None:
    for _ in range(2):
        assert upgrade(env).returncode == 0
    await assert_one_schema(servers, _schema_of(env))


async def test_concurrent_upgrades_leave_one_schema(env: dict[str, str], servers: Servers) -> None:
    results = upgrade_concurrently(env)
    for code, _, err in results:
        assert code == 0, err
    applied = [line for _, out, _ in results for line in applied_lines(out)]
    assert sorted(applied) == sorted(
        f"applied {m.version:04d}_{m.name}" for m in schema.migrations()
    )
    await assert_one_schema(servers, _schema_of(env))


@pytest.fixture
async def missing_schema(servers: Servers) -> AsyncIterator[str]:
    """A schema name that does not exist yet; dropped afterwards."""
    name = f"t_new_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(servers.database_url)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    await conn.close()


async def test_upgrade_creates_a_missing_schema(
    env: dict[str, str],
    servers: Servers,
    missing_schema: str,
) -> None:
    env = {**env, "DATABASE_URL": with_search_path(servers.database_url, missing_schema)}
    done = upgrade(env)
    assert done.returncode == 0, done.stderr
    await assert_one_schema(servers, missing_schema)


async def test_concurrent_upgrades_create_a_missing_schema_once(
    env: dict[str, str],
    servers: Servers,
    missing_schema: str,
) -> None:
    env = {**env, "DATABASE_URL": with_search_path(servers.database_url, missing_schema)}
    results = upgrade_concurrently(env, count=3)
    for code, _, err in results:
        assert code == 0, err
    await assert_one_schema(servers, missing_schema)


async def test_many_connections_upgrading_a_missing_schema_at_once(
    servers: Servers,
    missing_schema: str,
) -> None:
    """The tightest race: eight connections call upgrade at the same moment."""
    url = with_search_path(servers.database_url, missing_schema)
    conns = [await asyncpg.connect(url) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(schema.upgrade(conn) for conn in conns), return_exceptions=True
        )
    finally:
        for conn in conns:
            await conn.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sum(len(r) for r in results if isinstance(r, list)) == len(VERSIONS)  # each applied once
    await assert_one_schema(servers, missing_schema)
