"""The rate budget against the Kraken stand-in, through the real ccxt client: what coverage
and the sweeper will do with it (spend before each place or reprice, wait when short)
never earns a rate-limit reply, while the trader spends its own half of the counter.

The stand-in and the budget run one tier shape; the long tests use a fast one (the
threshold and decay of a real tier, times ten) so that 500 orders take seconds, not
minutes. The model, the scripts and the stand-in's counter are the same as with
Starter; test_the_starter_shares_add_up_to_the_threshold runs Starter's own numbers.
"""

from __future__ import annotations

import asyncio
import base64
import time
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import RATE_LIMITED, Limits
from tests.kraken_env import API_KEY, MakeExchange
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import Order, RateLimited, SellRequest
from trading.kraken_limits import TIERS, RateBudget, Tier, reprice_cost

FAST = Tier(name="fast", threshold=180, decay_per_s=Decimal(600), max_open=10_000)
SECOND_KEY = "mmopsSECONDprocessKEY0123456789abcdefABCDEF0123456789xy"
SECOND_SECRET = base64.b64encode(b"mmops-second-process-" + bytes(range(43))).decode()
SYMBOL = "BTC/USD"


@pytest.fixture
def kraken_limits() -> Limits:
    return Limits(threshold=FAST.threshold, decay_per_s=float(FAST.decay_per_s), max_open=10_000)


@pytest.fixture
def budget(redis: aioredis.Redis, settings: Settings) -> RateBudget:
    return RateBudget(redis, tier=FAST, reserve_percent=Decimal(50), prefix=settings.key_prefix)


def tp(n: int, price: str = "64600.0") -> SellRequest:
    cid = f"6d6d6f70-{n:04x}-4000-8000-{n:012x}"
    return SellRequest(symbol=SYMBOL, amount=Decimal("0.01"), price=Decimal(price), client_id=cid)


class Trader:
    """Spends its half of the counter as fast as its share allows (its own model of it)."""

    def __init__(self, kraken: FakeKraken, tier: Tier, share: float) -> None:
        self.kraken = kraken
        self.limit = tier.threshold * share
        self.decay = float(tier.decay_per_s) * share
        self.level, self.at = 0.0, time.monotonic()
        self.spent = self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            self.level = max(0.0, self.level - (now - self.at) * self.decay)
            self.at = now
            while self.level + 1 <= self.limit:
                if self.kraken.trader_spend(SYMBOL, 1):
                    self.level += 1
                    self.spent += 1
                else:
                    self.refused += 1
                    break
            await asyncio.sleep(0.005)


async def cover(ex: CcxtExchange, budget: RateBudget, requests: list[SellRequest]) -> list[Order]:
    """What coverage will do: reserve before each batch, wait while the budget is short."""
    placed: list[Order] = []
    for start in range(0, len(requests), 15):
        batch = requests[start : start + 15]
        grant = await budget.spend(SYMBOL, len(batch), new_orders=len(batch), max_wait_ms=30_000)
        assert grant.ok, grant
        for outcome in await ex.place_limit_sells(batch):
            assert isinstance(outcome, Order), outcome
            placed.append(outcome)
    return placed


