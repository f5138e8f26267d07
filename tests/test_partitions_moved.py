"""`mmops db upgrade --partitions N` on tables that already hold migrated sessions: the rows
move once (two upgrades at once, one moves them), nothing changes, the queries and the
report give tests/test_queries.py's known answers; re-partitioning and a plain upgrade."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import asyncpg

from base.settings import Settings
from storage import partitioning
from storage.postgres import create_pool
from tests.conftest import MMOPS, ROOT
from tests.test_queries import migrated  # noqa: F401 - the sessions the answers are about
from tests.test_queries import test_queries_known_answers as query_answers
from tests.test_queries import test_report_tables as report_answers

PARTITIONS = 4


async def table_rows(conn: asyncpg.Connection, table: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY session_id, id")]


async def upgrade_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "db",
        "upgrade",
        *args,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_rows_move_once_idempotently_and_queries_still_answer(
    migrated: dict[str, Any],
    env: dict[str, str],
    settings: Settings,
) -> None:
    """Sessions migrated into plain tables, then the real command, twice at once, then again."""
    pool = await create_pool(settings.database_url)
    try:
        async with pool.acquire() as conn:
            assert await partitioning.layout(conn, "fills") == 0  # conftest's pg: plain tables
            before = {t: await table_rows(conn, t) for t in partitioning.TABLES}
        assert before["fills"] and before["orders"]

        results = await asyncio.gather(
            upgrade_cli(env, "--partitions", str(PARTITIONS)),
            upgrade_cli(env, "--partitions", str(PARTITIONS)),
        )
        assert [code for code, _, _ in results] == [0, 0], results
        moved = [out for _, out, _ in results if "rows moved" in out]
        assert len(moved) == 1  # the advisory lock: one moved the rows, the other found them moved
        assert f"fills: hash-partitioned by session_id into {PARTITIONS} " in moved[0]
        assert f"({len(before['fills'])} rows moved; was a plain table)" in moved[0]
        other = next(out for _, out, _ in results if out != moved[0])
        assert f"fills: already hash-partitioned by session_id into {PARTITIONS}" in other

        async with pool.acquire() as conn:
            for table in partitioning.TABLES:
                assert await partitioning.layout(conn, table) == PARTITIONS
                assert await table_rows(conn, table) == before[table]
        await query_answers(migrated, pool)
        await report_answers(migrated, pool)

        code, out, _ = await upgrade_cli(env, "--partitions", "2")  # re-partition
        assert code == 0 and "fills: hash-partitioned by session_id into 2" in out
        assert "was 4 partitions" in out
        async with pool.acquire() as conn:
            assert await table_rows(conn, "fills") == before["fills"]
        code, out, _ = await upgrade_cli(env)  # a plain upgrade keeps the layout
        assert code == 0 and "partition" not in out
        async with pool.acquire() as conn:
            assert await partitioning.layout(conn, "orders") == 2
    finally:
        await pool.close()
