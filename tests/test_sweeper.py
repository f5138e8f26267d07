"""The sweeper against real Redis, PostgreSQL and the paper exchange."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from tests.cluster import ON_BOTH
from tests.conftest import MakeApp
from tests.helpers import drain_coverage, fill, now_ms, orders_per_client_id, takeprofit_entries
from trading.paper import PaperExchange
from trading.positions import Buy, Close, encode_position, new_position
from workers.sweep_pass import SessionSweep, SweepStatus
from workers.sweeper import Sweeper

pytestmark = [
    ON_BOTH,
    pytest.mark.postgres,
]  # single Redis and the local cluster; the sweeper reads PostgreSQL

D = Decimal
HOUR = 3_600_000
PAIRS = [  # symbol, price, quantity: every one above Kraken's minimum order
    ("BTC/USD", "64000.5", "0.01"),
    ("ETH/USD", "3000.25", "0.1"),
    ("SOL/USD", "150.5", "1"),
    ("XRP/USD", "0.6", "50"),
    ("ADA/USD", "0.45", "100"),
    ("DOGE/USD", "0.15", "500"),
    ("DOT/USD", "7.1", "5"),
    ("LINK/USD", "15.2", "2"),
    ("LTC/USD", "80.3", "1"),
    ("AVAX/USD", "35.4", "2"),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(now_ms())


@pytest.fixture
async def app(make_app: MakeApp, clock: ManualClock) -> App:
    return await make_app(clock=clock)


@pytest.fixture
async def sweeper(app: App) -> AsyncIterator[Sweeper]:
    sweeper = await Sweeper.create(app)
    yield sweeper
    await sweeper.close()


def paper(app: App) -> PaperExchange:
    assert isinstance(app.exchange, PaperExchange)
    return app.exchange


async def xadd_fills(app: App, sid: str, per_pair: int, *, ts: int | None = None) -> None:
    for i in range(per_pair):
        for n, (symbol, price, qty) in enumerate(PAIRS):
            await app.redis.xadd(
                app.keys.stream,
                fill(
                    sid,
                    f"f-{n}-{i}",
                    f"o-{n}-{i}",
                    symbol=symbol,
                    price=price,
                    quantity=qty,
                    fee="0.1",
                    ts=ts,
                ),
            )


async def uncovered(app: App, sid: str) -> dict[str, Decimal]:
    positions = await app.book.positions(sid)
    return {pid: p.uncovered for pid, p in positions.items() if p.uncovered > 0}


# --- coverage ------------------------------------------------------------------------
async def test_one_sweep_covers_200_fills_and_the_worker_places_no_second_order(
    app: App, sweeper: Sweeper
) -> None:
    await xadd_fills(
        app, "s-1", per_pair=20
    )  # 200 buy fills over 10 pairs, no coverage consumer alive

    report = await sweeper.run_once()

    assert report.stream.taken_over == {"coverage": 200}
    assert report.ok, report.errors
    [session] = report.sessions
    assert (session.pairs, session.positions, session.uncovered_after) == (10, 200, 0)
    assert await uncovered(app, "s-1") == {}
    orders = await orders_per_client_id(app)
    assert len(orders) == 200 and max(orders.values()) == 1
    assert await app.redis.xpending(app.keys.stream, "coverage") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }

    # the coverage worker comes back and replays the whole stream: nothing new is placed
    await app.redis.xgroup_setid(app.keys.stream, "coverage", "0")
    stats = await drain_coverage(app)
    assert stats.processed == 200
    assert await orders_per_client_id(app) == orders
    again = await sweeper.run_once()
    assert again.total("covered") == 0 and again.stream.taken_over == {}
    assert len(await takeprofit_entries(app, "created")) == 200


async def test_a_pass_over_covered_positions_asks_the_exchange_once(
    app: App, settings: Settings
) -> None:
    await xadd_fills(app, "s-1", per_pair=2)
    await drain_coverage(app)
    counting = Counting(paper(app))
    counted = await App.open(settings, clock=app.clock, exchange=counting)
    sweeper = await Sweeper.create(counted)
    try:
        report = await sweeper.run_once()  # the first pass reads the whole book
        assert report.sessions[0].positions == 20 and report.open_orders == 20
        assert report.book == "whole" and counting.calls == Counter({"order_changes": 1})
        again = await sweeper.run_once()  # then only what changed since
        assert counting.calls == Counter({"order_changes": 2}) and again.book == "0 changes"
    finally:
        await sweeper.close()
        await counted.close()


async def test_status_metrics_and_session_log(app: App, settings: Settings, tmp_path: Path) -> None:
    await xadd_fills(app, "s-log", per_pair=1)
    logged = await App.open(
        dataclasses.replace(settings, session_log_dir=str(tmp_path)), clock=app.clock
    )
    sweeper = await Sweeper.create(logged)
    try:
        await sweeper.run_once()  # takes the fills over: coverage placed them
        await paper(app).cancel_order(
            symbol="BTC/USD", order_id=(await paper(app).open_orders("BTC/USD"))[0].id
        )
        report = await sweeper.run_once()  # reconciles the cancelled TP and covers it again
    finally:
        await sweeper.close()
        await logged.close()
    [session] = report.sessions
    assert (session.reconciled, session.covered, session.uncovered_after) == (1, 1, 0)
    keys = app.keys
    assert await app.redis.get(keys.settlement_status("s-log")) == b"COMPLETED"
    assert (await app.redis.get(keys.settlement_last_run("s-log"))).decode().endswith("Z")
    metrics = await app.redis.hgetall(keys.metrics_settlement("s-log"))
    assert (
        metrics[b"uncovered"] == b"0" and metrics[b"covered"] == b"1" and b"duration_ms" in metrics
    )
    assert await app.redis.exists(keys.settlement_lock("s-log")) == 0
    lines = (tmp_path / "s-log" / "settlement.log").read_text().splitlines()
    assert any(
        " reconciled BTC/USD o-0-0 " in line and line.endswith(": cancelled") for line in lines
    )
    assert any(" covered BTC/USD o-0-0 step 2 " in line for line in lines)
    assert (
        lines[-1]
        .split(" ", 1)[1]
        .startswith("sweep COMPLETED: positions 10, uncovered 0 -> 0, covered 1")
    )


async def test_a_locked_session_is_left_alone(app: App, sweeper: Sweeper) -> None:
    await seed_uncovered(app, "s-locked", "o-1")
    await app.redis.set(app.keys.settlement_lock("s-locked"), "someone-else", ex=300)
    report = await sweeper.run_once()
    [session] = report.sessions
    assert session.status == SweepStatus.LOCKED and session.uncovered_after == 1
    assert await paper(app).orders() == []
    assert await app.redis.get(app.keys.settlement_lock("s-locked")) == b"someone-else"


async def test_one_broken_pair_does_not_stop_the_others(app: App, sweeper: Sweeper) -> None:
    await seed_uncovered(app, "s-mixed", "o-bad", symbol="NOT-A-SYMBOL")
    for n, (symbol, price, qty) in enumerate(PAIRS[:3]):
        await paper(app).set_price(symbol, D(price))
        await seed_uncovered(app, "s-mixed", f"o-{n}", symbol=symbol, price=price, qty=qty)
    report = await sweeper.run_once()
    [session] = report.sessions
    assert session.status == SweepStatus.FAILED
    assert session.covered == 3 and session.uncovered_after == 1
    assert session.error_count == 1 and session.errors[0].startswith("NOT-A-SYMBOL o-bad: ")
    assert await app.redis.get(app.keys.settlement_status("s-mixed")) == b"FAILED"


# --- aging ---------------------------------------------------------------------------
async def test_aging_reprices_exactly_once_per_tier_crossing(
    app: App, sweeper: Sweeper, clock: ManualClock
) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-age", "f-1", "o-1", ts=clock.ms))
    await drain_coverage(app)
    tiers = []
    for hours in (0.5, 1, 1.5, 4, 11.9, 12, 30):
        clock.ms = (await app.book.position("s-age", "o-1", fresh=True)).opened_at + int(
            hours * HOUR
        )  # type: ignore[union-attr]
        await sweeper.run_once()
        await sweeper.run_once()  # a second pass at the same age changes nothing
        position = await app.book.position("s-age", "o-1", fresh=True)
        assert position is not None and position.uncovered == 0
        [live] = position.live
        tiers.append(live.tier)
    assert tiers == [0, 1, 1, 2, 2, 3, 3]
    cancelled = await takeprofit_entries(app, "cancelled")
    replacements = [e for e in await takeprofit_entries(app, "created") if e.get("replaces")]
    assert len(cancelled) == 3 and len(replacements) == 3
    assert [e["replaces"] for e in replacements] == [e["order_id"] for e in cancelled]
    assert [e["tier"] for e in replacements] == ["1", "2", "3"]
    assert len(await paper(app).open_orders()) == 1
    assert max((await orders_per_client_id(app)).values()) == 1


async def test_a_tp_found_filled_when_repricing_is_recorded_not_replaced(
    app: App, clock: ManualClock
) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-f", "f-1", "o-1", ts=clock.ms))
    await drain_coverage(app)
    [order] = await paper(app).open_orders()
    await paper(app).fill_order(order.id)  # filled on the exchange; its fill event is not in yet
    clock.advance(hours=1)
    sweep = SessionSweep(app)
    report = await sweep.run("s-f", None)  # no open book: the cancel is what finds it filled
    assert (report.filled_unreported, report.repriced, report.covered) == (1, 0, 0)
    position = await app.book.position("s-f", "o-1", fresh=True)
    assert position is not None and [s.status for s in position.steps] == ["filled"]
    assert await takeprofit_entries(app, "cancelled") == []
    assert len(await paper(app).orders()) == 1


# --- over-covered positions (issue 10 #2, the sweeper's part) ----------------------------
async def test_a_tp_offering_more_than_is_held_is_trimmed(app: App, sweeper: Sweeper) -> None:
    """A FIFO sell closed 0.006 of a 0.01 position and the coverage worker died before its
    own trim: its live TP still offers 0.01. The sweeper cancels it and covers the 0.004."""
    await app.redis.xadd(app.keys.stream, fill("s-trim", "f-1", "o-1"))
    await drain_coverage(app)
    pos = await app.book.position("s-trim", "o-1", fresh=True)
    assert pos is not None and [s.qty for s in pos.live] == [D("0.01")]
    closed = pos.with_close(Close("f-sell", D("0.006"), D("64100"), D("0.1"), app.clock.now_ms()))
    await app.redis.hset(app.keys.positions("s-trim"), "o-1", encode_position(closed))
    assert closed.over_covered == D("0.006")

    report = await sweeper.run_once()

    [session] = report.sessions
    assert (session.trimmed, session.covered) == (1, 1) and report.ok
    after = await app.book.position("s-trim", "o-1", fresh=True)
    assert after is not None and after.over_covered == 0 and after.uncovered == 0
    assert [(s.status, s.qty) for s in after.steps] == [
        ("cancelled", D("0.01")),
        ("live", D("0.004")),
    ]
    [open_order] = await paper(app).open_orders()
    assert open_order.amount == D("0.004")
    [cancelled] = await takeprofit_entries(app, "cancelled")
    assert cancelled["reason"] == "closed by another sell"
    again = await sweeper.run_once()
    assert again.total("trimmed") == 0 and again.with_work == 0


# --- exchange down -------------------------------------------------------------------
class Counting:
    """The paper exchange, counting the calls that reach it (observe_fill is the simulator's)."""

    def __init__(self, inner: PaperExchange) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "observe_fill" or not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return call


# --- stream care ---------------------------------------------------------------------
async def test_stuck_entries_dead_consumers_and_dead_letters(
    app: App, settings: Settings, clock: ManualClock
) -> None:
    fast = await App.open(dataclasses.replace(settings, reclaim_idle_ms=100), clock=clock)
    sweeper = await Sweeper.create(fast)
    try:
        await app.redis.xadd(app.keys.dead, {"error": "an old one"})
        await xadd_fills(app, "s-stuck", per_pair=1)
        await app.redis.xgroup_create(app.keys.stream, "coverage", id="0")
        # a consumer read everything and died before acking
        await app.redis.xreadgroup("coverage", "died", {app.keys.stream: ">"}, count=100)
        await asyncio.sleep(0.15)
        report = await sweeper.run_once()
        assert report.stream.taken_over == {"coverage": 10}
        assert report.sessions[0].uncovered_after == 0
        assert report.stream.dead_growth == 0  # the first pass only records the length
        assert (await app.redis.xpending(app.keys.stream, "coverage"))["pending"] == 0

        await app.redis.xadd(app.keys.dead, {"error": "a new one"})
        await asyncio.sleep(1.05)  # 10 x RECLAIM_IDLE_MS with nothing pending: forgotten
        report = await sweeper.run_once()
        assert report.stream.removed_consumers == ["coverage/died"]
        assert report.stream.dead_growth == 1
        consumers = await app.redis.xinfo_consumers(app.keys.stream, "coverage")
        assert consumers == []
        [alert] = await alerts_of(app, "dead_letters")
        assert alert["new"] == "1"
    finally:
        await sweeper.close()
        await fast.close()


async def test_a_live_coverage_consumer_is_left_to_do_its_job(app: App, sweeper: Sweeper) -> None:
    await app.redis.zadd(app.keys.heartbeats("coverage"), {"c1": now_ms()})
    await xadd_fills(app, "s-live", per_pair=1)
    report = await sweeper.run_once()
    assert report.stream.taken_over == {} and report.stream.live["coverage"] == 1
    assert await paper(app).orders() == []


# --- helpers -------------------------------------------------------------------------
async def seed_uncovered(
    app: App,
    sid: str,
    pid: str,
    *,
    symbol: str = "BTC/USD",
    price: str = "64000.5",
    qty: str = "0.01",
    index: bool = True,
) -> None:
    """A recorded buy whose TP was never placed (as if the coverage worker died in between)."""
    ts = app.clock.now_ms()
    position = new_position(session_id=sid, position_id=pid, symbol=symbol, opened_at=ts).with_buy(
        Buy(f"f-{pid}", D(price), D(qty), D("0.1"), ts)
    )
    await app.redis.hset(app.keys.positions(sid), pid, encode_position(position))
    if index:
        await app.redis.zadd(app.keys.sessions, {sid: ts})
    if "/" in symbol:
        await paper(app).observe_fill(
            fill_id=f"f-{sid}-{pid}",
            order_id=pid,
            symbol=symbol,
            side="buy",
            price=D(price),
            quantity=D(qty),
        )


async def alerts_of(app: App, kind: str) -> list[dict[str, str]]:
    rows = await app.redis.xrange(app.keys.alerts)
    out = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
    return [a for a in out if a["kind"] == kind]


async def test_each_pass_trims_the_stream_to_its_retention_but_never_unprocessed_entries(
    settings: Settings, redis: object, clock: ManualClock
) -> None:
    import dataclasses

    from tests.helpers import drain_coverage

    app = await App.open(
        dataclasses.replace(settings, stream_retention_hours=Decimal("0.5")), clock=clock
    )
    sweeper = await Sweeper.create(app)
    try:
        await xadd_fills(app, "s-old", 30)  # 300 entries
        await app.redis.xgroup_create(app.keys.stream, "migrator", id="0")  # has read none of them
        await drain_coverage(app)  # the coverage group acked them all
        clock.advance(hours=1)
        report = await sweeper.run_once()
        assert not report.errors
        assert await app.redis.xlen(app.keys.stream) == 300  # the migrator group still needs them

        await app.redis.xgroup_setid(app.keys.stream, "migrator", "$")  # now it is up to date
        report = await sweeper.run_once()
        assert any(note.startswith("retention: trimmed") for note in report.notes)
        assert await app.redis.xlen(app.keys.stream) < 300
    finally:
        await sweeper.close()
        await app.close()
