"""`mmops migrate` as a subprocess: --dry-run, --session, skip of completed, --force, --stats."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from base.clock import ManualClock
from mmops.app import App
from tests.conftest import MMOPS, MakeApp
from workers.coverage import CoverageHandler
from workers.runtime import Runtime

NOW = time.time_ns() // 1_000_000
T = NOW - 3_600_000  # the sessions ended an hour ago: inside the 48 h lookback


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(T + 60_000))


async def send(app: App, kind: str, **fields: object) -> None:
    await app.redis.xadd(app.keys.stream, {"type": kind, **{k: str(v) for k, v in fields.items()}})


async def two_sessions(app: App) -> None:
    """s-a: two buys and a TP fill; s-b: one buy. Both ended; coverage has processed them."""
    for sid, n in (("s-a", 2), ("s-b", 1)):
        for i in range(n):
            await send(
                app,
                "fill",
                session_id=sid,
                fill_id=f"{sid}-f{i}",
                order_id=f"{sid}-o{i}",
                symbol="BTC/USD",
                side="buy",
                price="60000",
                quantity="0.01",
                fee="0.6",
                ts=T + i,
            )
    handler = CoverageHandler(app)
    await Runtime(app.redis, app.keys, app.settings, handler, "cov").run(until_drained=True)
    tp = (await app.redis.smembers(app.keys.tp_orders("s-a"))).pop().decode()
    record = await app.redis.hgetall(app.keys.tp_order("s-a", tp))
    await send(
        app,
        "fill",
        session_id="s-a",
        fill_id="s-a-t0",
        order_id=tp,
        symbol="BTC/USD",
        side="sell",
        price=record[b"price"].decode(),
        quantity=record[b"quantity"].decode(),
        fee="0.3",
        ts=T + 10,
    )
    await send(app, "session_ended", session_id="s-a", ts=T + 20, fills=3)
    await send(app, "session_ended", session_id="s-b", ts=T + 30)
    await Runtime(app.redis, app.keys, app.settings, handler, "cov").run(until_drained=True)


async def mmops(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "migrate",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def row(out: str, sid: str) -> list[str]:
    """The table row of a session, split on runs of two or more spaces."""
    [line] = [line for line in out.splitlines() if line.startswith(sid + " ")]
    return [cell for cell in line.split("  ") if cell.strip()]


async def migrated(pg: asyncpg.Pool) -> dict[str, int]:
    rows = await pg.fetch("SELECT id, total_fills FROM sessions WHERE migrated_at IS NOT NULL")
    return {r["id"]: r["total_fills"] for r in rows}


async def test_migrate_cli(app: App, env: dict[str, str], pg: asyncpg.Pool) -> None:
    await two_sessions(app)

    code, out, err = await mmops(env, "--dry-run")
    assert code == 0, err
    assert out.startswith("dry run: nothing written")
    assert [c.strip() for c in row(out, "s-a")[:5]] == [
        "s-a",
        "dry_run",
        "3",
        "4",
        "1",
    ]  # fills orders pairs
    assert [c.strip() for c in row(out, "s-b")[:5]] == ["s-b", "dry_run", "1", "2", "1"]
    assert await migrated(pg) == {}
    assert await app.redis.get(app.keys.migration_completed("s-a")) is None

    code, out, err = await mmops(env, "--session", "s-a")
    assert code == 0, err
    assert [c.strip() for c in row(out, "s-a")[:4]] == ["s-a", "migrated", "3", "4"]
    assert "s-b" not in out
    assert await migrated(pg) == {"s-a": 3}

    code, out, err = await mmops(env, "--batch-size", "1")  # the lookback finds both
    assert code == 0, err
    assert [c.strip() for c in row(out, "s-a")[:2]] == ["s-a", "skipped"]
    assert [c.strip() for c in row(out, "s-b")[:2]] == ["s-b", "migrated"]
    assert await migrated(pg) == {"s-a": 3, "s-b": 1}
    assert "migrating" in err  # the progress line

    code, out, err = await mmops(env, "--session", "s-a", "--force")
    assert code == 0, err
    cells = [c.strip() for c in row(out, "s-a")]
    assert cells[:4] == ["s-a", "migrated", "3", "4"] and cells[7] == "0"  # NEW FILLS
    assert await pg.fetchval("SELECT count(*) FROM fills") == 4

    code, out, err = await mmops(env, "--stats")
    assert code == 0, err
    header = out.splitlines()[0]
    assert header.split() == [
        "SESSION",
        "COMPLETED",
        "REDIS",
        "FILLS",
        "PG",
        "FILLS",
        "DUPLICATES",
        "REDIS",
        "TP",
        "PG",
        "TP",
        "PG",
        "ORDERS",
        "POSITIONS",
        "CHECK",
    ]
    assert [c.strip() for c in row(out, "s-a")] == [
        "s-a",
        "yes",
        "3",
        "3",
        "0",
        "2",
        "2",
        "4",
        "2",
        "ok",
    ]
    assert [c.strip() for c in row(out, "s-b")] == [
        "s-b",
        "yes",
        "1",
        "1",
        "0",
        "1",
        "1",
        "2",
        "1",
        "ok",
    ]
    widths = {len(line) for line in out.splitlines()[:2]}
    assert len(widths) == 1  # header and rule aligned

    # mmops report reads the migrated sessions back
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "report",
        "--session",
        "s-a",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err_b.decode()
    report = out_b.decode()
    assert report.startswith("mmops report: session s-a (1 migrated session)")
    btc = next(line for line in report.splitlines() if line.startswith("BTC/USD"))
    assert btc.split()[1:3] == ["1", "100.0%"]  # one round trip, won
    assert "Sharpe (daily P&L, mean / stdev x sqrt(365)): n/a" in report
