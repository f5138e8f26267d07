"""`mmops demo` end to end against the test servers: report, 0 uncovered, repeatable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from storage.servers import Servers
from tests.conftest import MMOPS

pytestmark = pytest.mark.postgres  # the demo migrates into a schema of its own


@pytest.fixture
async def demo_schema(servers: Servers, names: tuple[str, str]) -> AsyncIterator[str]:
    name = names[1] + "_demo"
    yield name
    conn = await asyncpg.connect(servers.database_url)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    await conn.close()


async def demo(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "demo",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def figure(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name) :].strip()


async def test_demo(
    tmp_path: Path, env: dict[str, str], demo_schema: str, redis: aioredis.Redis
) -> None:
    code, out, err = await demo(
        env,
        tmp_path,
        "--duration",
        "5",
        "--sessions",
        "2",
        "--pairs",
        "10",
        "--rate",
        "30",
        "--seed",
        "4",
        "--schema",
        demo_schema,
    )
    assert code == 0, out + err[-2000:]
    assert figure(out, "uncovered positions").startswith("0 (dust 0)")
    assert figure(out, "sessions migrated") == "2/2"
    assert (
        154 <= int(figure(out, "events").split()[0]) < 400
    )  # 150 buys, 2 starts, 2 ends, TP sells
    created = int(figure(out, "take-profits created"))
    assert created >= 100  # one per buy order at least
    assert "p50 " in figure(out, "coverage latency") and "max " in figure(out, "coverage latency")
    assert figure(out, "sweep").startswith("ok, 2 sessions")
    table = out[out.index("P&L per pair") :].splitlines()
    assert table[1].split() == [
        "PAIR",
        "SESSIONS",
        "ORDERS",
        "FILLS",
        "ROUND",
        "TRIPS",
        "FEES",
        "REALIZED",
        "P&L",
    ]
    assert table[2].startswith("ADA/USD") and any(line.startswith("TOTAL") for line in table)
    # sessions ended while TPs were live; TPs that filled after the end are in PostgreSQL too
    after = out[out.index("Fills after each session's end") :].splitlines()
    assert after[1].split() == ["SESSION", "IN", "REDIS", "IN", "POSTGRESQL", "CLOSED"]
    total = next(line.split() for line in after if line.startswith("TOTAL"))
    assert int(total[1]) > 0 and total[1] == total[2], after
    assert int(figure(out, "TP fills after the end").split()[0]) >= int(total[1])
    assert out.rstrip().endswith("OK")
    assert "demo " in err  # the live progress line
    assert (tmp_path / ".mmops" / "demo-workers.log").stat().st_size > 0
    # a second demo starts from a clean state
    code, again, err = await demo(
        env,
        tmp_path,
        "--duration",
        "1",
        "--sessions",
        "1",
        "--rate",
        "20",
        "--seed",
        "4",
        "--after-end",
        "0",
        "--schema",
        demo_schema,
    )
    assert code == 0, again + err[-2000:]
    assert figure(again, "sessions migrated") == "1/1"
    assert 22 <= int(figure(again, "events").split()[0]) < 40  # this run's events only
