"""The trading-rate budget (trading.kraken_limits over storage.rate_budget) on a real Redis:
Kraken's tiers and cancel penalties, mmops' share, atomic reservation across processes,
the open-order cap, decay by Redis' clock, and keys that stay in one hash slot each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from tests.conftest import wait_for
from trading.kraken_limits import (
    PLACE_COST,
    TIERS,
    RateBudget,
    Tier,
    cancel_cost,
    reprice_cost,
)

# a tier with Kraken's shape but a fast clock, for tests that watch the counter decay
FAST = Tier(name="fast", threshold=10, decay_per_s=Decimal(1000), max_open=100)


@pytest.fixture
def make_budget(redis: aioredis.Redis, settings: Settings):  # type: ignore[no-untyped-def]
    def make(tier: Tier = TIERS["starter"], reserve: str = "50") -> RateBudget:
        return RateBudget(
            redis, tier=tier, reserve_percent=Decimal(reserve), prefix=settings.key_prefix
        )

    return make


@pytest.fixture
async def other_process_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("age_ms", "penalty"),
    [
        (0, 8),
        (4_999, 8),
        (5_000, 6),
        (9_999, 6),
        (10_000, 5),
        (14_999, 5),
        (15_000, 4),
        (44_999, 4),
        (45_000, 2),
        (89_999, 2),
        (90_000, 1),
        (299_999, 1),
        (300_000, 0),
        (86_400_000, 0),
    ],
)
def test_cancel_penalty_by_order_age(age_ms: int, penalty: int) -> None:
    assert cancel_cost(age_ms) == penalty
    assert reprice_cost(age_ms) == penalty + PLACE_COST


def test_krakens_tiers() -> None:
    rows = {n: (t.threshold, t.decay_per_s, t.max_open) for n, t in TIERS.items()}
    assert rows == {
        "starter": (60, Decimal(1), 60),
        "intermediate": (125, Decimal("2.34"), 80),
        "pro": (180, Decimal("3.75"), 225),
    }


@pytest.mark.parametrize(
    ("tier", "reserve", "limit", "decay", "open_cap"),
    [
        ("starter", "50", "30", "0.5", 30),
        ("intermediate", "50", "62.5", "1.17", 40),
        ("pro", "50", "90", "1.875", 112),
        ("pro", "0", "180", "3.75", 225),
        ("starter", "75", "15", "0.25", 15),
    ],
)
def test_mmops_share_of_the_counter(
    make_budget, tier: str, reserve: str, limit: str, decay: str, open_cap: int
) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget(TIERS[tier], reserve)
    assert budget.limit == Decimal(limit)
    assert budget.decay_per_s == Decimal(decay)
    assert budget.open_cap == open_cap


def test_a_reserve_of_100_percent_is_refused(make_budget) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="reserve_percent"):
        make_budget(reserve="100")


async def test_the_share_is_granted_up_to_the_limit_then_refused_with_the_wait(make_budget) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget()  # starter, 50 %: 30 units, 0.5 per second
    grants = [await budget.try_spend("BTC/USD", 1) for _ in range(31)]
    assert [g.ok for g in grants] == [True] * 30 + [False]
    refused = grants[-1]
    assert refused.reason == "rate_budget"
    assert 0 < refused.wait_ms <= 2_000  # one unit decays in 2 s at 0.5/s
    assert Decimal(29) < refused.used <= Decimal(30)
    # another pair has its own counter
    assert (await budget.try_spend("ETH/USD", 30)).ok
    # a cost above the whole share never fits
    never = await budget.try_spend("XRP/USD", 31)
    assert (never.ok, never.reason, never.wait_ms) == (False, "rate_budget", -1)


async def test_processes_share_one_counter_atomically(
    make_budget, other_process_redis: aioredis.Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    one = make_budget()
    two = RateBudget(
        other_process_redis,
        tier=TIERS["starter"],
        reserve_percent=Decimal(50),
        prefix=settings.key_prefix,
    )
    grants = await asyncio.gather(
        *(b.try_spend("SOL/USD", 1) for _ in range(60) for b in (one, two))
    )
    assert sum(g.ok for g in grants) == 30  # never more than the share, whoever asks


async def test_the_open_order_cap(make_budget) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget(TIERS["starter"])  # 30 of the 60 open orders are mmops'
    assert (await budget.try_spend("BTC/USD", 0, new_orders=30)).ok
    refused = await budget.try_spend("BTC/USD", 1, new_orders=1)
    assert (refused.ok, refused.reason, refused.open_orders) == (False, "open_orders_limit", 30)
    assert refused.used == 0  # nothing was spent for a refused order
    await budget.release_open("BTC/USD", 2)
    granted = await budget.try_spend("BTC/USD", 1, new_orders=1)
    assert (granted.ok, granted.open_orders) == (True, 29)
    await budget.sync_open("BTC/USD", 12)  # the exchange's count wins
    (state,) = await budget.state(["BTC/USD"])
    assert (state.open_orders, state.open_cap) == (12, 30)
    await budget.release_open("BTC/USD", 50)
    (state,) = await budget.state(["BTC/USD"])
    assert state.open_orders == 0  # never below zero


async def test_the_counter_decays_by_redis_time(make_budget) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget(FAST)  # 5 units, 500 per second
    assert (await budget.try_spend("BTC/USD", 5)).ok
    assert not (await budget.try_spend("BTC/USD", 5)).ok

    async def room() -> bool:
        return (await budget.try_spend("BTC/USD", 5)).ok

    await wait_for(room, timeout=5)


async def test_spend_waits_for_the_decay_and_gives_up_at_its_limit(make_budget) -> None:  # type: ignore[no-untyped-def]
    fast = make_budget(FAST)
    assert (await fast.try_spend("BTC/USD", 5)).ok
    waited = await fast.spend("BTC/USD", 5, max_wait_ms=5_000)
    assert waited.ok

    slow = make_budget()  # (another pair: one pair, one tier)
    assert (await slow.try_spend("ETH/USD", 30)).ok
    gave_up = await slow.spend("ETH/USD", 1, max_wait_ms=0)
    assert (gave_up.ok, gave_up.reason) == (False, "rate_budget")
    capped = await slow.spend("XRP/USD", 1, new_orders=31, max_wait_ms=60_000)
    assert (capped.ok, capped.reason) == (False, "open_orders_limit")  # no waiting for that


async def test_saturate_record_and_state(make_budget) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget()
    await budget.record("BTC/USD", 4, new_orders=2)
    await budget.saturate("ETH/USD")  # the exchange said "rate limit"
    states = {s.symbol: s for s in await budget.state()}
    assert set(states) == {"BTC/USD", "ETH/USD"}
    eth = states["ETH/USD"]
    assert Decimal(29) < eth.used <= eth.limit == Decimal(30)
    assert 50_000 < eth.refill_ms <= 60_000  # 30 units at 0.5/s
    btc = states["BTC/USD"]
    assert Decimal(3) < btc.used <= Decimal(4) and btc.open_orders == 2
    assert btc.free == btc.limit - btc.used
    assert not (await budget.try_spend("ETH/USD", 1)).ok


async def test_keys_are_one_hash_slot_per_pair_and_idle_ones_expire(
    make_budget, redis: aioredis.Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    budget = make_budget()
    await budget.try_spend("BTC/USD", 3)
    await budget.try_spend("ETH/USD", 1, new_orders=1)
    btc = f"{settings.key_prefix}ratebudget:{{kraken:BTC/USD}}"
    eth = f"{settings.key_prefix}ratebudget:{{kraken:ETH/USD}}"
    assert await redis.exists(btc, eth) == 2
    assert 0 < await redis.pttl(btc) <= 6_000 + 60_000  # no open orders: expires when idle
    assert await redis.pttl(eth) == -1  # an open order is remembered


async def test_an_alert_is_due_once_per_pair_and_period(
    make_budget, other_process_redis: aioredis.Redis, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    one = make_budget()
    two = RateBudget(
        other_process_redis,
        tier=TIERS["starter"],
        reserve_percent=Decimal(50),
        prefix=settings.key_prefix,
    )
    assert await one.alert_due("BTC/USD")
    assert not await two.alert_due("BTC/USD")  # another process, the same hour
    assert await two.alert_due("ETH/USD")
    assert await one.alert_due("BTC/USD", kind="rate_budget")
    assert await one.alert_due("XRP/USD", every_ms=1)

    async def due_again() -> bool:
        return await two.alert_due("XRP/USD", every_ms=1)

    await wait_for(due_again, timeout=5)
