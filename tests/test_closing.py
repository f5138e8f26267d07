"""Sell fills across consumers and against their TP's placement (issue 10, defects 2, 3, 7,
8 and 10), with a real Redis, the paper exchange and two consumers of the coverage group."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from base.settings import Settings
from mmops.app import App
from tests.conftest import wait_for
from tests.helpers import drain_coverage, fill, now_ms, takeprofit_entries
from trading.exchange import Order, OrderStatus
from trading.positions import Step, StepStatus
from workers.closing import Closing
from workers.groups import runtime_for

D = Decimal


async def live_tp_quantity(app: App, sid: str, pid: str) -> Decimal:
    """Σ created − Σ cancelled for the position, from mm:takeprofits (the contract's rule)."""
    total = D(0)
    for tp in await takeprofit_entries(app):
        if tp["session_id"] == sid and tp["position_id"] == pid:
            if tp["type"] == "created":
                total += D(tp["quantity"])
            elif tp["type"] == "cancelled":
                total -= D(tp["quantity"])
    return total


async def test_a_fifo_sell_waits_for_an_earlier_buy_another_consumer_holds(app: App) -> None:
    """Consumer A holds `buy o-1 1 SOL`; consumer B gets the later `sell 1 SOL`: the sell waits
    for the buy, then closes it, and no TP is left live for the sold coins (defect 2)."""
    ts = now_ms()
    await app.redis.xadd(
        app.keys.stream,
        fill("s-1", "f-1", "o-1", symbol="SOL/USD", price="150", quantity="1", fee="0", ts=ts),
    )
    await app.redis.xadd(app.keys.stream, fill(
        "s-1", "f-2", "o-9", symbol="SOL/USD", side="sell", price="151", quantity="1", fee="0",
        ts=ts + 1,
    ))  # fmt: skip
    runtime_a, _ = await runtime_for("coverage", app, "consumer-a")
    runtime_b, _ = await runtime_for("coverage", app, "consumer-b")
    await runtime_a.ensure_group()
    await app.redis.xreadgroup("coverage", "consumer-a", {app.keys.stream: ">"}, count=1)

    stop_b = asyncio.Event()
    runtime_b.stop = stop_b
    b = asyncio.create_task(runtime_b.run())
    await asyncio.sleep(0.6)  # B has the sell and must not apply it while A holds the buy
    assert await app.redis.hlen(app.keys.fills("s-1")) == 0
    await runtime_a.run(until_drained=True)  # A recovers its pending buy
    for _ in range(100):
        if await app.redis.hlen(app.keys.fills("s-1")) == 2:
            break
        await asyncio.sleep(0.05)
    stop_b.set()
    await b
    position = await app.book.position("s-1", "o-1", fresh=True)
    assert position is not None
    assert position.closed_other == D("1") and position.open_quantity == 0
    assert await live_tp_quantity(app, "s-1", "o-1") == 0
    assert position.on_book == 0


async def test_fifo_sells_over_two_consumers_close_the_oldest_and_leave_no_live_tp(
    app: App,
) -> None:
    """300 buy -> FIFO sell pairs, two consumers: every position closed, no TP live (defect 2)."""
    ts = now_ms()
    for i in range(300):
        await app.redis.xadd(app.keys.stream, fill(
            "s-2", f"b-{i}", f"o-{i}", price="100", quantity="1", fee="0", ts=ts + 2 * i,
        ))  # fmt: skip
        await app.redis.xadd(app.keys.stream, fill(
            "s-2", f"s-{i}", f"x-{i}", side="sell", price="101", quantity="1", fee="0",
            ts=ts + 2 * i + 1,
        ))  # fmt: skip
    settings = dataclasses.replace(app.settings, batch_size=20)
    apps = [app, await App.open(settings)]
    try:
        await asyncio.gather(
            *(drain_coverage(a, f"c-{n}") for n, a in enumerate(apps)),
        )
        await drain_coverage(app, "c-0")  # anything deferred at the end
    finally:
        await apps[1].close()
    positions = await app.book.positions("s-2")
    assert len(positions) == 300
    for i in range(300):
        position = positions[f"o-{i}"]
        assert position.open_quantity == 0, i
        assert [c.fill_id for c in position.closes] == [f"s-{i}"], i  # the oldest, in order
        assert position.on_book == 0, i
    assert all(o.status != OrderStatus.OPEN for o in await app.exchange.open_orders())


async def test_a_tp_fill_that_beats_the_confirmation_closes_its_own_position(app: App) -> None:
    """The sell names the TP only by its client id and arrives while the step is pending;
    it closes the TP's position, not another one (defect 3)."""
    ts = now_ms()
    await app.redis.xadd(app.keys.stream, fill("s-3", "f-1", "o-1", quantity="0.01", ts=ts))
    await app.redis.xadd(app.keys.stream, fill("s-3", "f-2", "o-2", quantity="0.01", ts=ts + 1))
    await drain_coverage(app)
    first = await app.book.position("s-3", "o-1", fresh=True)
    assert first is not None and first.live
    # a third buy whose TP is claimed but not yet confirmed (the placer is slow)
    pos = await app.book.position("s-3", "o-2", fresh=True)
    assert pos is not None
    step = pos.live[0]
    # the trader reports o-2's TP fill by client id only, with an order id mmops never saw
    sell = fill(
        "s-3", "t-1", "EXCH-UNSEEN", side="sell", price=str(step.price), quantity="0.01",
        fee="0.1", ts=ts + 5,
    )  # fmt: skip
    sell["client_order_id"] = step.client_id
    await app.redis.xadd(app.keys.stream, sell)
    await drain_coverage(app)
    o1 = await app.book.position("s-3", "o-1", fresh=True)
    o2 = await app.book.position("s-3", "o-2", fresh=True)
    assert o1 is not None and o2 is not None
    assert o1.closes == () and o1.tp_filled == 0  # not misapplied to o-1
    assert o2.tp_filled == D("0.01") and o2.open_quantity == 0
    assert o2.steps[0].status == StepStatus.FILLED


async def tp_placed_not_confirmed(app: App, sid: str, ts: int) -> tuple[Step, Step]:
    """A buy `o-1` whose TP was placed on the exchange but, as a slow placer leaves it, is
    only claimed in mmops (pending, no `tp_order` record): (the placed step, its claim)."""
    await app.redis.xadd(app.keys.stream, fill(sid, "f-1", "o-1", quantity="0.01", ts=ts))
    await drain_coverage(app)
    pos = await app.book.position(sid, "o-1", fresh=True)
    assert pos is not None
    [step] = pos.live
    pending = msgspec.structs.replace(step, status=StepStatus.PENDING, order_id="")
    claimed = pos.with_step(pending)
    await app.book.commit(sid, [claimed], ops=app.engine.records.attempt(claimed, pending))
    await app.redis.delete(app.keys.tp_order(sid, step.order_id))
    return step, pending


async def test_a_sell_on_an_unknown_order_waits_while_a_tp_of_its_pair_is_placed(
    app: App,
) -> None:
    """A step claimed and not yet confirmed: the sell on an order id mmops has not recorded yet
    waits; once the placement is confirmed it is that TP's fill (defect 3)."""
    ts = now_ms()
    step, pending = await tp_placed_not_confirmed(app, "s-4", ts)
    sell = fill(
        "s-4", "t-1", step.order_id, side="sell", price=str(step.price), quantity="0.01",
        fee="0.1", ts=ts + 5,
    )  # fmt: skip
    await app.redis.xadd(app.keys.stream, sell)
    runtime, _ = await runtime_for("coverage", app, "c-x")
    task = asyncio.create_task(runtime.run())
    await asyncio.sleep(0.4)
    assert await app.redis.hlen(app.keys.fills("s-4")) == 1  # the sell waits
    order = await app.exchange.fetch_order_by_client_id(symbol="BTC/USD", client_id=step.client_id)
    assert order is not None
    current = await app.book.position("s-4", "o-1", fresh=True)
    assert current is not None
    await app.engine.confirm(current, pending, order)  # the placement is confirmed
    for _ in range(100):
        if await app.redis.hlen(app.keys.fills("s-4")) == 2:
            break
        await asyncio.sleep(0.05)
    runtime.stop.set()
    await task
    after = await app.book.position("s-4", "o-1", fresh=True)
    assert after is not None and after.tp_filled == D("0.01") and after.closes == ()


async def test_a_tp_confirmed_right_after_the_sells_lookup_still_owns_the_sell(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TP's placement is confirmed between the sell's look-up of `tp_order` and its look
    at the placements in flight (found by the suite on a busy machine): the sell is still
    that TP's fill, not a FIFO close of its own position (defect 3)."""
    ts = now_ms()
    step, pending = await tp_placed_not_confirmed(app, "s-5", ts)
    order = await app.exchange.fetch_order_by_client_id(symbol="BTC/USD", client_id=step.client_id)
    assert order is not None

    lookup = Closing._tp_owner
    confirmed: list[bool] = []

    async def confirm_right_after(self: Closing, sell: Any) -> Any:
        found = await lookup(self, sell)
        if not confirmed:  # the placement lands just after the sell's first look-up
            confirmed.append(True)
            current = await app.book.position("s-5", "o-1", fresh=True)
            assert current is not None
            await app.engine.confirm(current, pending, order)
        return found

    monkeypatch.setattr(Closing, "_tp_owner", confirm_right_after)
    sell = fill(
        "s-5", "t-1", step.order_id, side="sell", price=str(step.price), quantity="0.01",
        fee="0.1", ts=ts + 5,
    )  # fmt: skip
    await app.redis.xadd(app.keys.stream, sell)
    runtime, _ = await runtime_for("coverage", app, "c-x")
    task = asyncio.create_task(runtime.run())
    await wait_for(lambda: app.redis.hexists(app.keys.fills("s-5"), "t-1"), timeout=30)
    runtime.stop.set()
    await task
    assert confirmed
    after = await app.book.position("s-5", "o-1", fresh=True)
    assert after is not None
    assert (after.tp_filled, after.closes) == (D("0.01"), ())
    assert after.steps[0].status == StepStatus.FILLED


async def test_an_older_order_status_never_overwrites_a_newer_one(app: App) -> None:
    """Defect 7: a replayed or reordered `order` event does not regress the status."""
    ts = now_ms()
    base = {"type": "order", "session_id": "s-5", "order_id": "o-1", "symbol": "BTC/USD",
            "side": "buy", "order_type": "limit", "price": "100", "quantity": "1"}  # fmt: skip
    for status, at in (("filled", ts + 10), ("open", ts), ("partially_filled", ts + 5)):
        await app.redis.xadd(app.keys.stream, {**base, "status": status, "ts": str(at)})
    await drain_coverage(app)
    stored = await app.redis.hget(app.keys.orders("s-5"), "o-1")
    assert stored is not None and b'"status":"filled"' in stored


async def test_confirming_an_order_already_cancelled_records_created_and_cancelled(
    app: App,
) -> None:
    """Defect 8: live = Σ created − Σ cancelled stays right when the exchange reports the
    order cancelled at confirmation."""
    ts = now_ms()
    await app.redis.xadd(app.keys.stream, fill("s-6", "f-1", "o-1", quantity="0.01", ts=ts))
    await drain_coverage(app)
    pos = await app.book.position("s-6", "o-1", fresh=True)
    assert pos is not None
    [step] = pos.live
    pending = msgspec.structs.replace(step, status=StepStatus.PENDING, order_id="")
    claimed = pos.with_step(pending)
    await app.book.commit("s-6", [claimed])
    cancelled = Order(
        id=step.order_id, client_id=step.client_id, symbol="BTC/USD", side="sell",
        price=step.price, amount=step.qty, filled=D(0), status=OrderStatus.CANCELED,
    )  # fmt: skip
    await app.engine.confirm(claimed, pending, cancelled)
    kinds = [tp["type"] for tp in await takeprofit_entries(app) if tp["session_id"] == "s-6"]
    assert kinds == ["created", "created", "cancelled"]  # the first life, then this one
    assert await live_tp_quantity(app, "s-6", "o-1") == step.qty


async def test_dry_run_never_resends_a_pending_step(settings: Settings, redis: object) -> None:
    """Defect 10: a step left pending is not placed again under DRY_RUN, by any path."""
    app = await App.open(settings)
    dry = await App.open(dataclasses.replace(settings, dry_run=True, tp_pending_settle_ms=0))
    try:
        ts = now_ms()
        await app.redis.xadd(app.keys.stream, fill("s-7", "f-1", "o-1", quantity="0.01", ts=ts))
        await drain_coverage(app)
        pos = await app.book.position("s-7", "o-1", fresh=True)
        assert pos is not None
        [step] = pos.live
        await app.exchange.cancel_order(symbol="BTC/USD", order_id=step.order_id)
        pending = msgspec.structs.replace(step, status=StepStatus.PENDING, order_id="", n=2,
                                      client_id=step.client_id + "-2")  # fmt: skip
        claimed = pos.with_step(pending)
        await app.book.commit("s-7", [claimed])
        orders_before = len(await app.exchange.orders())  # type: ignore[attr-defined]
        outcome = await dry.engine.resolve_pending(claimed)
        assert outcome.result.value == "skipped" and outcome.reason == "dry_run"
        assert len(await app.exchange.orders()) == orders_before  # type: ignore[attr-defined]
        live_step = (await app.book.position("s-7", "o-1", fresh=True)).steps[0]  # type: ignore[union-attr]
        assert (await dry.engine.cancel_step(claimed, live_step)).reason == "dry_run: not cancelled"
    finally:
        await dry.close()
        await app.close()
