"""The migrator when it must not write or must wait: DRY_RUN, coverage not done with the
session, its state gone from Redis, PostgreSQL cut mid-transaction. Fixture and builders:
tests/test_migrator.py."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from base.settings import Settings
from bench.chaos.pg_proxy import PgProxy
from mmops.app import App
from tests.cluster import ON_BOTH
from tests.conftest import wait_for
from tests.test_migrator import (
    T0,
    Background,
    alerts,
    app,  # noqa: F401 - the fixture
    drain_coverage,
    drain_migrator,
    fill,
    full_session,
    send,
)
from workers.migration import MigrationStatus, migrate_session
from workers.migrator import MigratorHandler
from workers.runtime import Runtime

pytestmark = ON_BOTH  # single Redis and the local Redis Cluster (tests/cluster.py)


async def test_dry_run_writes_nothing_and_acks(
    app: App,
    pg: asyncpg.Pool,
    settings: Settings,
) -> None:
    await full_session(app, "s-d")
    dry = dataclasses.replace(app, settings=dataclasses.replace(settings, dry_run=True))
    handler = await MigratorHandler.create(dry)
    assert handler.pool is None  # no connection, no schema upgrade: DRY_RUN writes nothing
    stats = await drain_migrator(dry, handler)
    await handler.close()
    assert (
        stats.failed == 0
        and (await app.redis.xpending(app.keys.stream, "migrator"))["pending"] == 0
    )
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    assert await app.redis.get(app.keys.migration_completed("s-d")) is None
    assert await app.redis.zscore(app.keys.sessions_ended, "s-d") is not None
    result = await migrate_session(dry, None, "s-d")
    assert (result.status, result.fills, result.orders, result.pairs, result.duplicates) == (
        MigrationStatus.DRY_RUN,
        7,
        9,
        2,
        1,
    )


async def test_waits_until_coverage_has_processed_the_sessions_events(
    app: App,
    migrator: MigratorHandler,
    pg: asyncpg.Pool,
) -> None:
    await fill(app, "s-w", "f-1", "o-1", "BTC/USD", "buy", "60000", "0.01", "0.6", T0 + 1)
    await send(app, "session_ended", session_id="s-w", ts=T0 + 2, fills=1)
    mig = Background(Runtime(app.redis, app.keys, app.settings, migrator, "mig"))
    await wait_for(lambda: _stat(mig.runtime.stats.deferred >= 1))  # no coverage group yet
    # coverage reads both entries and dies before acking them: delivered, still pending
    await app.redis.xgroup_create(app.keys.stream, "coverage", id="0")
    await app.redis.xreadgroup("coverage", "dead-consumer", {app.keys.stream: ">"}, count=10)
    deferred = mig.runtime.stats.deferred
    await wait_for(lambda: _stat(mig.runtime.stats.deferred > deferred))
    assert await app.redis.get(app.keys.migration_completed("s-w")) is None
    assert await pg.fetchval("SELECT count(*) FROM fills") == 0
    await asyncio.sleep(0.6)  # RECLAIM_IDLE_MS=500: the live coverage consumer takes them over
    await drain_coverage(app)
    await wait_for(lambda: app.redis.get(app.keys.migration_completed("s-w")), timeout=10)
    stats = await mig.stop()
    assert stats.processed == 2 and stats.failed == 0
    assert await pg.fetchval("SELECT total_fills FROM sessions WHERE id = 's-w'") == 1


async def test_state_missing_alerts_acks_and_does_not_complete(
    app: App,
    migrator: MigratorHandler,
    pg: asyncpg.Pool,
) -> None:
    await fill(app, "s-x", "f-1", "o-1", "BTC/USD", "buy", "60000", "0.01", "0.6", T0 + 1)
    await send(app, "session_ended", session_id="s-x", ts=T0 + 2)
    await drain_coverage(app)
    sid = "s-x"
    await app.redis.delete(app.keys.session(sid), app.keys.fills(sid), app.keys.positions(sid))
    stats = await drain_migrator(app, migrator)
    [alert] = await alerts(app, "migration_state_missing")
    assert alert["session_id"] == "s-x"
    assert stats.processed == 2 and stats.failed == 0
    assert (await app.redis.xpending(app.keys.stream, "migrator"))["pending"] == 0
    assert await app.redis.get(app.keys.migration_completed("s-x")) is None
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE migrated_at IS NOT NULL") == 0


async def test_postgres_cut_mid_transaction_writes_nothing_then_lands_once(
    app: App,
    pg: asyncpg.Pool,
    settings: Settings,
) -> None:
    await full_session(app, "s-p")
    proxy = await PgProxy(settings.database_url).start()
    through = dataclasses.replace(
        app, settings=dataclasses.replace(settings, database_url=proxy.url)
    )
    handler = await MigratorHandler.create(through)
    # cut as the transaction's last statement is sent: orders and fills are COPYed by then
    proxy.cut_when = lambda data: b"open_positions, duplicate_fills" in data
    mig = Background(Runtime(app.redis, app.keys, app.settings, handler, "mig"))
    try:
        await asyncio.wait_for(proxy.was_cut.wait(), 10)
        await wait_for(lambda: _stat(mig.runtime.stats.failed >= 1))
        assert await pg.fetchval("SELECT count(*) FROM fills") == 0  # nothing half-written
        assert await pg.fetchval("SELECT count(*) FROM orders") == 0
        assert await pg.fetchval("SELECT count(*) FROM sessions WHERE migrated_at IS NOT NULL") == 0
        assert await app.redis.get(app.keys.migration_completed("s-p")) is None
        pending = await app.redis.xpending_range(app.keys.stream, "migrator", "-", "+", 10)
        assert len(pending) == 1  # the session_ended entry
        await asyncio.sleep(0.3)
        await proxy.restore()
        await wait_for(lambda: app.redis.get(app.keys.migration_completed("s-p")), timeout=15)
        stats = await mig.stop()
    finally:
        await handler.close()
        await proxy.close()
    assert stats.dead == 0
    assert await pg.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-p'") == 7
    assert await pg.fetchval("SELECT total_orders FROM sessions WHERE id = 's-p'") == 9
    assert (await app.redis.xpending(app.keys.stream, "migrator"))["pending"] == 0


async def _stat(value: bool) -> bool:
    return value
