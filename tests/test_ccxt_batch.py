"""CcxtExchange.place_limit_sells through the real ccxt client against the Kraken stand-in:
AddOrderBatch per pair (2-15 orders), chunks beyond 15, AddOrder for a lone order, each
order's own outcome mapped back to its request, and the no-duplicate rules when a
batch's outcome is unknown."""

from __future__ import annotations

from decimal import Decimal

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import RATE_LIMITED, Fault, Limits
from tests.kraken_env import HANG, MakeExchange
from trading.breaker import BreakerState, CircuitBreaker
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import (
    DuplicateClientId,
    ExchangeError,
    InsufficientFunds,
    OpenOrdersLimit,
    Order,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    RateLimited,
    SellRequest,
)


def sell(
    client_id: str, *, symbol: str = "BTC/USD", amount: str = "0.01", price: str = "64600.0"
) -> SellRequest:
    return SellRequest(
        symbol=symbol, amount=Decimal(amount), price=Decimal(price), client_id=client_id
    )


def booked(kraken: FakeKraken) -> dict[str, str]:
    """cl_ord_id -> txid of every order the stand-in holds."""
    return {o.cl_ord_id or "": o.txid for o in kraken.orders.values()}


async def test_a_pairs_orders_go_out_in_one_batch(ex: CcxtExchange, kraken: FakeKraken) -> None:
    requests = [sell(f"b-{n}", price=f"{64600 + n}.0") for n in range(5)]
    requests.insert(2, sell("e-1", symbol="ETH/USD", amount="0.5", price="3200.00"))
    results = await ex.place_limit_sells(requests)

    (batch,) = kraken.calls("AddOrderBatch")
    assert batch.body["pair"] == "XXBTZUSD"
    sent = batch.body["orders"]
    assert [o["cl_ord_id"] for o in sent] == [f"b-{n}" for n in range(5)]
    assert {(o["type"], o["ordertype"], o["volume"]) for o in sent} == {("sell", "limit", "0.01")}
    assert [o["price"] for o in sent] == [f"{64600 + n}" for n in range(5)]
    assert all("post" in o["oflags"].split(",") for o in sent)
    (single,) = kraken.calls("AddOrder")  # a pair's lone order goes out on its own
    assert single.fields["cl_ord_id"] == "e-1"

    ids = booked(kraken)
    assert len(ids) == 6
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, Order)
        assert result.id == ids[request.client_id]
        assert (result.client_id, result.symbol, result.side) == (
            request.client_id,
            request.symbol,
            "sell",
        )
        assert (result.price, result.amount, result.status) == (
            request.price,
            request.amount,
            OrderStatus.OPEN,
        )


