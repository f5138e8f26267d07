"""The sweeper's side of the rate budget (issue 14): after a whole read of the exchange's
book the open-order counts follow it, and a pair's positions are worked on in the order
that spends the counter best (uncovered first, then the oldest live TP first)."""

from __future__ import annotations

from decimal import Decimal

import redis.asyncio as aioredis

from base.settings import Settings
from trading.client_ids import client_id
from trading.exchange import Order, OrderStatus
from trading.kraken_limits import TIERS, RateBudget
from trading.paper import PaperExchange
from trading.placing import Placer
from trading.positions import Position, Step, StepStatus
from workers.sweep_pass import cheapest_first


def order(n: int, symbol: str, *, ours: bool = True) -> Order:
    return Order(
        id=f"O-{symbol}-{n}",
        client_id=client_id("s-1", f"{symbol}-{n}", 0) if ours else f"trader-{n}",
        symbol=symbol,
        side="sell",
        price=Decimal("100"),
        amount=Decimal("1"),
        filled=Decimal("0"),
        status=OrderStatus.OPEN,
    )


async def test_open_order_counts_follow_a_whole_read_of_the_book(
    redis: aioredis.Redis, settings: Settings
) -> None:
    budget = RateBudget(
        redis, tier=TIERS["starter"], reserve_percent=Decimal(50), prefix=settings.key_prefix
    )
    placer = Placer(PaperExchange.__new__(PaperExchange), budget)
    await budget.record("BTC/USD", 0, new_orders=5)  # drifted: 5 counted, 2 on the book
    await budget.record("ETH/USD", 0, new_orders=3)  # drifted the other way: 4 on the book
    before = await placer.open_counts()
    assert before == {"BTC/USD": 5, "ETH/USD": 3}
    await budget.record("BTC/USD", 0, new_orders=1)  # placed while the book was being read

    book = [order(n, "BTC/USD") for n in range(2)] + [order(9, "BTC/USD", ours=False)]
    book += [order(n, "ETH/USD") for n in range(4)] + [order(0, "SOL/USD")]
    await placer.sync_open(before, book)

    after = {pair.symbol: pair.open_orders for pair in await budget.state()}
    # BTC: 2 of ours on the book, plus the one placed during the read (counted until the
    # next read confirms it); the trader's order is not mmops'; SOL was never counted
    assert after == {"BTC/USD": 3, "ETH/USD": 4, "SOL/USD": 1}
    await placer.sync_open(await placer.open_counts(), book)  # the next read corrects it
    after = {pair.symbol: pair.open_orders for pair in await budget.state()}
    assert after == {"BTC/USD": 2, "ETH/USD": 4, "SOL/USD": 1}


async def test_without_a_budget_nothing_is_counted() -> None:
    placer = Placer(PaperExchange.__new__(PaperExchange))
    assert await placer.open_counts() == {}
    await placer.sync_open({}, [order(0, "BTC/USD")])  # a no-op, no Redis needed


def position(pid: str, opened_at: int, *live_acked_at: int) -> Position:
    steps = tuple(
        Step(
            n=n,
            client_id=f"c-{pid}-{n}",
            qty=Decimal("0.1"),
            price=Decimal("100"),
            tier=0,
            status=StepStatus.LIVE,
            claimed_at=acked - 5,
            acked_at=acked,
            order_id=f"O-{pid}-{n}",
        )
        for n, acked in enumerate(live_acked_at)
    )
    return Position(
        v=1, id=pid, session_id="s-1", symbol="BTC/USD", opened_at=opened_at, steps=steps
    )


def test_a_pairs_positions_uncovered_first_then_the_oldest_live_tp_first() -> None:
    young = position("young", 1_000, 90_000)
    old = position("old", 5_000, 10_000)
    mixed = position("mixed", 2_000, 80_000, 20_000)  # its oldest TP counts
    bare_late = position("bare-late", 7_000)
    bare_early = position("bare-early", 3_000)
    ordered = cheapest_first([young, old, mixed, bare_late, bare_early])
    assert [p.id for p in ordered] == ["bare-early", "bare-late", "old", "mixed", "young"]
