"""`mmops status` lists the sessions ended and still open; `mmops report` marks P&L final once
closed."""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg
import pytest

from base.clock import ManualClock
from mmops.app import App
from mmops.commands import report
from tests.conftest import MakeApp
from tests.helpers import now_ms
from tests.test_migrator import T0, drain_coverage, drain_migrator, send
from tests.test_session_life import buy, exit_pnl, tp_fill
from tests.test_status import mmops
from workers.migration.in_step import InStep
from workers.migrator import MigratorHandler

D = Decimal


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(T0 + 60_000))


async def two_sessions(app: App, migrator: MigratorHandler) -> dict[str, dict[str, str]]:
    """s-open: two positions, one TP filled after the end (not synced yet); s-shut: closed
    by a TP fill after its end; s-wait: its end counted a fill that never came."""
    for sid in ("s-open", "s-shut"):
        await buy(app, sid, "f-1", "o-1")
    await buy(app, "s-open", "f-2", "o-2", T0 + 1100)
    await buy(app, "s-wait", "f-1", "o-1")
    for sid in ("s-open", "s-shut"):
        await send(app, "session_ended", session_id=sid, ts=T0 + 2000)
    await send(app, "session_ended", session_id="s-wait", ts=T0 + 2000, fills=2)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    tps = {"s-shut": await tp_fill(app, "s-shut", "t-1", "o-1", T0 + 3000)}
    await drain_coverage(app)
    await InStep(migrator.migrator).tick()  # s-shut closes
    tps["s-open"] = await tp_fill(app, "s-open", "t-1", "o-1", T0 + 4000)
    await drain_coverage(app)  # ... and s-open's TP fill is not synced yet
    return tps


async def test_status_lists_ended_sessions_still_open(
    app: App, migrator: MigratorHandler, env: dict[str, str]
) -> None:
    await two_sessions(app, migrator)
    _, out, err = await mmops(env, "status", "--json")
    listed = {s["session_id"]: s for s in json.loads(out)["ended_sessions"]["sessions"]}
    assert set(listed) == {"s-open", "s-wait"}, err  # s-shut is closed
    s_open = listed["s-open"]
    assert (s_open["state"], s_open["open_positions"], s_open["live_tps"]) == ("migrated", 2, 2)
    assert s_open["changes"] == 1  # the TP fill after the end, not in PostgreSQL yet
    waiting = listed["s-wait"]
    assert waiting["state"] == "waiting for fills" and waiting["open_positions"] == 1

    _, text, _ = await mmops(env, "status")
    lines = text.splitlines()
    head = next(n for n, line in enumerate(lines) if line.startswith("sessions ended and still"))
    assert "CHANGES NOT IN PG" in lines[head + 1] and "LIVE TPS" in lines[head + 1]
    row = next(line.split() for line in lines[head:] if line.strip().startswith("s-open"))
    assert row[-4:-1] == ["2", "1", "2"]  # live TPs, changes not in PostgreSQL, fills so far

    await InStep(migrator.migrator).tick()
    _, out, _ = await mmops(env, "status", "--json")
    s_open = next(
        s for s in json.loads(out)["ended_sessions"]["sessions"] if s["session_id"] == "s-open"
    )
    assert (s_open["open_positions"], s_open["live_tps"], s_open["changes"]) == (1, 1, 0)


async def test_status_is_unhealthy_when_a_change_stays_out_of_postgres(
    app: App, migrator: MigratorHandler, env: dict[str, str]
) -> None:
    await two_sessions(app, migrator)
    await app.redis.delete(app.keys.changes("s-open"))
    await app.redis.xadd(  # a change a minute old that no migrator applied
        app.keys.changes("s-open"), {"positions": "o-2"}, id=f"{now_ms() - 60_000}-0"
    )
    code, out, _ = await mmops(env, "status", "--json")
    problems = json.loads(out)["problems"]
    assert code == 1
    assert any(
        p.startswith("session s-open: a change") and "is the migrator running?" in p
        for p in problems
    ), problems


async def test_report_includes_fills_after_the_end_and_marks_pnl_final_once_closed(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, env: dict[str, str]
) -> None:
    tps = await two_sessions(app, migrator)
    await InStep(migrator.migrator).tick()
    async with pg.acquire() as conn:
        built = await report.build(conn)
    lines = {s.session_id: s for s in built.session_lines}
    assert (lines["s-shut"].final, lines["s-shut"].after_end) == (True, 1)
    assert lines["s-shut"].pnl == exit_pnl(tps["s-shut"]).quantize(D("1e-10"))
    assert (lines["s-open"].final, lines["s-open"].after_end, lines["s-open"].fills) == (
        False,
        1,
        3,
    )
    assert built.provisional == 1  # s-open (s-wait is not migrated: not in the report yet)

    code, text, _ = await mmops(env, "report")
    assert code == 0
    out = text.splitlines()
    assert any(line.startswith("TOTAL (provisional)") for line in out)
    assert "P&L of 1 session not closed yet is provisional" in text
    header = next(line for line in out if line.startswith("SESSION"))
    assert "AFTER END" in header and "FINAL" in header
    shut = next(line for line in out if line.startswith("s-shut")).split()
    opened = next(line for line in out if line.startswith("s-open")).split()
    assert shut[-1] == "yes" and opened[-2:] == ["no", "(open)"]