async def test_each_order_of_a_batch_has_its_own_outcome(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    await ex.place_limit_sell(
        symbol="BTC/USD", amount=Decimal("0.01"), price=Decimal("64700.0"), client_id="b-open"
    )
    requests = [
        sell("b-ok-1"),
        sell("b-crosses", price="64584.8"),  # at the best bid: post-only refuses it
        sell("b-too-big", amount="20"),  # the account holds 10 BTC
        sell("b-open"),  # an open order already carries this client id
        sell("b-off-tick", price="64600.05"),  # never sent: not a multiple of the tick
        sell("b-ok-2", price="64601.0"),
    ]
    results = await ex.place_limit_sells(requests)

    (batch,) = kraken.calls("AddOrderBatch")
    assert [o["cl_ord_id"] for o in batch.body["orders"]] == [
        "b-ok-1",
        "b-crosses",
        "b-too-big",
        "b-open",
        "b-ok-2",
    ]
    outcome = dict(zip((r.client_id for r in requests), results, strict=True))
    ids = booked(kraken)
    assert isinstance(outcome["b-ok-1"], Order) and outcome["b-ok-1"].id == ids["b-ok-1"]
    assert isinstance(outcome["b-ok-2"], Order) and outcome["b-ok-2"].id == ids["b-ok-2"]
    assert isinstance(outcome["b-crosses"], PostOnlyRejected)
    assert "EOrder:Post only order" in str(outcome["b-crosses"])
    assert isinstance(outcome["b-too-big"], InsufficientFunds)
    assert isinstance(outcome["b-open"], DuplicateClientId)
    assert isinstance(outcome["b-off-tick"], PermanentError)
    assert "multiple of the tick" in str(outcome["b-off-tick"])
    assert set(ids) == {"b-open", "b-ok-1", "b-ok-2"}  # nothing else was booked


async def test_more_than_15_orders_go_out_in_chunks(ex: CcxtExchange, kraken: FakeKraken) -> None:
    requests = [sell(f"c-{n}", price=f"{64600 + n}.0") for n in range(20)]
    results = await ex.place_limit_sells(requests)
    assert [len(c.body["orders"]) for c in kraken.calls("AddOrderBatch")] == [10, 10]
    assert all(isinstance(r, Order) for r in results)
    assert len(booked(kraken)) == 20


async def test_a_validation_error_refuses_the_whole_batch(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    requests = [sell("v-1"), sell("v-2-this-id-is-far-too-long-for-free-text"), sell("v-3")]
    results = await ex.place_limit_sells(requests)
    assert all(isinstance(r, PermanentError) for r in results)
    assert all("EGeneral:Invalid arguments:cl_ord_id" in str(r) for r in results)
    assert kraken.orders == {}
    assert len(kraken.calls("AddOrderBatch")) == 1  # a refusal is not retried


async def test_an_unknown_batch_outcome_is_resolved_per_client_id(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    kraken.inject("AddOrderBatch", Fault.accept_then_hang(HANG))  # placed, answer lost
    requests = [sell(f"u-{n}", price=f"{64600 + n}.0") for n in range(3)]
    results = await ex.place_limit_sells(requests)

    assert len(kraken.calls("AddOrderBatch")) == 1  # nothing was sent twice
    assert kraken.calls("AddOrder") == []
    looked_up = [r.fields["cl_ord_id"] for r in kraken.calls("OpenOrders")]
    assert looked_up == ["u-0", "u-1", "u-2"]
    ids = booked(kraken)
    assert [r.id for r in results if isinstance(r, Order)] == [ids[f"u-{n}"] for n in range(3)]


async def test_a_lost_batch_is_sent_again_and_places_each_order_once(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    kraken.inject("AddOrderBatch", Fault.hang(HANG))  # the request never reached the engine
    results = await ex.place_limit_sells([sell("l-1"), sell("l-2", price="64601.0")])
    assert len(kraken.calls("AddOrderBatch")) == 2
    assert all(isinstance(r, Order) for r in results)
    assert len(booked(kraken)) == 2


async def test_a_refusal_after_an_unknown_try_adopts_the_order_that_try_placed(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    # the batch was placed but its answer lost; the look-up of u-a lags (sees nothing), so
    # u-a alone is sent again and refused: its own earlier order is what it gets
    kraken.inject("AddOrderBatch", Fault.accept_then_hang(HANG))
    kraken.inject("OpenOrders", Fault.stale({"open": {}}))
    kraken.inject("ClosedOrders", Fault.stale({"closed": {}, "count": 0}))
    results = await ex.place_limit_sells([sell("u-a"), sell("u-b", price="64601.0")])

    (again,) = kraken.calls("AddOrder")
    assert again.fields["cl_ord_id"] == "u-a"
    ids = booked(kraken)
    assert len(kraken.orders) == 2
    assert [r.id for r in results if isinstance(r, Order)] == [ids["u-a"], ids["u-b"]]


async def test_rate_limited_orders_in_a_batch_name_their_pair(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    told: list[str] = []

    async def on_rate_limited(symbol: str) -> None:
        told.append(symbol)

    breaker = CircuitBreaker(failure_threshold=1)
    ex = make_exchange(breaker=breaker, on_rate_limited=on_rate_limited)
    assert kraken.trader_spend("BTC/USD", 58)  # the trader left room for two orders
    results = await ex.place_limit_sells([sell(f"r-{n}", price=f"{64600 + n}.0") for n in range(4)])

    assert [type(r) for r in results] == [Order, Order, RateLimited, RateLimited]
    assert all(r.symbol == "BTC/USD" for r in results if isinstance(r, RateLimited))
    assert told == ["BTC/USD", "BTC/USD"]
    assert kraken.replies(RATE_LIMITED) == 2
    assert breaker.state is BreakerState.CLOSED  # one pair's matter, not an outage
    assert len(kraken.calls("AddOrderBatch")) == 1  # not retried: the budget waits instead


async def test_the_open_order_cap_is_its_own_error(ex: CcxtExchange, kraken: FakeKraken) -> None:
    kraken.limits = Limits(threshold=60, decay_per_s=1.0, max_open=3)
    results = await ex.place_limit_sells([sell(f"o-{n}", price=f"{64600 + n}.0") for n in range(5)])
    assert [type(r) for r in results] == [Order, Order, Order, OpenOrdersLimit, OpenOrdersLimit]
    assert "EOrder:Orders limit exceeded" in str(results[-1])


async def test_a_client_id_is_refused_while_its_order_is_open_and_reusable_after(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    first = await ex.place_limit_sells([sell("d-1"), sell("d-2", price="64601.0")])
    assert all(isinstance(r, Order) for r in first)
    again = await ex.place_limit_sells([sell("d-1", price="64700.0"), sell("d-3")])
    assert isinstance(again[0], DuplicateClientId) and isinstance(again[1], Order)

    d1 = first[0]
    assert isinstance(d1, Order)
    kraken.fill(d1.id)  # closed now: Kraken checks uniqueness among open orders only
    later = await ex.place_limit_sells([sell("d-1", price="64700.0"), sell("d-4")])
    assert all(isinstance(r, Order) for r in later)
    reused = later[0]
    assert isinstance(reused, Order) and reused.id != d1.id
    assert sorted(o.cl_ord_id or "" for o in kraken.orders.values()) == [
        "d-1",
        "d-1",
        "d-2",
        "d-3",
        "d-4",
    ]


async def test_outcomes_keep_the_order_of_the_requests_across_pairs(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    requests = [
        sell("x-1", symbol="XRP/USD", amount="100", price="0.62000"),
        sell("x-2", symbol="SOL/USD", amount="1", price="150.00"),
        sell("x-3", symbol="XRP/USD", amount="100", price="0.62001"),
        sell("x-4", symbol="DOGE/EUR"),
    ]
    results: list[Order | ExchangeError] = await ex.place_limit_sells(requests)
    assert [getattr(r, "client_id", None) for r in results[:3]] == ["x-1", "x-2", "x-3"]
    assert isinstance(results[3], PermanentError) and "DOGE/EUR" in str(results[3])
