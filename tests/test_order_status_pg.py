"""Issue 10 defect 7, PostgreSQL side: an older `order` event never overwrites a newer status.

Redis keeps the newest event per order (storage/orders.py); PostgreSQL keeps the time of
the status (`orders.status_at`) and how far along it is (`status_rank`) and its upserts
are guarded by them, so neither a re-migration from older Redis state (a replay of a
range rebuilt it, say) nor a sync after the end moves a status backwards.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import msgspec
import pytest

from base.clock import ManualClock
from events import Order
from mmops.app import App
from storage.orders import status_rank
from storage.session_reader import ms_to_datetime
from tests.conftest import MakeApp
from tests.test_migrator import T0, drain_coverage, drain_migrator, fill, send
from workers.migration import MigrationStatus, migrate_session
from workers.migration.in_step import InStep
from workers.migrator import MigratorHandler

_encoder = msgspec.json.Encoder(decimal_format="string")


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(T0 + 60_000))


def event(sid: str, oid: str, status: str, ts: int) -> Order:
    return Order(
        session_id=sid,
        order_id=oid,
        symbol="BTC/USD",
        side="buy",
        order_type="limit",
        price=Decimal("60010"),
        quantity=Decimal("0.02"),
        status=status,
        ts=ts,
    )


async def send_order(app: App, sid: str, oid: str, status: str, ts: int) -> None:
    e = event(sid, oid, status, ts)
    await send(
        app,
        "order",
        session_id=sid,
        order_id=oid,
        symbol=e.symbol,
        side=e.side,
        order_type=e.order_type,
        price=e.price,
        quantity=e.quantity,
        status=status,
        ts=ts,
    )


async def rebuild_older(app: App, sid: str, oid: str, status: str, ts: int) -> None:
    """Redis holds an older state of the order than PostgreSQL (as after a replay of a range)."""
    payload = _encoder.encode(event(sid, oid, status, ts))[:-1] + b',"rank":%d}' % status_rank(
        status
    )
    await app.redis.hset(app.keys.orders(sid), oid, payload)


async def stored(pg: asyncpg.Pool, oid: str) -> tuple[str, object, int]:
    row = await pg.fetchrow("SELECT status, status_at, status_rank FROM orders WHERE id = $1", oid)
    assert row is not None
    return row["status"], row["status_at"], row["status_rank"]


async def test_a_re_migration_from_older_state_keeps_the_newer_status(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await send_order(app, "s-o", "o-1", "open", T0 + 100)
    await send_order(app, "s-o", "o-1", "filled", T0 + 500)
    await fill(app, "s-o", "f-1", "o-1", "BTC/USD", "buy", "60010", "0.02", "1.2", T0 + 400)
    await send_order(app, "s-o", "o-2", "filled", T0 + 600)
    await send(app, "session_ended", session_id="s-o", ts=T0 + 1000)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    assert await stored(pg, "o-1") == ("filled", ms_to_datetime(T0 + 500), 2)

    await rebuild_older(app, "s-o", "o-1", "open", T0 + 100)  # older time
    await rebuild_older(app, "s-o", "o-2", "partially_filled", T0 + 600)  # same time, less far
    forced = await migrate_session(app, migrator.pool, "s-o", force=True)
    assert forced.status is MigrationStatus.MIGRATED and not forced.fast

    assert await stored(pg, "o-1") == ("filled", ms_to_datetime(T0 + 500), 2)
    assert await stored(pg, "o-2") == ("filled", ms_to_datetime(T0 + 600), 2)
    assert await pg.fetchval("SELECT filled_quantity FROM orders WHERE id = 'o-1'") == Decimal(
        "0.02"
    )


async def test_after_the_end_a_newer_status_lands_and_an_older_one_never_does(
    app: App, migrator: MigratorHandler, pg: asyncpg.Pool
) -> None:
    await send_order(app, "s-p", "o-5", "open", T0 + 100)
    await send(app, "session_ended", session_id="s-p", ts=T0 + 1000)
    await drain_coverage(app)
    await drain_migrator(app, migrator)
    assert await stored(pg, "o-5") == ("open", ms_to_datetime(T0 + 100), 0)
    tick = InStep(migrator.migrator)

    await send_order(app, "s-p", "o-5", "filled", T0 + 3000)  # newer, after the end
    await send_order(app, "s-p", "o-5", "partially_filled", T0 + 2000)  # older, arrives later
    await drain_coverage(app)
    done = await tick.tick()
    assert done.errors == [] and done.synced[0].entries == 1  # Redis logged the newer only
    assert await stored(pg, "o-5") == ("filled", ms_to_datetime(T0 + 3000), 2)

    # even if Redis held an older state and a change named the order, PostgreSQL keeps it
    await rebuild_older(app, "s-p", "o-5", "open", T0 + 2500)
    await app.redis.xadd(app.keys.changes("s-p"), {"orders": "o-5"})
    done = await tick.tick()
    assert done.errors == [] and done.synced[0].entries == 1
    assert await stored(pg, "o-5") == ("filled", ms_to_datetime(T0 + 3000), 2)
