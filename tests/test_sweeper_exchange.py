"""The sweeper and the exchange: reconciliation with its book, and the exchange down.
Fixtures and helpers: tests/test_sweeper.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from tests.cluster import ON_BOTH
from tests.helpers import drain_coverage, fill, orders_per_client_id
from tests.test_sweeper import (
    PAIRS,
    Counting,
    D,
    alerts_of,
    app,  # noqa: F401 - a fixture
    clock,  # noqa: F401 - a fixture
    paper,
    seed_uncovered,
    sweeper,  # noqa: F401 - a fixture
    uncovered,
    xadd_fills,
)
from trading.client_ids import client_id
from trading.exchange import CircuitOpen
from workers.sweep_pass import SweepStatus
from workers.sweeper import Sweeper

pytestmark = [
    ON_BOTH,
    pytest.mark.postgres,
]  # single Redis and the local cluster; the sweeper reads PostgreSQL


# --- reconciliation ------------------------------------------------------------------
async def test_reconciliation_with_the_exchange(app: App, sweeper: Sweeper) -> None:
    await xadd_fills(app, "s-r", per_pair=1)
    await drain_coverage(app)
    ex = paper(app)
    by_symbol = {o.symbol: o for o in await ex.open_orders()}
    await ex.cancel_order(symbol="BTC/USD", order_id=by_symbol["BTC/USD"].id)  # cancelled by hand
    await ex.fill_order(by_symbol["ETH/USD"].id)  # filled, no fill event yet
    vanished = by_symbol["SOL/USD"]  # the exchange forgot it
    await app.redis.hdel(app.keys.paper("orders"), vanished.id)
    await app.redis.hdel(app.keys.paper("open_clients"), vanished.client_id or "")
    await app.redis.hincrby(app.keys.paper("locked"), "SOL", -100_000_000)  # and released its funds
    await app.redis.hincrby(app.keys.paper("free"), "SOL", 100_000_000)
    await ex.observe_fill(
        fill_id="f-x",
        order_id="o-x",
        symbol="XRP/USD",
        side="buy",
        price=D("0.6"),
        quantity=D("10"),
    )
    stranger = await ex.place_limit_sell(  # our prefix, but no position knows it
        symbol="XRP/USD", amount=D("10"), price=D("0.9"), client_id=client_id("elsewhere", "o-x", 1)
    )

    report = await sweeper.run_once()

    [session] = report.sessions
    assert (session.reconciled, session.filled_unreported, session.covered) == (2, 1, 2)
    assert session.uncovered_after == 0 and report.ok
    assert report.unknown_orders == [stranger.id]
    position = await app.book.position("s-r", "o-1-0", fresh=True)
    assert position is not None and [s.status for s in position.steps] == ["filled"]
    for pid in ("o-0-0", "o-2-0"):
        position = await app.book.position("s-r", pid, fresh=True)
        assert position is not None and [s.status for s in position.steps] == ["cancelled", "live"]
    alerts = await alerts_of(app, "unknown_order")
    assert [a["order_id"] for a in alerts] == [stranger.id]
    await sweeper.run_once()
    assert len(await alerts_of(app, "unknown_order")) == 1  # reported once


async def test_the_book_is_read_as_changes_and_deferred_sessions_keep_theirs(
    app: App,
    settings: Settings,
    clock: ManualClock,
) -> None:
    """After the first pass only the orders changed since are read; a TP cancelled on the
    exchange whose session the pass could not sweep (SETTLEMENT_MAX_SESSIONS) is carried
    to the next pass, not lost with the cursor."""
    capped = await App.open(dataclasses.replace(settings, settlement_max_sessions=1), clock=clock)
    for sid in ("s-a", "s-b"):
        await app.redis.xadd(app.keys.stream, fill(sid, "f-1", "o-1", ts=clock.ms))
    await drain_coverage(app)
    sweeper = await Sweeper.create(capped)
    try:
        first = await sweeper.run_once()
        assert first.book == "whole" and first.with_work == 0
        for order in await paper(app).open_orders():  # both TPs cancelled by hand
            await paper(app).cancel_order(symbol=order.symbol, order_id=order.id)
        second = await sweeper.run_once()
        assert second.book == "2 changes" and (second.with_work, second.swept) == (2, 1)
        [done] = [r for r in second.sessions if r.reconciled]
        carried = orjson.loads(await app.redis.hget(app.keys.sweeper_state, "book_carried"))
        assert len(carried) == 1 and done.session_id == "s-a"
        third = await sweeper.run_once()  # its changes: s-a's new TP; s-b's by the carry
        assert [(r.session_id, r.reconciled, r.covered) for r in third.sessions if r.covered] == [
            ("s-b", 1, 1)
        ]
        assert await app.redis.hget(app.keys.sweeper_state, "book_carried") == b"[]"
        assert await uncovered(app, "s-a") == {} and await uncovered(app, "s-b") == {}
        await app.redis.set(app.keys.paper("changes_floor"), 10**9)  # the log was trimmed
        assert (await sweeper.run_once()).book == "whole"
    finally:
        await sweeper.close()
        await capped.close()
    assert len(await paper(app).open_orders()) == 2


# --- exchange down -------------------------------------------------------------------
class Down(Counting):
    """An exchange whose circuit breaker is open: every call fails fast with CircuitOpen."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "observe_fill" or not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            raise CircuitOpen("exchange: circuit open, next trial in 30.0 s")

        return call


async def test_exchange_down_leaves_positions_uncovered_and_reported_then_covers_them(
    app: App,
    settings: Settings,
    clock: ManualClock,
) -> None:
    for n, (symbol, price, qty) in enumerate(PAIRS * 2):  # fills recorded, TPs never placed
        await paper(app).set_price(symbol, D(price))
        await seed_uncovered(app, "s-down", f"o-{n}", symbol=symbol, price=price, qty=qty)
    down = await App.open(settings, clock=clock, exchange=Down(paper(app)))  # type: ignore[arg-type]
    sweeper = await Sweeper.create(down)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
        await down.close()
    [session] = report.sessions
    assert (session.positions, session.uncovered_before, session.uncovered_after) == (20, 20, 20)
    assert session.status == SweepStatus.FAILED and session.error_count == 20
    assert "circuit open" in session.errors[0]
    assert report.open_orders is None and any("open orders unavailable" in n for n in report.notes)
    assert await app.redis.get(app.keys.settlement_status("s-down")) == b"FAILED"
    assert await paper(app).orders() == []

    back = await Sweeper.create(app)
    try:
        report = await back.run_once()
    finally:
        await back.close()
    [session] = report.sessions
    assert (session.uncovered_before, session.covered, session.uncovered_after) == (20, 20, 0)
    assert await app.redis.get(app.keys.settlement_status("s-down")) == b"COMPLETED"
    assert len(await orders_per_client_id(app)) == 20
