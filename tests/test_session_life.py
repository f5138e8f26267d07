"""A session's whole life in PostgreSQL (issue 10 defect 1, contract §3 Migration), in process.

Sessions are built by the real coverage worker on real Redis; the migrator handler and its
periodic work (`InStep.tick`) write real PostgreSQL. The clock is a ManualClock: the grace
period is crossed by moving it, never by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from base.clock import ManualClock
from base.settings import Settings
from bench.chaos.pg_proxy import PgProxy
from mmops.app import App
from storage import changes, schema
from storage.postgres import create_pool
from tests.conftest import MakeApp, with_search_path
from tests.test_migrator import (
    T0,
    alerts,
    drain_coverage,
    drain_migrator,
    fill,
    send,
    table,
    tp_of,
)
from workers.migration import MigrationStatus, migrate_session
from workers.migration.in_step import InStep
from workers.migrator import MigratorHandler
from workers.sweeper import Sweeper

D = Decimal
HOUR = 3_600_000
BTC_UNIT = (D("60000") * D("0.01") + D("0.6")) / D("0.01")  # 60060: buy fee in the unit cost


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0 + 60_000)


@pytest.fixture
async def app(make_app: MakeApp, clock: ManualClock) -> App:
    return await make_app(clock=clock)


async def buy(app: App, sid: str, fid: str = "f-1", oid: str = "o-1", ts: int = T0 + 1000) -> None:
    await fill(app, sid, fid, oid, "BTC/USD", "buy", "60000", "0.01", "0.6", ts)


async def tp_fill(app: App, sid: str, fid: str, position: str, ts: int) -> dict[str, str]:
    """The trader's sell fill of the position's live TP, in full; returns the TP record."""
    [tp] = [t for t in await tp_of(app, sid, position) if t["status"] == "live"]
    await fill(
        app, sid, fid, tp["order_id"], "BTC/USD", "sell", tp["price"], tp["quantity"], "0.25", ts
    )
    return tp


def exit_pnl(tp: dict[str, str], unit: Decimal = BTC_UNIT, fee: str = "0.25") -> Decimal:
    return D(tp["price"]) * D(tp["quantity"]) - D(fee) - D(tp["quantity"]) * unit


async def session_row(pg: asyncpg.Pool, sid: str) -> dict[str, Any]:
    [row] = await table(pg, "SELECT * FROM sessions WHERE id = $1", sid)
    return row


async def pending_migrator(app: App) -> int:
    return int((await app.redis.xpending(app.keys.stream, "migrator"))["pending"])


# --- defect 1, with `fills` on the end ---------------------------------------------------
async def test_a_tp_fill_after_an_end_with_fills_completes_without_force_or_alert(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await buy(app, "s-a")
    await drain_coverage(app)
    await send(app, "session_ended", session_id="s-a", ts=T0 + 2000, fills=1)  # 1 fill before it
    tp = await tp_fill(app, "s-a", "t-1", "o-1", T0 + 3000)  # the TP fills after the end
    await drain_coverage(app)

    stats = await drain_migrator(app, migrator)

    assert stats.failed == 0 and stats.deferred == 0 and await pending_migrator(app) == 0
    assert await app.redis.get(app.keys.migration_completed("s-a")) is not None
    assert await alerts(app, "migration_incomplete") == []
    s = await session_row(pg, "s-a")
    assert (s["fills_expected"], s["total_fills"], s["open_positions"]) == (1, 2, 0)
    assert s["total_pnl"] == exit_pnl(tp).quantize(D("1e-10"))
    assert s["closed_at"] is not None  # the last position closed, no TP live
    assert await pg.fetchval("SELECT realized_pnl FROM fills WHERE id = 't-1'") == s["total_pnl"]
    assert await changes.is_synced(app.redis, app.keys, "s-a")


# --- defect 1, without `fills`: later TP fills and reprices reach PostgreSQL ------------------
async def test_without_fills_later_tp_fills_and_reprices_reach_postgres(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, clock: ManualClock
) -> None:
    await buy(app, "s-b", "f-1", "o-1")
    await buy(app, "s-b", "f-2", "o-2", T0 + 1500)
    await send(app, "session_ended", session_id="s-b", ts=T0 + 2000)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    s = await session_row(pg, "s-b")
    assert (s["total_fills"], s["total_pnl"], s["open_positions"]) == (2, 0, 2)
    assert s["closed_at"] is None and s["fills_expected"] is None
    tick = InStep(migrator.migrator)

    # after the end: o-1's TP fills; o-2's TP is repriced by the sweeper (1 h later, tier 1)
    tp1 = await tp_fill(app, "s-b", "t-1", "o-1", T0 + 3000)
    await drain_coverage(app)
    clock.advance(hours=1)
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
    assert sum(s.repriced for s in report.sessions) == 1
    done = await tick.tick()
    assert done.errors == [] and [r.session_id for r in done.synced] == ["s-b"]

    s = await session_row(pg, "s-b")
    assert (s["total_fills"], s["open_positions"], s["total_orders"]) == (3, 1, 5)
    assert s["total_pnl"] == exit_pnl(tp1).quantize(D("1e-10"))
    assert s["closed_at"] is None
    o2 = await table(
        pg, "SELECT status, tier FROM orders WHERE position_id = 'o-2' ORDER BY created_at, tier"
    )
    assert [(r["status"], r["tier"]) for r in o2] == [("cancelled", 0), ("live", 1)]
    assert await pg.fetchval("SELECT status FROM orders WHERE id = $1", tp1["order_id"]) == "filled"

    # the replacement fills: the session closes, its P&L is final
    tp2 = await tp_fill(app, "s-b", "t-2", "o-2", T0 + HOUR + 5000)
    await drain_coverage(app)
    await tick.tick()
    s = await session_row(pg, "s-b")
    assert s["total_pnl"] == (exit_pnl(tp1) + exit_pnl(tp2)).quantize(D("1e-10"))
    assert (s["total_fills"], s["open_positions"], s["uncovered_positions"]) == (4, 0, 0)
    assert s["closed_at"] is not None
    [pair] = await table(pg, "SELECT * FROM session_pairs WHERE session_id = 's-b'")
    assert (pair["round_trips"], pair["wins"], pair["total_fills"]) == (2, 2, 4)
    assert await changes.is_synced(app.redis, app.keys, "s-b")
    assert await alerts(app, "migration_incomplete") == []


async def test_after_the_sync_the_tables_equal_a_whole_migration_of_the_same_state(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, settings: Settings
) -> None:
    """The sync rewrites only what changes touched; the figures are those of a migration of
    the whole session as it is now, into a fresh schema."""
    await send(app, "session_started", session_id="s-c", pairs="BTC/USD,ETH/USD", ts=T0)
    await buy(app, "s-c", "f-1", "o-1")
    await fill(app, "s-c", "f-2", "o-2", "ETH/USD", "buy", "3000", "0.5", "0.375", T0 + 1100)
    await fill(app, "s-c", "f-3", "o-3", "ETH/USD", "buy", "3010", "0.5", "0.37625", T0 + 1200)
    await send(app, "session_ended", session_id="s-c", ts=T0 + 2000)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    # after the end: a TP fill, a FIFO sell (closes o-2, trims its TP), a trader order event,
    # and a trader buy on a new pair
    await tp_fill(app, "s-c", "t-1", "o-1", T0 + 3000)
    await fill(app, "s-c", "x-1", "o-9", "ETH/USD", "sell", "3050", "0.5", "0.38125", T0 + 4000)
    await send(
        app,
        "order",
        session_id="s-c",
        order_id="o-9",
        symbol="ETH/USD",
        side="sell",
        order_type="limit",
        price="3050",
        quantity="0.5",
        status="filled",
        ts=T0 + 4001,
    )
    await fill(app, "s-c", "f-4", "o-4", "SOL/USD", "buy", "150", "2", "0.75", T0 + 5000)
    await drain_coverage(app)
    done = await InStep(migrator.migrator).tick()
    assert done.errors == [] and done.synced[0].entries >= 4
    synced = await rows_of(pg, "s-c")

    fresh = f"t_{uuid.uuid4().hex[:10]}"
    pool = await create_pool(with_search_path(settings.database_url.split("?")[0], fresh))
    try:
        await pool.execute(f'CREATE SCHEMA "{fresh}"')
        async with pool.acquire() as conn:
            await schema.upgrade(conn)
        whole = await migrate_session(app, pool, "s-c", force=True)
        assert whole.status is MigrationStatus.MIGRATED and whole.fast
        assert await rows_of(pool, "s-c") == synced
    finally:
        await pool.execute(f'DROP SCHEMA "{fresh}" CASCADE')
        await pool.close()
    assert synced["sessions"][0]["pairs"] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert {r["id"] for r in synced["orders"]} >= {"o-9", "o-4"}


async def rows_of(pg: asyncpg.Pool, sid: str) -> dict[str, list[dict[str, Any]]]:
    """The session's rows without the times of writing (migrated_at, synced_at, closed_at)."""
    out = {
        "sessions": await table(pg, "SELECT * FROM sessions WHERE id = $1", sid),
        "orders": await table(pg, "SELECT * FROM orders WHERE session_id = $1 ORDER BY id", sid),
        "fills": await table(pg, "SELECT * FROM fills WHERE session_id = $1 ORDER BY id", sid),
        "pairs": await table(
            pg, "SELECT * FROM session_pairs WHERE session_id = $1 ORDER BY symbol", sid
        ),
        "positions": await table(
            pg, "SELECT * FROM positions WHERE session_id = $1 ORDER BY id", sid
        ),
    }
    for row in out["sessions"]:
        for name in ("migrated_at", "synced_at", "closed_at", "sync_cursor"):
            row.pop(name)
    return out


