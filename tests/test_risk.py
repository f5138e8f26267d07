"""The portfolio's daily loss limit: risk:halt, alerts, the UTC day, emergency exits."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from tests.conftest import MakeApp
from tests.helpers import drain_coverage, fill, orders_per_client_id, takeprofit_entries
from trading.client_ids import client_id
from trading.exchange import Quote
from trading.paper import PaperExchange
from trading.positions import Buy, Close, Step, new_position
from workers.risk import EXIT_REASON, daily_pnl, day_bounds
from workers.session_view import SessionView, figures_of
from workers.sweeper import Sweeper

D = Decimal
NOON = int(datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
HOUR = 3_600_000


def test_daily_pnl_counts_todays_sells_and_the_open_quantity_at_the_bid() -> None:
    start, end = day_bounds(NOON)
    assert (start, end) == (NOON - DAY // 2, NOON + DAY // 2)
    pos = new_position(session_id="s", position_id="o-1", symbol="BTC/USD", opened_at=start - 1000)
    pos = pos.with_buy(Buy("f-1", D("100"), D("4"), D("4"), start - 1000))  # unit cost 101
    pos = pos.with_close(Close("f-2", D("1"), D("90"), D("1"), start - 1))  # yesterday: not counted
    pos = pos.with_close(Close("f-3", D("1"), D("111"), D("1"), start))  # today: +9
    pos = pos.with_step(
        Step(
            n=1,
            client_id="c",
            qty=D("2"),
            price=D("120"),
            tier=0,
            status="live",
            claimed_at=start,
            order_id="O-1",
            fills=(Close("f-4", D("1"), D("120"), D("2"), end - 1),),  # today: +17
        )
    )
    other = new_position(session_id="s", position_id="o-2", symbol="ETH/USD", opened_at=start)
    other = other.with_buy(Buy("f-5", D("10"), D("1"), D("0"), start))
    view = SessionView([HOUR, 4 * HOUR, 12 * HOUR])
    view.put("o-1", figures_of(pos))
    view.put("o-2", figures_of(other))
    realized, unrealized = daily_pnl([view], {"BTC/USD": D("95")}, NOON)
    assert realized == D("26")
    assert unrealized == D("1") * (D("95") - D("101"))  # ETH/USD has no bid: left out
    assert daily_pnl([view], {}, end) == (0, 0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


async def open_app(settings: Settings, clock: ManualClock, **changes: object) -> App:
    return await App.open(dataclasses.replace(settings, **changes), clock=clock)  # type: ignore[arg-type]


@pytest.fixture
async def app(make_app: MakeApp, clock: ManualClock) -> App:
    return await make_app(clock=clock, portfolio_daily_loss_limit=D("500"))


async def buy_btc(app: App, sid: str = "s-1", pid: str = "o-1") -> None:
    """1 BTC at 64000 with a 16 USD fee (unit cost 64016), covered by its TP."""
    await app.redis.xadd(
        app.keys.stream,
        fill(sid, f"f-{pid}", pid, price="64000", quantity="1", fee="16", ts=app.clock.now_ms()),
    )
    await drain_coverage(app)


async def alerts(app: App, kind: str) -> list[dict[str, str]]:
    rows = await app.redis.xrange(app.keys.alerts)
    out = [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows]
    return [a for a in out if a["kind"] == kind]


def paper(app: App) -> PaperExchange:
    assert isinstance(app.exchange, PaperExchange)
    return app.exchange


@pytest.mark.postgres  # the sweeper reads recent sessions from PostgreSQL
async def test_a_price_drop_sets_the_halt_and_the_next_utc_day_clears_it(
    app: App, clock: ManualClock
) -> None:
    await buy_btc(app)
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
        assert report.risk is not None and not report.risk.halted
        assert await app.redis.exists(app.keys.risk_halt) == 0

        # last 63000 (bid 62993.7): valued at the last price (contract §3), -1016 unrealized
        await paper(app).set_price("BTC/USD", D("63000"))
        report = await sweeper.run_once()
        risk = report.risk
        assert risk is not None and risk.halted and risk.set_now and risk.at_bid == []
        assert (risk.realized, risk.unrealized) == (D("0"), D("63000") - D("64016"))
        halt = orjson.loads(await app.redis.get(app.keys.risk_halt))
        assert halt == {
            "day": "2026-11-21",
            "realized": "0",
            "unrealized": "-1016",
            "total": "-1016",
            "limit": "500",
            "set_at": "2026-11-21T12:00:00.000Z",
        }
        [alert] = await alerts(app, "stop_loss")
        assert (
            alert["total"] == "-1016" and alert["limit"] == "500" and "breached" in alert["message"]
        )
        daily = await app.redis.hgetall(app.keys.daily_pnl)
        assert daily[b"total"] == b"-1016" and daily[b"day"] == b"2026-11-21"

        clock.advance(hours=1)
        await sweeper.run_once()  # still breached the same day: one halt, one alert
        assert len(await alerts(app, "stop_loss")) == 1
        assert (
            orjson.loads(await app.redis.get(app.keys.risk_halt))["set_at"]
            == "2026-11-21T12:00:00.000Z"
        )

        clock.ms = NOON + DAY // 2 + 1000  # 00:00:01 UTC the next day, the price recovered
        await paper(app).set_price("BTC/USD", D("64100"))
        report = await sweeper.run_once()
        assert report.risk is not None and report.risk.cleared and not report.risk.halted
        assert await app.redis.exists(app.keys.risk_halt) == 0
        assert await paper(app).open_orders()  # no exit without EMERGENCY_EXIT
    finally:
        await sweeper.close()


@pytest.mark.postgres
async def test_emergency_exit_cancels_the_tps_and_sells_at_the_bid_once(
    settings: Settings, redis: object, clock: ManualClock
) -> None:
    app = await open_app(settings, clock, portfolio_daily_loss_limit=D("500"), emergency_exit=True)
    sweeper = await Sweeper.create(app)
    try:
        await buy_btc(app, pid="o-1")
        await buy_btc(app, pid="o-2")
        [tp1, tp2] = await paper(app).open_orders()
        await paper(app).set_price("BTC/USD", D("63000"))
        report = await sweeper.run_once()
        assert report.risk is not None and (report.risk.exits, report.risk.cancelled) == (2, 2)

        orders = {o.client_id: o for o in await paper(app).orders()}
        for pid in ("o-1", "o-2"):
            exit_order = orders[client_id("s-1", pid, 2)]
            assert (
                exit_order.price == D("62993.7")
                and exit_order.amount == D("1")
                and exit_order.status == "open"
            )
        assert {orders[tp1.client_id].status, orders[tp2.client_id].status} == {"canceled"}  # type: ignore[index]
        position = await app.book.position("s-1", "o-1", fresh=True)
        assert position is not None and position.uncovered == 0
        assert [(s.status, s.reason) for s in position.steps] == [
            ("cancelled", ""),
            ("live", EXIT_REASON),
        ]
        assert len(await takeprofit_entries(app, "cancelled")) == 2

        clock.advance(hours=13)  # aged into the last tier: the exit is not repriced
        report = await sweeper.run_once()
        assert report.risk is not None and report.risk.exits == 0 and report.total("repriced") == 0
        counts = await orders_per_client_id(app)
        assert len(counts) == 4 and max(counts.values()) == 1
    finally:
        await sweeper.close()
        await app.close()


@pytest.mark.postgres
async def test_without_a_limit_nothing_is_computed_but_an_old_halt_is_cleared(
    settings: Settings, redis: object, clock: ManualClock
) -> None:
    app = await open_app(settings, clock)
    sweeper = await Sweeper.create(app)
    try:
        await app.redis.set(
            app.keys.risk_halt, orjson.dumps({"day": "2026-11-20", "total": "-900"})
        )
        report = await sweeper.run_once()
        assert report.risk is not None and report.risk.cleared and report.risk.limit is None
        assert await app.redis.exists(app.keys.risk_halt) == 0
        assert await app.redis.exists(app.keys.daily_pnl) == 0

        await app.redis.set(app.keys.risk_halt, "set by hand")  # not ours to clear
        await sweeper.run_once()
        assert await app.redis.get(app.keys.risk_halt) == b"set by hand"
    finally:
        await sweeper.close()
        await app.close()


class NoLastPrice:
    """An exchange whose ticker has no last trade price: bid and ask only."""

    def __init__(self, inner: PaperExchange) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def quote(self, symbol: str) -> Quote:
        quote = await self.inner.quote(symbol)
        return Quote(bid=quote.bid, ask=quote.ask)


async def test_without_a_last_price_a_pair_is_valued_at_the_bid_and_the_report_says_so(
    app: App, settings: Settings, clock: ManualClock
) -> None:
    await buy_btc(app)
    await paper(app).set_price("BTC/USD", D("63000"))  # last 63000, bid 62993.7
    bare = await App.open(
        dataclasses.replace(settings, portfolio_daily_loss_limit=D("5000")),
        clock=clock,
        exchange=NoLastPrice(paper(app)),  # type: ignore[arg-type]
    )
    sweeper = await Sweeper.create(bare)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
        await bare.close()
    assert report.risk is not None and report.risk.at_bid == ["BTC/USD"]
    assert report.risk.unrealized == D("62993.7") - D("64016")
