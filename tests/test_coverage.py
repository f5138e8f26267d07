"""The coverage worker against real Redis and the paper exchange (in-process)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from tests.cluster import ON_BOTH
from tests.helpers import (
    drain_coverage,
    fill,
    now_ms,
    orders_per_client_id,
    placed_by_position,
    takeprofit_entries,
)
from trading.client_ids import PREFIX, client_id
from trading.positions import Buy, new_position

# single Redis and the local Redis Cluster (tests/cluster.py); every test records fills
pytestmark = ON_BOTH


async def test_buy_fill_gets_a_take_profit_at_the_tier_price(app: App) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-1", "f-1", "o-1"))
    stats = await drain_coverage(app)
    assert stats.processed == 1
    [created] = await takeprofit_entries(app, "created")
    assert created["price"] == "64584.9"  # docs/contract.md §3 vector: 0-1 h tier, maker 0.25 %
    assert Decimal(created["quantity"]) == Decimal("0.01")
    assert created["client_order_id"] == client_id("s-1", "o-1", 1)
    assert created["client_order_id"].startswith(PREFIX)
    assert created["tier"] == "0"
    assert int(created["latency_ms"]) >= 0
    record = await app.redis.hgetall(app.keys.tp_order("s-1", created["order_id"]))
    assert record[b"position"] == b"o-1" and record[b"status"] == b"live"
    assert record[b"client_id"].decode() == created["client_order_id"]
    assert (
        await app.redis.get(app.keys.tp_attempt("s-1", "o-1"))
        == created["client_order_id"].encode()
    )
    metrics = await app.redis.hgetall(app.keys.metrics_takeprofit("s-1"))
    assert metrics[b"created"] == b"1"
    assert Decimal(metrics[b"total_value"].decode()) == Decimal("645.849")
    [order] = await app.exchange.open_orders("BTC/USD")
    assert order.price == Decimal("64584.9") and order.amount == Decimal("0.01")


async def test_duplicates_and_full_replay_place_nothing_new(app: App) -> None:
    entries = [fill("s-1", f"f-{i}", f"o-{i % 5}", quantity="0.01") for i in range(20)]
    for fields in entries + entries:  # every fill delivered twice
        await app.redis.xadd(app.keys.stream, fields)
    await drain_coverage(app)
    orders = await orders_per_client_id(app)
    created = await takeprofit_entries(app, "created")
    assert max(orders.values()) == 1
    # one order per step; the fills of a position that arrive in one batch share one step
    assert len(created) == len(orders) and 5 <= len(created) <= 20
    placed = await placed_by_position(app, "s-1")
    assert placed == {f"o-{i}": Decimal("0.04") for i in range(5)}

    # replay the whole stream from the start
    await app.redis.xgroup_setid(app.keys.stream, "coverage", "0")
    stats = await drain_coverage(app)
    assert stats.processed == 40
    assert await orders_per_client_id(app) == orders
    assert len(await takeprofit_entries(app, "created")) == len(created)


async def test_partial_fills_cover_exactly_what_was_filled(app: App) -> None:
    for i, qty in enumerate(("0.3", "0.3", "0.4")):
        await app.redis.xadd(
            app.keys.stream,
            fill(
                "s-2", f"f-{i}", "o-9", symbol="ETH/USD", price="3200.25", quantity=qty, fee="0.5"
            ),
        )
    await drain_coverage(app)
    position = await app.book.position("s-2", "o-9", fresh=True)
    assert position is not None
    assert position.filled == Decimal("1.0")
    assert position.covered == Decimal("1.0")
    assert position.uncovered == 0
    assert sum((await placed_by_position(app, "s-2")).values()) == Decimal("1.0")


async def test_dust_waits_until_more_fills_lift_it(app: App) -> None:
    # BTC/USD minimum is 0.00005 BTC: the first partial is dust, recorded once
    await app.redis.xadd(
        app.keys.stream, fill("s-3", "f-1", "o-1", quantity="0.00003", fee="0.005")
    )
    await app.redis.xadd(
        app.keys.stream, fill("s-3", "f-1", "o-1", quantity="0.00003", fee="0.005")
    )  # dup
    await drain_coverage(app)
    skipped = await takeprofit_entries(app, "skipped")
    assert len(skipped) == 1 and skipped[0]["reason"].startswith("dust")
    assert await takeprofit_entries(app, "created") == []
    position = await app.book.position("s-3", "o-1", fresh=True)
    assert position is not None and position.dust == Decimal("0.00003")

    await app.redis.xadd(
        app.keys.stream, fill("s-3", "f-2", "o-1", quantity="0.00003", fee="0.005")
    )
    await drain_coverage(app)
    [created] = await takeprofit_entries(app, "created")
    assert Decimal(created["quantity"]) == Decimal("0.00006")
    assert len(await takeprofit_entries(app, "skipped")) == 1


async def test_tp_fill_closes_its_position_with_realized_pnl(app: App) -> None:
    await app.redis.xadd(
        app.keys.stream,
        fill("s-4", "f-1", "o-1", price="100", quantity="1", fee="0.25", symbol="SOL/USD"),
    )
    await drain_coverage(app)
    [created] = await takeprofit_entries(app, "created")
    price = Decimal(created["price"])
    await app.redis.xadd(
        app.keys.stream,
        fill(
            "s-4",
            "f-2",
            created["order_id"],
            side="sell",
            price=created["price"],
            quantity="1",
            fee=str(price * Decimal("0.0025")),
            symbol="SOL/USD",
        ),
    )
    await drain_coverage(app)
    position = await app.book.position("s-4", "o-1", fresh=True)
    assert position is not None
    assert position.open_quantity == 0
    assert position.steps[0].status == "filled"
    expected = price - price * Decimal("0.0025") - Decimal("100.25")
    assert position.realized_pnl == expected
    assert expected > 0
    record = await app.redis.hgetall(app.keys.tp_order("s-4", created["order_id"]))
    assert record[b"status"] == b"filled"


async def test_other_sells_close_oldest_positions_first(app: App) -> None:
    t0 = now_ms() - 10_000
    await app.redis.xadd(
        app.keys.stream,
        fill("s-5", "f-1", "o-old", price="100", quantity="1", fee="0", symbol="SOL/USD", ts=t0),
    )
    await app.redis.xadd(
        app.keys.stream,
        fill(
            "s-5",
            "f-2",
            "o-new",
            price="110",
            quantity="1",
            fee="0",
            symbol="SOL/USD",
            ts=t0 + 5000,
        ),
    )
    await app.redis.xadd(
        app.keys.stream,
        fill(
            "s-5",
            "f-3",
            "manual-sell",
            side="sell",
            price="120",
            quantity="1.5",
            fee="0",
            symbol="SOL/USD",
        ),
    )
    await drain_coverage(app)
    old = await app.book.position("s-5", "o-old", fresh=True)
    new = await app.book.position("s-5", "o-new", fresh=True)
    assert old is not None and new is not None
    assert old.closed_other == Decimal(1) and new.closed_other == Decimal("0.5")
    assert old.realized_pnl == Decimal(20) and new.realized_pnl == Decimal("5.0")


async def test_no_balance_is_skipped_with_the_reason(app: App) -> None:
    # the trader sold the coins by itself before the fill reached us
    await app.exchange.observe_fill(
        fill_id="x",
        order_id="elsewhere",
        symbol="BTC/USD",
        side="sell",
        price=Decimal(64000),
        quantity=Decimal("0.01"),
    )
    await app.redis.xadd(app.keys.stream, fill("s-6", "f-1", "o-1"))
    await drain_coverage(app)
    [skipped] = await takeprofit_entries(app, "skipped")
    assert skipped["reason"].startswith("insufficient balance")
    position = await app.book.position("s-6", "o-1", fresh=True)
    assert position is not None and position.uncovered == Decimal("0.01")


async def test_dry_run_places_no_order(settings: Settings, redis: object) -> None:
    from dataclasses import replace

    app = await App.open(replace(settings, dry_run=True))
    try:
        await app.redis.xadd(app.keys.stream, fill("s-7", "f-1", "o-1"))
        await drain_coverage(app)
        [skipped] = await takeprofit_entries(app, "skipped")
        assert skipped["reason"] == "dry_run"
        assert await app.exchange.open_orders() == []
    finally:
        await app.close()


async def test_concurrent_callers_on_one_position_place_one_order_per_step(
    settings: Settings, redis: object
) -> None:
    """Many engines (separate apps = separate caches and clients) race to cover one position."""
    apps = [await App.open(settings) for _ in range(4)]
    try:
        # a recorded, uncovered position, as a worker that died after recording leaves it
        opened = now_ms()
        position = new_position(
            session_id="s-8", position_id="o-1", symbol="BTC/USD", opened_at=opened
        )
        position = position.with_buy(
            Buy("f-1", Decimal("64000.5"), Decimal("0.5"), Decimal(1), opened)
        )
        await apps[0].book.commit("s-8", [position])
        await apps[0].exchange.observe_fill(
            fill_id="f-1",
            order_id="o-1",
            symbol="BTC/USD",
            side="buy",
            price=Decimal("64000.5"),
            quantity=Decimal("0.5"),
        )
        results = await asyncio.gather(
            *(a.engine.cover("s-8", "o-1") for a in apps for _ in range(5))
        )
        assert sum(1 for r in results if r.result.value == "created") == 1
        orders = await orders_per_client_id(apps[0])
        assert list(orders.values()) == [1]
        position = await apps[0].book.position("s-8", "o-1", fresh=True)
        assert (
            position is not None and position.covered == Decimal("0.5") and position.uncovered == 0
        )
    finally:
        for a in apps:
            await a.close()


async def test_aging_tier_uses_position_age(settings: Settings, redis: object) -> None:
    start = now_ms()
    clock = ManualClock(start + 5 * 3_600_000)  # the worker sees the fill 5 hours late
    app = await App.open(settings, clock=clock)
    try:
        await app.redis.xadd(app.keys.stream, fill("s-9", "f-1", "o-1", ts=start))
        await drain_coverage(app)
        [created] = await takeprofit_entries(app, "created")
        assert created["tier"] == "2" and created["price"] == "64263.6"  # breakeven tier vector
    finally:
        await app.close()


async def test_the_same_fill_id_in_two_sessions_is_two_fills(app: App) -> None:
    for sid in ("s-a", "s-b"):
        await app.redis.xadd(app.keys.stream, fill(sid, "f-1", "o-1"))
    await drain_coverage(app)
    created = await takeprofit_entries(app, "created")
    assert sorted(c["session_id"] for c in created) == ["s-a", "s-b"]
    assert await app.exchange.free_balance("BTC") == 0  # both credited, both locked by their TPs


async def test_takeprofit_outcomes_are_counted_for_prometheus(app: App) -> None:
    from base.metrics import REGISTRY

    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("mmops_takeprofits_total", {"type": kind}) or 0.0

    created, skipped = count("created"), count("skipped")
    await app.redis.xadd(app.keys.stream, fill("s-m", "f-1", "o-1"))
    await app.redis.xadd(
        app.keys.stream, fill("s-m", "f-2", "o-2", quantity="0.00001", fee="0")
    )  # dust
    await drain_coverage(app)
    assert count("created") == created + 1
    assert count("skipped") == skipped + 1
