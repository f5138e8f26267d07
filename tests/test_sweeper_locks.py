"""Per-session sweep locks after a sweeper died: the holder of the sweeper lease takes over
a session lock taken under another (lost) lease at once, instead of leaving the session
alone for the lock's 5-minute TTL (chaos run: a killed sweeper's sessions were not swept
within the run's quiescence); so it does with a lock its own earlier pass could not
release. A lock taken without a lease (`mmops sweep --once`) is still waited out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from base.clock import ManualClock
from mmops.app import App
from storage.locks import FencedLock
from tests.conftest import MakeApp
from tests.helpers import now_ms
from tests.test_sweeper import paper, seed_uncovered
from workers.sweep_pass import SweepStatus
from workers.sweeper import Sweeper


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(now_ms()))


@pytest.fixture
async def leased(app: App) -> AsyncIterator[Sweeper]:
    """A sweeper holding the lease, as `Sweeper.run` holds it during its passes."""
    sweeper = await Sweeper.create(app)
    sweeper.guard.keeper = sweeper.keeper
    await sweeper.keeper.refresh()
    assert sweeper.keeper.valid()
    yield sweeper
    await sweeper.lease.release()
    await sweeper.close()


async def test_a_lock_of_a_lost_lease_is_taken_over_by_the_lease_holder(
    app: App, leased: Sweeper
) -> None:
    await seed_uncovered(app, "s-dead", "o-1")
    key = app.keys.settlement_lock("s-dead")
    await app.redis.set(key, "lease:sweeper-9/0badc0ffee|1234", px=300_000)  # killed -9
    report = await leased.run_once()
    [session] = report.sessions
    assert session.status == SweepStatus.COMPLETED and session.uncovered_after == 0
    assert len(await paper(app).orders()) == 1
    assert await app.redis.exists(key) == 0  # released at the end of the sweep


async def test_a_lock_left_by_an_earlier_sweep_of_the_same_lease_is_taken(
    app: App, leased: Sweeper
) -> None:
    """Its release failed (Redis went away mid-sweep): the next pass sweeps the session."""
    await seed_uncovered(app, "s-left", "o-1")
    key = app.keys.settlement_lock("s-left")
    await app.redis.set(key, f"lease:{leased.lease.token}|0000", px=300_000)
    report = await leased.run_once()
    [session] = report.sessions
    assert session.status == SweepStatus.COMPLETED and session.uncovered_after == 0


async def test_a_lock_taken_without_a_lease_is_waited_out(app: App, leased: Sweeper) -> None:
    await seed_uncovered(app, "s-once", "o-1")
    await app.redis.set(app.keys.settlement_lock("s-once"), "0123456789abcdef", px=300_000)
    report = await leased.run_once()
    [session] = report.sessions
    assert session.status == SweepStatus.LOCKED and session.uncovered_after == 1
    assert await paper(app).orders() == []


async def test_fenced_lock_takes_a_free_key_or_one_taken_under_a_lease(
    redis: aioredis.Redis, app: App
) -> None:
    key = app.keys.settlement_lock("s-lock")
    mine = FencedLock(redis, key, 60_000, lease="sw-a/1")
    assert await mine.acquire()  # free
    leftover = FencedLock(redis, key, 60_000, lease="sw-a/1")
    assert await leftover.acquire()  # held under our own lease: an earlier sweep's leftover
    newer = FencedLock(redis, key, 60_000, lease="sw-b/2")
    assert await newer.acquire()  # held under a lost lease: taken over
    assert (await redis.get(key) or b"").decode().startswith("lease:sw-b/2|")
    await mine.release()  # the old holders' releases are no-ops now
    await leftover.release()
    assert await redis.exists(key) == 1
    await redis.set(key, "no-lease-token", px=60_000)
    assert not await FencedLock(redis, key, 60_000, lease="sw-c/3").acquire()