# --- the grace period ---------------------------------------------------------------
async def test_missing_fills_wait_acked_then_arrive_within_the_grace(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await buy(app, "s-g")
    await send(app, "session_ended", session_id="s-g", ts=T0 + 2000, fills=2)  # the 2nd is late
    await drain_coverage(app)
    stats = await drain_migrator(app, migrator)

    assert stats.failed == 0 and await pending_migrator(app) == 0  # acked: retention is free
    assert await app.redis.hexists(app.keys.migration_waiting, "s-g")
    assert await pg.fetchval("SELECT migrated_at FROM sessions WHERE id = 's-g'") is None
    tick = InStep(migrator.migrator)
    [waiting] = (await tick.tick()).waiting
    assert waiting.status is MigrationStatus.WAITING_FILLS and "1 of the 2" in waiting.reason

    # the late fill: it happened before the end (its ts) and reached the stream after it
    await buy(app, "s-g", "f-2", "o-2", T0 + 1500)
    await drain_coverage(app)
    after = await tick.tick()
    assert [r.status for r in after.migrated] == [MigrationStatus.MIGRATED]
    assert after.migrated[0].reason == "" and after.waiting == []
    assert not await app.redis.hexists(app.keys.migration_waiting, "s-g")
    s = await session_row(pg, "s-g")
    assert (s["fills_expected"], s["total_fills"]) == (2, 2)
    assert await alerts(app, "migration_incomplete") == []


async def test_grace_over_migrates_what_there_is_and_alerts_once(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, clock: ManualClock
) -> None:
    await buy(app, "s-h")
    await send(app, "session_ended", session_id="s-h", ts=T0 + 2000, fills=3)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    tick = InStep(migrator.migrator)
    await tick.tick()
    assert await alerts(app, "migration_incomplete") == []
    clock.advance(minutes=10)  # the end was at T0 + 2 s, the clock at T0 + 60 s: now past grace
    done = await tick.tick()
    assert [r.status for r in done.migrated] == [MigrationStatus.MIGRATED]
    assert "1 of the 3 fills before the end" in done.migrated[0].reason
    [alert] = await alerts(app, "migration_incomplete")
    assert alert["session_id"] == "s-h" and (alert["recorded"], alert["expected"]) == ("1", "3")
    assert not await app.redis.hexists(app.keys.migration_waiting, "s-h")
    s = await session_row(pg, "s-h")
    assert (s["fills_expected"], s["total_fills"]) == (3, 1)
    await tick.tick()
    clock.advance(minutes=30)
    await tick.tick()
    assert len(await alerts(app, "migration_incomplete")) == 1  # once


async def test_a_settings_grace_of_a_fraction_of_a_minute(
    app: App, pg: asyncpg.Pool, clock: ManualClock
) -> None:
    quick = dataclasses.replace(
        app, settings=dataclasses.replace(app.settings, migration_grace_minutes=D("0.5"))
    )
    handler = await MigratorHandler.create(quick)
    try:
        await buy(app, "s-q")
        await send(app, "session_ended", session_id="s-q", ts=clock.ms, fills=2)
        await drain_coverage(app)
        await drain_migrator(quick, handler)
        tick = InStep(handler.migrator)
        clock.advance(seconds=29)
        assert [r.status for r in (await tick.tick()).waiting] == [MigrationStatus.WAITING_FILLS]
        clock.advance(seconds=1)
        assert [r.status for r in (await tick.tick()).migrated] == [MigrationStatus.MIGRATED]
        assert len(await alerts(app, "migration_incomplete")) == 1
    finally:
        await handler.close()


async def test_two_migrations_past_the_grace_alert_once(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool, clock: ManualClock
) -> None:
    await buy(app, "s-2")
    await send(app, "session_ended", session_id="s-2", ts=T0 + 2000, fills=2)
    await drain_coverage(app)
    clock.advance(minutes=10)
    results = await asyncio.gather(
        *(migrate_session(app, pg, "s-2", wait_for_coverage=False) for _ in range(3))
    )
    assert {r.status for r in results} <= {MigrationStatus.MIGRATED, MigrationStatus.ALREADY}
    assert len(await alerts(app, "migration_incomplete")) == 1


# --- sessions migrated before the sync existed; what is_synced says ---------------------
async def test_a_session_migrated_before_the_sync_is_re_migrated_whole_on_its_first_change(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await buy(app, "s-old")
    await send(app, "session_ended", session_id="s-old", ts=T0 + 2000)
    await drain_coverage(app)
    assert not await changes.is_synced(app.redis, app.keys, "s-old")  # not migrated yet
    await drain_migrator(app, migrator)
    # as an older mmops left it: no cursor, no position rows
    await pg.execute("UPDATE sessions SET sync_cursor = NULL WHERE id = 's-old'")
    await pg.execute("DELETE FROM positions WHERE session_id = 's-old'")
    tp = await tp_fill(app, "s-old", "t-1", "o-1", T0 + 3000)
    await drain_coverage(app)
    assert not await changes.is_synced(app.redis, app.keys, "s-old")  # a change not applied

    [synced] = (await InStep(migrator.migrator).tick()).synced
    assert synced.note == "re-migrated whole: migrated"
    s = await session_row(pg, "s-old")
    assert s["sync_cursor"] is not None and s["closed_at"] is not None
    assert (s["total_fills"], s["total_pnl"]) == (2, exit_pnl(tp).quantize(D("1e-10")))
    assert await pg.fetchval("SELECT count(*) FROM positions WHERE session_id = 's-old'") == 1
    assert await changes.is_synced(app.redis, app.keys, "s-old")


async def test_postgres_cut_before_the_sync_commits_applies_nothing_then_lands_once(
    app: App, pg: asyncpg.Pool, settings: Settings
) -> None:
    await buy(app, "s-cut")
    await send(app, "session_ended", session_id="s-cut", ts=T0 + 2000)
    await drain_coverage(app)
    assert (await migrate_session(app, pg, "s-cut")).status is MigrationStatus.MIGRATED
    tp = await tp_fill(app, "s-cut", "t-1", "o-1", T0 + 3000)
    await drain_coverage(app)
    before = await session_row(pg, "s-cut")

    proxy = await PgProxy(settings.database_url).start()
    through = dataclasses.replace(
        app, settings=dataclasses.replace(settings, database_url=proxy.url)
    )
    handler = await MigratorHandler.create(through)
    try:
        proxy.cut_when = lambda data: b"sync_cursor = $5" in data  # the step's last statement
        cut = await InStep(handler.migrator).tick()
        assert proxy.was_cut.is_set() and len(cut.errors) == 1
        assert await session_row(pg, "s-cut") == before  # nothing of it committed
        assert not await changes.is_synced(app.redis, app.keys, "s-cut")
        proxy.cut_when = None
        await proxy.restore()
        done = InStep(handler.migrator)
        for _ in range(3):  # the pool's connections were cut: the first tries may fail
            if not (await done.tick()).errors:
                break
    finally:
        await handler.close()
        await proxy.close()
    s = await session_row(pg, "s-cut")
    assert (s["total_fills"], s["total_pnl"]) == (2, exit_pnl(tp).quantize(D("1e-10")))
    assert s["closed_at"] is not None
    assert await pg.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-cut'") == 2
    assert await changes.is_synced(app.redis, app.keys, "s-cut")
