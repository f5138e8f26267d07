"""`mmops db upgrade --partitions N`: fills and orders hash-partitioned by session_id.

The same known answers as tests/test_queries.py (docs/queries.sql, `mmops report`) and the
migrator's re-run test (tests/test_migrator.py) hold on tables partitioned before the
sessions are migrated (this module's `pg`); tests/test_partitions_moved.py partitions
tables that already hold them."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from storage import partitioning, schema
from storage.postgres import create_pool
from tests.conftest import MMOPS, ROOT
from tests.test_migrator import app  # noqa: F401 - the fixture of the reused test
from tests.test_migrator import (
    test_rerun_inserts_nothing_and_new_fills_add_only_themselves as migrator_rerun_answers,
)
from tests.test_queries import migrated  # noqa: F401 - the sessions the answers are about
from tests.test_queries import test_queries_known_answers as query_answers
from tests.test_queries import test_report_tables as report_answers
from tests.test_session_life import (
    test_after_the_sync_the_tables_equal_a_whole_migration_of_the_same_state as sync_equals_whole,
)
from tests.test_session_life import (
    test_without_fills_later_tp_fills_and_reprices_reach_postgres as sync_answers,
)
from workers.migrator import MigratorHandler

PARTITIONS = 4


async def keys_of(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT conname::text AS name, pg_get_constraintdef(oid) AS definition
           FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype IN ('p', 'u')""",
        table,
    )
    return {r["name"]: r["definition"] for r in rows}


async def table_rows(conn: asyncpg.Connection, table: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY session_id, id")]


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """This module's `pg`: the migrations applied, then fills and orders partitioned."""
    pool = await create_pool(settings.database_url)
    async with pool.acquire() as conn:
        await schema.upgrade(conn)
        await schema.partition(conn, PARTITIONS)
    yield pool
    await pool.close()


async def test_the_partitioned_layout(pg: asyncpg.Pool) -> None:
    async with pg.acquire() as conn:
        for table in partitioning.TABLES:
            assert await partitioning.layout(conn, table) == PARTITIONS
        assert await keys_of(conn, "fills") == {
            "fills_pkey": "PRIMARY KEY (id, session_id)",
            "fills_session_id_order_id_symbol_timestamp_price_quantity_key": (
                'UNIQUE (session_id, order_id, symbol, "timestamp", price, quantity)'
            ),
        }
        assert await keys_of(conn, "orders") == {"orders_pkey": "PRIMARY KEY (id, session_id)"}
        indexes = {
            r["indexname"]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                " AND tablename IN ('fills', 'orders')"
            )
        }
        assert {"fills_session_symbol", "orders_session_symbol"} <= indexes
        parts = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass('fills') ORDER BY 1"
        )
        assert [r["relname"] for r in parts] == [f"fills_h4_{n}" for n in range(PARTITIONS)]


async def test_queries_and_report_on_tables_partitioned_before_migration(
    migrated: dict[str, Any],
    pg: asyncpg.Pool,
) -> None:
    async with pg.acquire() as conn:
        assert await partitioning.layout(conn, "fills") == PARTITIONS
        spread = await conn.fetchval("SELECT count(DISTINCT tableoid) FROM fills")
    assert spread == 2  # sessions A and B landed in different partitions
    await query_answers(migrated, pg)
    await report_answers(migrated, pg)


async def test_the_migrators_rerun_on_partitioned_tables(
    app: App,
    migrator: MigratorHandler,
    pg: asyncpg.Pool,
    settings: Settings,
) -> None:
    """Fast path, staging path (ON CONFLICT ON CONSTRAINT orders_pkey), a fill added later."""
    await migrator_rerun_answers(app, migrator, pg, settings)


async def test_the_sync_after_the_end_on_partitioned_tables(
    app: App,
    migrator: MigratorHandler,
    pg: asyncpg.Pool,
) -> None:
    """Later TP fills and a reprice after the end: the same answers as on plain tables
    (tests/test_session_life.py)."""
    assert isinstance(app.clock, ManualClock)
    await sync_answers(app, migrator, pg, app.clock)


async def test_the_synced_rows_equal_a_whole_migration_on_partitioned_tables(
    app: App,
    migrator: MigratorHandler,
    pg: asyncpg.Pool,
    settings: Settings,
) -> None:
    """A TP fill, a FIFO sell, a trader order and a new pair after the end."""
    await sync_equals_whole(app, migrator, pg, settings)


@pytest.mark.parametrize("bad", ["0", "-2", "four"])
def test_a_bad_partition_count_is_one_line(env: dict[str, str], bad: str) -> None:
    done = subprocess.run(
        [*MMOPS, "db", "upgrade", "--partitions", bad],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"mmops db upgrade: error: argument --partitions: expected a whole number >= 1, got {bad!r}"
    )
