"""A session's life after its end, with real `mmops migrator` processes (issue 10 defect 1).

The coverage worker runs in the test (drained); the migrator is a real process on the
same Redis and PostgreSQL schema. No assertion is about time: each waits for an outcome.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mmops.app import App
from storage import changes
from tests.conftest import wait_for
from tests.helpers import now_ms
from tests.processes import Launch, launcher
from tests.test_migrator import alerts, drain_coverage, fill, send, table, tp_of
from workers.migration import migrate_session

D = Decimal
MONEY = D("1e-10")


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Launch]:
    with launcher("migrator", env, tmp_path, MIGRATION_SYNC_SECONDS="1") as launch:
        yield launch


async def buy(app: App, sid: str, fid: str, oid: str, ts: int) -> None:
    await fill(app, sid, fid, oid, "BTC/USD", "buy", "60000", "0.01", "0.6", ts)


async def sell_tp(app: App, sid: str, fid: str, position: str, ts: int) -> D:
    """The trader's fill of the position's live TP; the P&L it realizes."""
    [tp] = [t for t in await tp_of(app, sid, position) if t["status"] == "live"]
    await fill(
        app, sid, fid, tp["order_id"], "BTC/USD", "sell", tp["price"], tp["quantity"], "0.25", ts
    )
    unit = (D("60000") * D("0.01") + D("0.6")) / D("0.01")
    return D(tp["price"]) * D(tp["quantity"]) - D("0.25") - D(tp["quantity"]) * unit


async def session(pg: asyncpg.Pool, sid: str) -> dict[str, Any]:
    rows = await table(pg, "SELECT * FROM sessions WHERE id = $1", sid)
    return rows[0] if rows else {}


async def test_without_fills_a_tp_fill_after_the_end_reaches_postgres(
    app: App, pg: asyncpg.Pool, start: Launch
) -> None:
    t = now_ms()
    await buy(app, "s-1", "f-1", "o-1", t)
    await send(app, "session_ended", session_id="s-1", ts=t + 1)
    await drain_coverage(app)
    migrator = start("mig")
    await wait_for(lambda: app.redis.get(app.keys.migration_completed("s-1")), timeout=30)
    assert (await session(pg, "s-1"))["closed_at"] is None  # its TP is live

    pnl = await sell_tp(app, "s-1", "t-1", "o-1", t + 2)  # after the end
    await drain_coverage(app)

    async def closed() -> dict[str, Any]:
        row = await session(pg, "s-1")
        return row if row.get("closed_at") is not None else {}

    row = await wait_for(closed, timeout=30)
    assert (row["total_fills"], row["open_positions"]) == (2, 0)
    assert row["total_pnl"] == pnl.quantize(MONEY)
    assert await pg.fetchval("SELECT realized_pnl FROM fills WHERE id = 't-1'") == row["total_pnl"]
    assert await migrator.stop() == 0, migrator.output()
    assert await changes.is_synced(app.redis, app.keys, "s-1")


async def test_killed_between_commit_and_trim_applies_each_change_exactly_once(
    app: App, pg: asyncpg.Pool, start: Launch
) -> None:
    t = now_ms()
    await buy(app, "s-k", "f-1", "o-1", t)
    await buy(app, "s-k", "f-2", "o-2", t + 1)
    await send(app, "session_ended", session_id="s-k", ts=t + 2)
    await drain_coverage(app)
    assert (await migrate_session(app, pg, "s-k")).status == "migrated"
    pnl1 = await sell_tp(app, "s-k", "t-1", "o-1", t + 3)  # after the end
    await drain_coverage(app)
    [(last, _)] = await app.redis.xrevrange(app.keys.changes("s-k"), count=1)

    # the sync commits, then the process is killed before it trims the changes stream
    first = start("mig", MMOPS_CRASH_POINT="sync_committed@1")
    assert await first.exited() == -signal.SIGKILL, first.output()
    row = await session(pg, "s-k")
    assert row["sync_cursor"] == last.decode()  # moved in the transaction that applied it
    assert (row["total_fills"], row["total_pnl"]) == (3, pnl1.quantize(MONEY))
    assert await app.redis.xlen(app.keys.changes("s-k")) > 0  # not trimmed
    assert not await changes.is_synced(app.redis, app.keys, "s-k")
    before = await table(pg, "SELECT * FROM fills WHERE session_id = 's-k' ORDER BY id")

    # a new process: the entries at or before the cursor are never applied again, only trimmed
    again = start("mig", "--drain")
    assert await again.exited() == 0, again.output()
    assert await table(pg, "SELECT * FROM fills WHERE session_id = 's-k' ORDER BY id") == before
    after = await session(pg, "s-k")
    assert {k: v for k, v in after.items() if k != "synced_at"} == {
        k: v for k, v in row.items() if k != "synced_at"
    }
    assert await changes.is_synced(app.redis, app.keys, "s-k")

    # and the next change lands once: the session closes
    pnl2 = await sell_tp(app, "s-k", "t-2", "o-2", t + 4)
    await drain_coverage(app)
    last_run = start("mig", "--drain")
    assert await last_run.exited() == 0, last_run.output()
    row = await session(pg, "s-k")
    assert (row["total_fills"], row["total_pnl"]) == (4, (pnl1 + pnl2).quantize(MONEY))
    assert row["closed_at"] is not None
    assert await pg.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-k'") == 4
    assert await changes.is_synced(app.redis, app.keys, "s-k")


async def test_grace_period_acks_the_end_then_migrates_and_alerts_once(
    app: App, pg: asyncpg.Pool, start: Launch
) -> None:
    migrator = start("mig", MIGRATION_GRACE_MINUTES="0.1")  # 6 s after the end
    await wait_for(lambda: app.redis.zcard(app.keys.heartbeats("migrator")), timeout=30)
    t = now_ms()
    await buy(app, "s-g", "f-1", "o-1", t)
    await send(app, "session_ended", session_id="s-g", ts=t + 1, fills=2)  # one never comes
    await drain_coverage(app)

    async def waiting() -> bool:
        return bool(await app.redis.hexists(app.keys.migration_waiting, "s-g"))

    async def nothing_pending() -> bool:  # the session_ended entry is acked, not held
        info = await app.redis.xpending(app.keys.stream, "migrator")
        return int(info["pending"]) == 0

    await wait_for(waiting, timeout=30)
    await wait_for(nothing_pending, timeout=30)
    completed = await app.redis.get(app.keys.migration_completed("s-g"))
    if completed is None:  # (still in the grace period: nothing written, nothing alerted)
        assert await alerts(app, "migration_incomplete") == []
    await wait_for(lambda: app.redis.get(app.keys.migration_completed("s-g")), timeout=30)
    assert await migrator.stop() == 0, migrator.output()
    [alert] = await alerts(app, "migration_incomplete")
    assert (alert["session_id"], alert["recorded"], alert["expected"]) == ("s-g", "1", "2")
    assert not await waiting()
    row = await session(pg, "s-g")
    assert (row["fills_expected"], row["total_fills"]) == (2, 1)
