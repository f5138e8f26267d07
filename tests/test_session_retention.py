"""Bounded Redis (issue 10 #6, contract §3 Retention): a session's state is removed once it
is closed, in PostgreSQL and SESSION_RETENTION_DAYS old; the alert stream is capped."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from base.clock import ManualClock
from mmops.app import App
from storage.alerts import write_alert
from storage.changes import is_synced
from tests.conftest import MakeApp
from tests.helpers import drain, drain_coverage, fill, now_ms
from trading.paper import PaperExchange
from workers.migration import MigrationStatus, migrate_session
from workers.sweeper import Sweeper

D = Decimal
RETENTION_DAYS = D("0.001")  # 86.4 s
RETENTION_MS = 86_400


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms())


@pytest.fixture
async def app(make_app: MakeApp, pg: asyncpg.Pool, clock: ManualClock) -> App:
    return await make_app(clock=clock, session_retention_days=RETENTION_DAYS)


def paper(app: App) -> PaperExchange:
    assert isinstance(app.exchange, PaperExchange)
    return app.exchange


async def event(app: App, fields: dict[str, str]) -> None:
    await app.redis.xadd(app.keys.stream, fields)  # type: ignore[arg-type]


async def ended(app: App, sid: str) -> None:
    await event(app, {"type": "session_ended", "session_id": sid, "ts": str(app.clock.now_ms())})


async def tp_fill(app: App, sid: str, fill_id: str) -> None:
    """The price reached the session's TP: filled on the exchange, and the trader's sell fill."""
    [order] = [o for o in await paper(app).open_orders() if o.client_id]
    done = await paper(app).fill_order(order.id)
    await event(
        app,
        fill(
            sid,
            fill_id,
            order.id,
            side="sell",
            price=str(done.price),
            quantity=str(done.filled),
            fee="0.1",
            ts=app.clock.now_ms(),
        ),
    )


async def keys_of(app: App, sid: str) -> list[str]:
    found = [k.decode() async for k in app.redis.scan_iter(match=f"{app.keys.prefix}*{{{sid}}}*")]
    return sorted(found)


async def indexed(app: App, sid: str) -> list[str]:
    keys = app.keys
    out = []
    for name in (keys.sessions, keys.sessions_ended, keys.sweeper_open_sessions):
        if await app.redis.zscore(name, sid) is not None:
            out.append(name)
    return out


async def paper_records(app: App, sid: str) -> tuple[int, int]:
    """(fill records, orders) the paper exchange keeps of the session."""
    seen = [m async for m in app.redis.sscan_iter(app.keys.paper("seen_fills"))]
    fills = sum(1 for m in seen if m.decode().startswith(f"{sid}/"))
    tp_ids = {m.decode() for m in await app.redis.smembers(app.keys.tp_orders(sid))}
    orders = sum(1 for o in await paper(app).orders() if o.id in tp_ids)
    return fills, orders


async def sweep(app: App) -> object:
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
    assert report.ok, report.errors
    assert report.retention is not None
    return report.retention


async def test_a_closed_migrated_session_is_removed_after_the_retention_and_not_before(
    app: App, clock: ManualClock, pg: asyncpg.Pool
) -> None:
    await event(app, fill("s-1", "f-1", "o-1", ts=clock.ms))
    await drain_coverage(app)
    await tp_fill(app, "s-1", "f-2")  # closes the position
    await ended(app, "s-1")
    await drain_coverage(app)
    await drain(app, "migrator")
    assert await app.redis.exists(app.keys.migration_completed("s-1"))
    fills, orders = await paper_records(app, "s-1")
    assert (fills, orders) == (2, 1)
    before = await keys_of(app, "s-1")
    assert len(before) >= 10

    clock.advance(seconds=RETENTION_MS / 1000 - 5)  # not yet
    kept = await sweep(app)
    assert kept.removed == [] and set(before) <= set(await keys_of(app, "s-1"))  # type: ignore[attr-defined]

    clock.advance(seconds=10)
    gone = await sweep(app)
    assert gone.removed == ["s-1"]  # type: ignore[attr-defined]
    assert await keys_of(app, "s-1") == []
    assert await indexed(app, "s-1") == []
    assert await paper_records(app, "s-1") == (0, 0)
    seen = [m.decode() async for m in app.redis.sscan_iter(app.keys.paper("seen_fills"))]
    assert not any(m.startswith("s-1/") for m in seen)
    async with pg.acquire() as conn:  # PostgreSQL keeps the history
        assert await conn.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-1'") == 2


async def test_open_positions_and_changes_not_in_postgres_keep_a_session(
    app: App, clock: ManualClock
) -> None:
    await event(app, fill("s-open", "f-1", "o-1", ts=clock.ms))  # its TP never fills
    await ended(app, "s-open")
    await event(app, fill("s-live", "f-1", "o-1", ts=clock.ms))  # open, never ended
    await drain_coverage(app)
    await drain(app, "migrator")
    assert await app.redis.exists(app.keys.migration_completed("s-open"))
    orders = {o.id for o in await paper(app).open_orders()}
    clock.advance(minutes=5)  # past the retention, not into the next tier
    retention = await sweep(app)
    assert (retention.open, retention.removed) == (2, [])  # type: ignore[attr-defined]
    assert await app.redis.exists(app.keys.positions("s-open"))
    assert {o.id for o in await paper(app).open_orders()} == orders


async def test_a_closed_session_never_migrated_is_kept(app: App, clock: ManualClock) -> None:
    await event(app, fill("s-1", "f-1", "o-1", ts=clock.ms))
    await drain_coverage(app)
    await tp_fill(app, "s-1", "f-2")  # closed, but no session_ended: not in PostgreSQL
    await drain_coverage(app)
    clock.advance(hours=1)
    retention = await sweep(app)
    assert (retention.unsynced, retention.removed) == (1, [])  # type: ignore[attr-defined]
    assert await app.redis.exists(app.keys.fills("s-1"))


async def test_a_tp_fill_after_the_migration_reaches_postgres_before_the_session_goes(
    app: App, clock: ManualClock, pg: asyncpg.Pool
) -> None:
    await event(app, fill("s-1", "f-1", "o-1", ts=clock.ms))
    await ended(app, "s-1")  # ends with its TP live
    await drain_coverage(app)
    await drain(app, "migrator")
    clock.advance(seconds=1)
    await tp_fill(app, "s-1", "f-2")  # after the end and after the migration
    await drain_coverage(app)
    await drain(app, "migrator")
    clock.advance(hours=1)
    retention = await sweep(app)
    assert retention.removed == ["s-1"] and retention.resynced == 1  # type: ignore[attr-defined]
    async with pg.acquire() as conn:
        fills = await conn.fetch("SELECT side FROM fills WHERE session_id = 's-1' ORDER BY side")
    assert [r["side"] for r in fills] == ["buy", "sell"]
    assert await keys_of(app, "s-1") == []


async def test_alerts_are_capped(app: App) -> None:
    for n in range(1000):
        await write_alert(app.redis, app.keys, n, "test", f"alert {n}", maxlen=50)
    # XADD MAXLEN ~ trims whole stream nodes (100 entries each by default): bounded, near 50
    assert await app.redis.xlen(app.keys.alerts) < 200
    for n in range(300):
        await app.alert("test", f"through the app {n}")  # ALERTS_MAXLEN (10,000) applies
    assert await app.redis.xlen(app.keys.alerts) < 600


async def test_a_session_with_fills_after_its_end_is_migrated_whole_then_removed(
    app: App, clock: ManualClock, pg: asyncpg.Pool
) -> None:
    """Its end said 1 fill; the TP's fill after the end does not count against it, so the
    session is migrated at its end (issue 10 #1: it was held back forever), and once closed
    and past its retention it is removed."""
    await event(app, fill("s-1", "f-1", "o-1", ts=clock.ms))
    await event(
        app,
        {"type": "session_ended", "session_id": "s-1", "fills": "1", "ts": str(clock.ms)},
    )
    await drain_coverage(app)
    await tp_fill(app, "s-1", "f-2")
    await drain_coverage(app)
    migrated = await migrate_session(app, pg, "s-1")  # at its end (the fill after it counts not)
    assert migrated.status == MigrationStatus.MIGRATED
    # the TP's fill was recorded before the migration read the session: it went in with it
    assert await is_synced(app.redis, app.keys, "s-1")
    clock.advance(hours=1)
    retention = await sweep(app)
    assert retention.removed == ["s-1"] and retention.resynced == 0  # type: ignore[attr-defined]
    async with pg.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-1'") == 2
