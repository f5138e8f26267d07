"""CcxtExchange with the REAL ccxt kraken client against a local Kraken stand-in.

Nothing is mocked between the adapter and the HTTP socket: ccxt signs the requests, the
fake server checks the signatures and answers with Kraken's shapes and error strings.
Backoff sleeps are recorded instead of slept; the breaker runs on an injected clock.
"""

from __future__ import annotations

import asyncio
import base64
import decimal
import logging
from decimal import Decimal

import pytest

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import DUPLICATE_CL_ORD_ID, Fault
from tests.kraken_env import API_KEY, API_SECRET, HANG, MakeExchange, place
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import (
    BadSymbol,
    DuplicateClientId,
    Exchange,
    ExchangeError,
    InsufficientFunds,
    OrderNotFound,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    TransientError,
)

# -- markets -----------------------------------------------------------------------------


async def test_satisfies_the_exchange_protocol(ex: CcxtExchange) -> None:
    assert isinstance(ex, Exchange)
    assert ex.name == "kraken"


@pytest.mark.parametrize(
    ("symbol", "tick", "min_amount"),
    [
        ("BTC/USD", "0.1", "0.00005"),
        ("ETH/USD", "0.01", "0.002"),
        ("SOL/USD", "0.01", "0.02"),
        ("XRP/USD", "0.00001", "2"),
    ],
)
async def test_market_rules_are_parsed_into_decimals(
    ex: CcxtExchange, symbol: str, tick: str, min_amount: str
) -> None:
    market = await ex.market(symbol)
    assert (market.symbol, market.base, market.quote) == (symbol, symbol[:3], "USD")
    assert market.tick == Decimal(tick)
    assert market.lot == Decimal("0.00000001")
    assert market.min_amount == Decimal(min_amount)
    assert market.min_cost == Decimal("0.5")
    assert market.maker_fee == Decimal("0.0025")  # fees_maker[0] = 0.25 %
    for value in (market.tick, market.lot, market.min_amount, market.min_cost, market.maker_fee):
        assert type(value) is Decimal


async def test_markets_load_once_even_when_first_used_concurrently(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    await asyncio.gather(*(ex.market(s) for s in ("BTC/USD", "ETH/USD", "XRP/USD", "BTC/USD")))
    await ex.quote("SOL/USD")
    assert len(kraken.calls("AssetPairs")) == 1
    assert len(kraken.calls("Assets")) == 1


async def test_precision_given_as_decimal_places_is_turned_into_steps(ex: CcxtExchange) -> None:
    # kraken uses TICK_SIZE in this ccxt; other exchanges count digits (DECIMAL_PLACES)
    from ccxt.base.decimal_to_precision import DECIMAL_PLACES

    await ex.market("BTC/USD")
    client = ex._client
    client.precisionMode = DECIMAL_PLACES
    client.markets["ETH/USD"]["precision"] = {"price": 2, "amount": 8}
    market = await ex.market("ETH/USD")
    assert (market.tick, market.lot) == (Decimal("0.01"), Decimal("0.00000001"))


async def test_maker_fee_override(make_exchange: MakeExchange) -> None:
    ex = make_exchange(maker_fee=Decimal("0.0016"))
    assert (await ex.market("BTC/USD")).maker_fee == Decimal("0.0016")


async def test_unknown_symbol_is_bad_symbol(ex: CcxtExchange, kraken: FakeKraken) -> None:
    with pytest.raises(BadSymbol):
        await ex.market("DOGE/EUR")
    with pytest.raises(BadSymbol):
        await place(ex, "c-bad", symbol="DOGE/EUR")
    assert kraken.calls("AddOrder") == []


# -- placing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "price", "amount", "pair", "wire_price", "wire_volume"),
    [
        ("BTC/USD", "64584.9", "0.01", "XXBTZUSD", "64584.9", "0.01"),
        ("XRP/USD", "0.61792", "100", "XXRPZUSD", "0.61792", "100"),
        # rounded by the caller with Decimal.quantize: trailing zeros, no float artefacts
        ("ETH/USD", "3150.30", "0.30000000", "XETHZUSD", "3150.3", "0.3"),
        ("SOL/USD", "145.70", "1.10000000", "SOLUSD", "145.7", "1.1"),
    ],
)
async def test_signed_add_order_carries_exact_fields(
    ex: CcxtExchange,
    kraken: FakeKraken,
    symbol: str,
    price: str,
    amount: str,
    pair: str,
    wire_price: str,
    wire_volume: str,
) -> None:
    order = await place(ex, "tp-42-1", symbol=symbol, amount=amount, price=price)

    (sent,) = kraken.calls("AddOrder")  # signature and nonce were checked by the server
    assert sent.fields["pair"] == pair
    assert sent.fields["type"] == "sell"
    assert sent.fields["ordertype"] == "limit"
    assert "post" in sent.fields["oflags"].split(",")
    assert sent.fields["cl_ord_id"] == "tp-42-1"
    assert sent.fields["price"] == wire_price
    assert sent.fields["volume"] == wire_volume
    assert "userref" not in sent.fields

    (booked,) = kraken.orders.values()
    assert order.id == booked.txid
    assert order.client_id == "tp-42-1"
    assert (order.symbol, order.side, order.status) == (symbol, "sell", OrderStatus.OPEN)
    assert order.price == Decimal(price) and order.amount == Decimal(amount)
    assert order.filled == 0


