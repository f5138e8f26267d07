"""The sweeper's sessions: discovery (Redis, PostgreSQL), the migration safety net, the loop
and the lease. Fixtures and helpers: tests/test_sweeper.py."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from tests.cluster import ON_BOTH
from tests.conftest import MMOPS, wait_for
from tests.helpers import drain_coverage, fill
from tests.test_sweeper import (
    HOUR,
    D,
    alerts_of,
    app,  # noqa: F401 - a fixture
    clock,  # noqa: F401 - a fixture
    paper,
    seed_uncovered,
    sweeper,  # noqa: F401 - a fixture
    uncovered,
)
from trading.client_ids import client_id
from workers.discovery import discover
from workers.lease import lease_ttl_ms
from workers.sweep_pass import SweepStatus
from workers.sweeper import Sweeper

pytestmark = [
    ON_BOTH,
    pytest.mark.postgres,
]  # single Redis and the local cluster; the sweeper reads PostgreSQL


# --- discovery -----------------------------------------------------------------------
async def test_sessions_from_redis_and_postgres(
    app: App,
    pg: asyncpg.Pool,
    clock: ManualClock,
) -> None:
    await seed_uncovered(app, "s-recent", "o-1")
    await seed_uncovered(app, "s-ended", "o-1")
    await app.redis.zadd(app.keys.sessions_ended, {"s-ended": clock.ms})
    await app.redis.zadd(app.keys.sessions, {"s-ended": clock.ms - 48 * HOUR})  # activity long ago
    await seed_uncovered(app, "s-pg", "o-1", index=False)
    await seed_uncovered(app, "s-old", "o-1")
    await app.redis.zadd(app.keys.sessions, {"s-old": clock.ms - 48 * HOUR})
    async with pg.acquire() as conn:
        await conn.execute(
            "INSERT INTO sessions (id, started_at) VALUES ('s-pg', now()), "
            "('s-pg-old', now() - interval '3 days')"
        )
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
    assert sorted(s.session_id for s in report.sessions) == ["s-ended", "s-pg", "s-recent"]
    assert report.total("covered") == 3 and report.notes == []


async def test_postgres_unreachable_sweeps_the_redis_sessions(
    app: App,
    settings: Settings,
    clock: ManualClock,
) -> None:
    offline = await App.open(
        dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/none"),
        clock=clock,
    )
    await seed_uncovered(app, "s-1", "o-1")
    sweeper = await Sweeper.create(offline)
    try:
        report = await sweeper.run_once()
        again = await sweeper.run_once()
    finally:
        await sweeper.close()
        await offline.close()
    assert [s.session_id for s in report.sessions] == ["s-1"] and report.total("covered") == 1
    for r in (report, again):
        [note] = r.notes
        assert note.startswith(
            "sessions from Redis only, PostgreSQL not read: PostgreSQL at postgresql://"
        )


async def test_round_robin_sweeps_every_session_in_turn_and_the_figures_cover_all(
    app: App,
    settings: Settings,
    clock: ManualClock,
) -> None:
    """Issue 10 #4: beyond SETTLEMENT_MAX_SESSIONS sessions with work, every one is swept in
    turn (cursor in mm:sweeper:state), while the loss figure and the unknown-order check
    cover all of them on every pass."""
    capped = await App.open(
        dataclasses.replace(
            settings, settlement_max_sessions=3, portfolio_daily_loss_limit=D(10**9)
        ),
        clock=clock,
    )
    sids = [f"s-{i}" for i in range(8)]
    for i, sid in enumerate(sids):
        await seed_uncovered(app, sid, "o-1")
        await app.redis.zadd(app.keys.sessions, {sid: clock.ms - i * 1000})  # s-0 most recent
    await paper(app).observe_fill(  # the coins the stranger below sells
        fill_id="f-x",
        order_id="o-x",
        symbol="BTC/USD",
        side="buy",
        price=D("64000.5"),
        quantity=D("0.01"),
    )
    await paper(app).set_price("BTC/USD", D("60000"))  # last price 60000, every position open
    stranger = await paper(app).place_limit_sell(  # our prefix, no position knows it
        symbol="BTC/USD", amount=D("0.01"), price=D("99000"), client_id=client_id("gone", "o", 1)
    )
    each = D("0.01") * D("60000") - (D("64000.5") * D("0.01") + D("0.1"))  # open qty at last - cost
    sweeper = await Sweeper.create(capped)
    swept: list[list[str]] = []
    try:
        for _ in range(3):
            report = await sweeper.run_once()
            swept.append(
                [
                    r.session_id
                    for r in report.sessions
                    if r.status == SweepStatus.COMPLETED and r.covered
                ]
            )
            assert (
                report.risk is not None and report.risk.unrealized == 8 * each
            )  # all 8, every pass
            if not swept[1:]:  # judged on every session's figures, though 3 of 8 are swept
                assert report.unknown_orders == [stranger.id]
        deferred = [r.session_id for r in report.sessions if r.status == SweepStatus.DEFERRED]
        await seed_uncovered(app, "s-1", "o-2")  # new work behind the cursor: the next turn
        again = await sweeper.run_once()
    finally:
        await sweeper.close()
        await capped.close()
    assert swept == [["s-0", "s-1", "s-2"], ["s-3", "s-4", "s-5"], ["s-6", "s-7"]]
    assert len((await discover(app, None)).sessions) == 8  # what verify-coverage reads: all
    assert deferred == []
    assert [r.session_id for r in again.sessions if r.covered] == ["s-1"]
    for sid in sids:
        assert await uncovered(app, sid) == {}
    assert await app.redis.hget(app.keys.sweeper_state, "cursor") == b"s-1"
    assert len(await alerts_of(app, "unknown_order")) == 1


async def test_the_first_passes_report_the_deferred_sessions(
    app: App,
    settings: Settings,
    clock: ManualClock,
) -> None:
    capped = await App.open(dataclasses.replace(settings, settlement_max_sessions=2), clock=clock)
    for i in range(5):
        await seed_uncovered(app, f"s-{i}", "o-1")
    sweeper = await Sweeper.create(capped)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
        await capped.close()
    statuses = {r.session_id: r.status for r in report.sessions}
    assert statuses == {
        "s-0": SweepStatus.COMPLETED,
        "s-1": SweepStatus.COMPLETED,
        "s-2": SweepStatus.DEFERRED,
        "s-3": SweepStatus.DEFERRED,
        "s-4": SweepStatus.DEFERRED,
    }
    assert (report.discovered, report.with_work, report.swept, report.deferred) == (5, 5, 2, 3)
    assert "SETTLEMENT_MAX_SESSIONS" in report.notes[-1]
    assert report.total("uncovered_after") == 3


# --- migration safety net ------------------------------------------------------------
async def test_overdue_sessions_are_migrated_or_alerted_with_the_reason(
    app: App,
    sweeper: Sweeper,
    pg: asyncpg.Pool,
    clock: ManualClock,
) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-end", "f-1", "o-1", ts=clock.ms - 2 * HOUR))
    await app.redis.xadd(
        app.keys.stream,
        {"type": "session_ended", "session_id": "s-end", "ts": str(clock.ms - HOUR)},
    )
    await drain_coverage(app)  # the migrator never ran
    await app.redis.zadd(
        app.keys.sessions_ended, {"s-ghost": clock.ms - HOUR}
    )  # ended, its state lost
    await app.redis.zadd(app.keys.sessions_ended, {"s-recent-end": clock.ms})  # not overdue yet

    report = await sweeper.run_once()

    assert sorted(report.migrations)[0] == "s-end: migrated"
    assert await app.redis.exists(app.keys.migration_completed("s-end")) == 1
    async with pg.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM fills WHERE session_id = 's-end'") == 1
    [alert] = await alerts_of(app, "migration_overdue")
    assert alert["session_id"] == "s-ghost" and alert["reason"].startswith("missing: ")
    assert sorted(report.migrations)[1] == f"s-ghost: {alert['reason']}"
    again = await sweeper.run_once()
    assert again.migrations == [f"s-ghost: {alert['reason']}"]
    assert len(await alerts_of(app, "migration_overdue")) == 1  # alerted once per reason


# --- the loop and the lease ----------------------------------------------------------
async def test_run_loops_until_stop_and_releases_the_lease(app: App, sweeper: Sweeper) -> None:
    await seed_uncovered(app, "s-loop", "o-1")
    task = asyncio.ensure_future(sweeper.run())
    await wait_for(lambda: _status(app, "s-loop"))
    assert (await app.redis.get(app.keys.sweeper_lease)).decode().startswith("test-consumer/")
    app.stop.set()
    await asyncio.wait_for(task, 5)
    assert await app.redis.exists(app.keys.sweeper_lease) == 0
    assert await uncovered(app, "s-loop") == {}


def start_sweeper(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*MMOPS, "sweeper"],
        env={**env, "CONSUMER_NAME": name, "SETTLEMENT_INTERVAL_MINUTES": "0.01"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_two_sweeper_processes_one_lease_and_failover_after_kill_9(
    app: App,
    env: dict[str, str],
) -> None:
    procs = {name: start_sweeper(env, name) for name in ("sw-a", "sw-b")}
    try:
        holder_token = await wait_for(lambda: app.redis.get(app.keys.sweeper_lease), timeout=30)
        holder = holder_token.decode().split("/", 1)[0]
        other = "sw-b" if holder == "sw-a" else "sw-a"
        passes: set[str] = set()
        for _ in range(15):  # only the holder sweeps
            by = await app.redis.hget(app.keys.sweeper_state, "last_pass_by")
            if by:
                passes.add(by.decode())
            await asyncio.sleep(0.1)
        assert passes == {holder_token.decode()}

        procs[holder].send_signal(signal.SIGKILL)
        procs[holder].wait(5)
        killed_at = time.monotonic()
        token = await wait_for(_lease_of(app, other), timeout=10)
        took = time.monotonic() - killed_at
        assert took < lease_ttl_ms(0.6) / 1000 + 1.0
        await wait_for(_passed_by(app, token))

        procs[other].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[other].wait, 15) == 0
        assert await app.redis.exists(app.keys.sweeper_lease) == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _status(app: App, sid: str) -> bytes | None:
    status: bytes | None = await app.redis.get(app.keys.settlement_status(sid))
    return status if status == b"COMPLETED" else None


def _lease_of(app: App, name: str) -> Callable[[], Any]:
    async def check() -> str | None:
        token = await app.redis.get(app.keys.sweeper_lease)
        return token.decode() if token and token.decode().startswith(name + "/") else None

    return check


def _passed_by(app: App, token: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await app.redis.hget(app.keys.sweeper_state, "last_pass_by") == token.encode()

    return check