async def test_a_500_fill_burst_never_meets_a_rate_limit(
    make_exchange: MakeExchange,
    kraken: FakeKraken,
    budget: RateBudget,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    kraken.add_key(SECOND_KEY, SECOND_SECRET)
    # two coverage processes, each with its own key, its own Redis connection, one budget
    other_redis = aioredis.Redis.from_url(settings.redis_url)
    other_budget = RateBudget(
        other_redis, tier=FAST, reserve_percent=Decimal(50), prefix=settings.key_prefix
    )
    one = make_exchange()
    two = make_exchange(api_key=SECOND_KEY, api_secret=SECOND_SECRET)
    trader = Trader(kraken, FAST, share=0.5)
    stop = asyncio.Event()
    spending = asyncio.ensure_future(trader.run(stop))
    try:
        await asyncio.sleep(0.05)  # the trader holds its half from the start
        fills = [tp(n, price=f"{64600 + n % 50}.0") for n in range(500)]
        placed = await asyncio.gather(
            cover(one, budget, fills[0::2]), cover(two, other_budget, fills[1::2])
        )
    finally:
        stop.set()
        await spending
        await other_redis.aclose()

    assert kraken.replies(RATE_LIMITED) == 0  # neither mmops process nor the trader
    assert trader.refused == 0 and trader.spent > 0
    counter = kraken.counter(SYMBOL)
    assert counter.peak <= FAST.threshold
    orders = [o for group in placed for o in group]
    assert len(orders) == 500
    assert sorted(o.cl_ord_id or "" for o in kraken.open_orders(SYMBOL)) == sorted(
        r.client_id for r in fills
    )
    (state,) = await budget.state([SYMBOL])
    assert state.open_orders == 500


async def test_repricing_200_young_tps_stays_within_the_budget(
    make_exchange: MakeExchange, kraken: FakeKraken, budget: RateBudget
) -> None:
    ex = make_exchange()
    originals = [tp(n) for n in range(200)]
    placed = await cover(ex, budget, originals)
    acked_ms = {o.id: time.time_ns() // 1_000_000 for o in placed}  # at or after Kraken's opentm

    # what the sweeper will do: oldest first, reserve cancel penalty + place, then reprice
    reserved = 0
    for n, old in enumerate(placed):
        cost = reprice_cost(time.time_ns() // 1_000_000 - acked_ms[old.id])
        grant = await budget.spend(SYMBOL, cost, max_wait_ms=30_000)
        assert grant.ok, grant
        reserved += cost
        cancelled = await ex.cancel_order(symbol=SYMBOL, order_id=old.id)
        assert cancelled.status.value == "canceled"
        new = tp(1000 + n, price="64700.0")
        assert isinstance(
            await ex.place_limit_sell(
                symbol=SYMBOL, amount=new.amount, price=new.price, client_id=new.client_id
            ),
            Order,
        )

    assert kraken.replies(RATE_LIMITED) == 0
    counter = kraken.counter(SYMBOL)
    assert counter.peak <= FAST.threshold
    # the stand-in's own penalty table charged no more than the budget reserved
    assert counter.spent <= 200 + reserved
    assert counter.spent >= 200 + 200 * 2  # every cancel of a young order cost something
    assert len(kraken.open_orders(SYMBOL)) == 200
    assert sum(o.status == "canceled" for o in kraken.orders.values()) == 200


async def test_the_starter_shares_add_up_to_the_threshold(
    make_exchange: MakeExchange, kraken: FakeKraken, redis: aioredis.Redis, settings: Settings
) -> None:
    kraken.limits = Limits(threshold=60, decay_per_s=1.0, max_open=60)  # Starter itself
    budget = RateBudget(
        redis, tier=TIERS["starter"], reserve_percent=Decimal(50), prefix=settings.key_prefix
    )
    ex = make_exchange()
    requests = [tp(n, price=f"{64600 + n}.0") for n in range(31)]
    granted = [await budget.try_spend(SYMBOL, 1, new_orders=1) for _ in requests]
    assert [g.ok for g in granted] == [True] * 30 + [False]  # mmops' half: 30
    assert all(isinstance(o, Order) for o in await ex.place_limit_sells(requests[:30]))
    assert sum(kraken.trader_spend(SYMBOL, 1) for _ in range(30)) >= 29  # the trader's half
    while kraken.trader_spend(SYMBOL, 0.1):  # and whatever decayed meanwhile
        pass
    # the counter is full now: an order sent past the budget is refused by Kraken itself
    with pytest.raises(RateLimited) as caught:
        await ex.place_limit_sell(
            symbol=SYMBOL, amount=Decimal("0.01"), price=Decimal("64700.0"), client_id="c-over"
        )
    assert caught.value.symbol == SYMBOL
    assert kraken.replies(RATE_LIMITED, key=API_KEY) == 1