async def test_without_post_only_no_post_flag_is_sent(ex: CcxtExchange, kraken: FakeKraken) -> None:
    await place(ex, "c-1", post_only=False)
    (sent,) = kraken.calls("AddOrder")
    assert "post" not in sent.fields.get("oflags", "")


@pytest.mark.parametrize(
    ("amount", "price"),
    [("0.123456789", "64584.9"), ("0.01", "64584.95")],
)
async def test_values_off_the_markets_steps_are_refused_before_sending(
    ex: CcxtExchange, kraken: FakeKraken, amount: str, price: str
) -> None:
    # ccxt would silently truncate/round them: the order would not be the one meant
    with pytest.raises(PermanentError, match="multiple of the"):
        await place(ex, "c-1", amount=amount, price=price)
    assert kraken.calls("AddOrder") == []


async def test_decimal_context_is_left_alone(ex: CcxtExchange) -> None:
    before = decimal.getcontext().copy()
    await place(ex, "c-1")
    after = decimal.getcontext()
    assert after.rounding == before.rounding == decimal.ROUND_HALF_EVEN
    assert after.traps == before.traps


async def test_placing_does_not_queue_behind_paced_queries(make_exchange: MakeExchange) -> None:
    # ccxt's own pacing (Kraken: 1 s per cost unit, 3 per private query); orders cost
    # nothing there, they count on the trading counter that the rate budget manages
    ex = make_exchange(ccxt_config={"timeout_on_exit": 0})
    await ex.market("BTC/USD")
    ex._client.throttler.config["tokens"] = -600  # ten minutes of queries still to pace
    order = await asyncio.wait_for(place(ex, "c-unpaced"), 5)
    assert order.status == OrderStatus.OPEN


async def test_5xx_then_success_places_one_order(
    ex: CcxtExchange, kraken: FakeKraken, sleeps: list[float]
) -> None:
    kraken.inject("AddOrder", Fault.http(503))
    order = await place(ex, "c-5xx")

    assert len(kraken.calls("AddOrder")) == 2
    assert [o.txid for o in kraken.orders.values()] == [order.id]
    # before the second try the client id was looked up (and not found)
    lookups = [r for r in kraken.calls("OpenOrders") if r.fields.get("cl_ord_id") == "c-5xx"]
    assert len(lookups) == 1
    assert len(sleeps) == 1


async def test_timeout_after_the_server_accepted_returns_the_existing_order(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    kraken.inject("AddOrder", Fault.accept_then_hang(HANG))
    order = await place(ex, "c-lost-answer")

    assert len(kraken.calls("AddOrder")) == 1  # not placed a second time
    (booked,) = kraken.orders.values()
    assert order.id == booked.txid
    assert order.client_id == "c-lost-answer"
    assert order.status == OrderStatus.OPEN


async def test_timeout_before_the_server_saw_it_places_once(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    kraken.inject("AddOrder", Fault.hang(HANG))
    order = await place(ex, "c-lost-request")
    assert len(kraken.calls("AddOrder")) == 2
    assert [o.txid for o in kraken.orders.values()] == [order.id]


async def test_a_failed_look_up_is_a_failed_try_not_a_blind_re_place(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    ex = make_exchange(max_tries=3)
    kraken.inject("AddOrder", Fault.accept_then_hang(HANG))
    kraken.inject("OpenOrders", Fault.http(503))  # the first look-up fails
    order = await place(ex, "c-blind")

    assert len(kraken.calls("AddOrder")) == 1
    assert [o.txid for o in kraken.orders.values()] == [order.id]


async def test_an_unknown_outcome_is_a_transient_error(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    ex = make_exchange(max_tries=1)
    kraken.inject("AddOrder", Fault.accept_then_hang(HANG))
    with pytest.raises(TransientError, match=r"RequestTimeout \(gave up after 1 try\)"):
        await place(ex, "c-unknown")
    # the caller looks the client id up later, as the Protocol asks
    found = await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c-unknown")
    assert found is not None and found.status == OrderStatus.OPEN


@pytest.mark.parametrize(
    "second_try",
    [None, Fault.kraken_error("EOrder:Insufficient funds")],
    ids=["refused-as-duplicate", "refused-for-funds"],
)
async def test_a_refused_retry_returns_the_order_an_earlier_try_placed(
    ex: CcxtExchange, kraken: FakeKraken, second_try: Fault | None
) -> None:
    # the look-up before the retry does not see the order yet (a lagging read), so the
    # retry is sent and refused (as a duplicate, or because our own order holds the
    # funds): that order is ours, return it
    kraken.inject("AddOrder", Fault.accept_then_hang(HANG))
    if second_try is not None:
        kraken.inject("AddOrder", second_try)
    kraken.inject("OpenOrders", Fault.stale({"open": {}}))
    kraken.inject("ClosedOrders", Fault.stale({"closed": {}, "count": 0}))
    order = await place(ex, "c-lagging")

    assert len(kraken.calls("AddOrder")) == 2
    (booked,) = kraken.orders.values()
    assert order.id == booked.txid


async def test_insufficient_funds_is_not_retried(
    ex: CcxtExchange, kraken: FakeKraken, sleeps: list[float]
) -> None:
    with pytest.raises(InsufficientFunds, match="EOrder:Insufficient funds"):
        await place(ex, "c-big", amount="11")  # the account holds 10 BTC
    kraken.inject("AddOrder", Fault.kraken_error("EOrder:Insufficient funds"))
    with pytest.raises(InsufficientFunds):
        await place(ex, "c-small")
    assert len(kraken.calls("AddOrder")) == 2
    assert kraken.orders == {}
    assert sleeps == []


async def test_rate_limit_is_retried_with_backoff_then_succeeds(
    make_exchange: MakeExchange, kraken: FakeKraken, sleeps: list[float]
) -> None:
    ex = make_exchange(max_tries=3, backoff_base=0.2)
    kraken.inject("AddOrder", *[Fault.kraken_error("EGeneral:Too many requests")] * 2)
    order = await place(ex, "c-rl")

    assert len(kraken.calls("AddOrder")) == 3
    assert [o.txid for o in kraken.orders.values()] == [order.id]
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.2 and 0 <= sleeps[1] <= 0.4  # full jitter, exponential cap


async def test_rate_limit_gives_up_after_max_tries(
    make_exchange: MakeExchange, kraken: FakeKraken, sleeps: list[float]
) -> None:
    ex = make_exchange(max_tries=3)
    kraken.inject("AddOrder", *[Fault.kraken_error("EGeneral:Too many requests")] * 3)
    with pytest.raises(TransientError) as caught:
        await place(ex, "c-rl")

    message = str(caught.value)
    assert "kraken" in message and "place_limit_sell" in message and "c-rl" in message
    assert "EGeneral:Too many requests" in message and "3 tries" in message
    assert "\n" not in message
    assert len(kraken.calls("AddOrder")) == 3
    assert kraken.orders == {}
    assert len(sleeps) == 2


async def test_service_unavailable_on_a_read_is_retried(
    ex: CcxtExchange, make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    await ex.market("BTC/USD")
    kraken.inject("Ticker", Fault.kraken_error("EService:Unavailable"), Fault.http(502))
    quote = await ex.quote("BTC/USD")
    kraken.inject("Ticker", Fault.http(502), Fault.kraken_error("EService:Busy"))
    with pytest.raises(TransientError, match=r"kraken quote BTC/USD: .*EService:Busy"):
        await make_exchange(max_tries=2).quote("BTC/USD")
    assert (quote.bid, quote.ask) == (Decimal("64584.8"), Decimal("64585.0"))
    assert len(kraken.calls("Ticker")) == 5


@pytest.mark.parametrize("price", ["64584.8", "64000.0"])
async def test_post_only_crossing_the_bid_is_rejected(
    ex: CcxtExchange, kraken: FakeKraken, price: str
) -> None:
    with pytest.raises(PostOnlyRejected, match="EOrder:Post only order"):
        await place(ex, "c-cross", price=price)
    assert len(kraken.calls("AddOrder")) == 1
    assert kraken.orders == {}


async def test_duplicate_open_client_id_is_rejected(ex: CcxtExchange, kraken: FakeKraken) -> None:
    first = await place(ex, "c-dup")
    with pytest.raises(DuplicateClientId, match=DUPLICATE_CL_ORD_ID):
        await place(ex, "c-dup", price="64600.0")
    assert len(kraken.orders) == 1

    # Kraken enforces uniqueness among open orders only
    await ex.cancel_order(symbol="BTC/USD", order_id=first.id)
    again = await place(ex, "c-dup", price="64600.0")
    assert again.id != first.id and len(kraken.orders) == 2


# -- cancelling and looking up -----------------------------------------------------------


async def test_cancel_open_order_returns_canceled(ex: CcxtExchange, kraken: FakeKraken) -> None:
    order = await place(ex, "c-1")
    kraken.fill(order.id, "0.004")
    final = await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    assert final.status == OrderStatus.CANCELED
    assert final.filled == Decimal("0.004") and final.remaining == Decimal("0.006")
    assert final.client_id == "c-1"


async def test_cancel_of_a_filled_order_returns_closed(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    order = await place(ex, "c-1")
    kraken.fill(order.id)
    final = await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    assert final.id == order.id
    assert final.status == OrderStatus.CLOSED
    assert final.filled == final.amount == Decimal("0.01")
    assert len(kraken.calls("CancelOrder")) == 1  # "EOrder:Unknown order" is not retried


async def test_cancel_of_an_unknown_order_is_order_not_found(ex: CcxtExchange) -> None:
    with pytest.raises(OrderNotFound):
        await ex.cancel_order(symbol="BTC/USD", order_id="OABCDE-FGHIJ-KLMNOP")


async def test_fetch_order(ex: CcxtExchange, kraken: FakeKraken) -> None:
    order = await place(ex, "c-1", symbol="XRP/USD", amount="100", price="0.61792")
    fetched = await ex.fetch_order(symbol="XRP/USD", order_id=order.id)
    assert fetched is not None
    assert (fetched.id, fetched.client_id, fetched.status) == (order.id, "c-1", OrderStatus.OPEN)
    assert fetched.price == Decimal("0.61792") and fetched.amount == Decimal("100")
    assert fetched.timestamp_ms is not None
    assert await ex.fetch_order(symbol="XRP/USD", order_id="OABCDE-FGHIJ-KLMNOP") is None


async def test_fetch_by_client_id_finds_open_then_closed_orders(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    order = await place(ex, "c-find")
    found = await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c-find")
    assert found is not None and found.id == order.id and found.status == OrderStatus.OPEN

    kraken.fill(order.id)
    found = await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c-find")
    assert found is not None and found.id == order.id and found.status == OrderStatus.CLOSED
    assert found.client_id == "c-find"

    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c-none") is None
    assert kraken.calls("OpenOrders")[-1].fields["cl_ord_id"] == "c-none"
    assert kraken.calls("ClosedOrders")[-1].fields["cl_ord_id"] == "c-none"


async def test_open_orders_quote_and_free_balance(ex: CcxtExchange) -> None:
    assert await ex.free_balance("BTC") == Decimal("10")
    await place(ex, "c-1")
    await place(ex, "c-2", symbol="XRP/USD", amount="100", price="0.61792")

    assert {o.client_id for o in await ex.open_orders()} == {"c-1", "c-2"}
    assert [o.client_id for o in await ex.open_orders("XRP/USD")] == ["c-2"]
    assert await ex.free_balance("BTC") == Decimal("9.99")  # 0.01 held by the open sell
    assert await ex.free_balance("USD") == Decimal("1000000")
    assert await ex.free_balance("DOGE") == Decimal(0)
    quote = await ex.quote("XRP/USD")
    assert (quote.bid, quote.ask) == (Decimal("0.6179"), Decimal("0.61791"))
    await ex.observe_fill(
        fill_id="f",
        order_id="o",
        symbol="XRP/USD",
        side="buy",
        price=Decimal(1),
        quantity=Decimal(1),
    )


# -- secrets ---------------------------------------------------------------------------


async def test_errors_and_logs_never_contain_the_keys(
    make_exchange: MakeExchange, kraken: FakeKraken, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_secret = base64.b64encode(b"not-the-secret-" + bytes(range(49))).decode()
    failures: list[ExchangeError] = []

    bad = make_exchange(api_secret=wrong_secret)
    with pytest.raises(PermanentError) as caught:
        await bad.free_balance("BTC")
    assert "EAPI:Invalid key" in str(caught.value)
    failures.append(caught.value)

    unknown = make_exchange(api_key="someoneELSEkey" + "x" * 42)
    with pytest.raises(PermanentError) as caught:
        await place(unknown, "c-1")
    failures.append(caught.value)

    good = make_exchange(max_tries=2)
    kraken.inject("AddOrder", Fault.http(500), Fault.http(500))
    with pytest.raises(TransientError) as transient:
        await place(good, "c-2")
    failures.append(transient.value)

    for exc in failures:
        text = f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
        for secret in (API_KEY, API_SECRET, wrong_secret, "API-Sign"):
            assert secret not in text
    assert kraken.private_requests  # requests were signed and sent...
    for secret in (API_KEY, API_SECRET, wrong_secret, "API-Sign"):
        assert secret not in caplog.text  # ...and ccxt's DEBUG wire log stayed quiet


async def test_close_releases_the_http_session(make_exchange: MakeExchange) -> None:
    ex = make_exchange()
    await ex.quote("BTC/USD")
    await ex.close()
    with pytest.raises(PermanentError):  # ccxt refuses a closed client
        await ex.quote("ETH/USD")
