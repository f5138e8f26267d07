"""Kraken's error strings as mmops' exception classes (trading.ccxt_errors): Kraken's
documented strings first, then ccxt's own kraken exception table, never substrings of
free text; through the real ccxt client and the stand-in where a reply is involved."""

from __future__ import annotations

import ccxt.async_support as ccxt_async
import pytest

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import RATE_LIMITED, Fault
from tests.kraken_env import MakeExchange, place
from trading.breaker import BreakerState, CircuitBreaker
from trading.ccxt_errors import KRAKEN_ERRORS, ErrorTranslator, UnrecognisedRefusal
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import (
    BadSymbol,
    DuplicateClientId,
    ExchangeError,
    InsufficientFunds,
    OpenOrdersLimit,
    Order,
    OrderNotFound,
    PermanentError,
    PostOnlyRejected,
    RateLimited,
    TransientError,
)


@pytest.fixture
async def translator() -> ErrorTranslator:
    client = ccxt_async.kraken({})  # only its exception table is read: no network
    return ErrorTranslator("kraken", client.exceptions, ())


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("EOrder:Rate limit exceeded", RateLimited),
        ("EAPI:Rate limit exceeded", RateLimited),
        ("EOrder:Orders limit exceeded", OpenOrdersLimit),
        ("EOrder:Post only order", PostOnlyRejected),
        ("EOrder:Insufficient funds", InsufficientFunds),
        ("EOrder:Unknown order", OrderNotFound),
        ("EQuery:Unknown asset pair", BadSymbol),
        ("EService:Unavailable", TransientError),
        ("EService:Deadline elapsed", TransientError),
        ("EGeneral:Too many requests", TransientError),
        ("EAPI:Invalid nonce", TransientError),
        ("EOrder:Order minimum not met", PermanentError),
        # Kraken's ":<extra info>" suffix does not hide the error
        ("EGeneral:Internal error:5d9f1c", TransientError),
        (
            "EOrder:Invalid price:XBTUSD price can only be specified up to 1 decimals.",
            PermanentError,
        ),
        ("EGeneral:Invalid arguments:volume", PermanentError),
        # only in ccxt's own table for kraken
        ("ETrade:User Locked", PermanentError),
        ("EFunding:Unknown asset", BadSymbol),
        ("EFunding:Invalid amount", InsufficientFunds),
        ("EService:Busy", TransientError),
        # ccxt's broad table (substring, as ccxt matches it)
        ("EOrder:Cancel pending", TransientError),
    ],
)
def test_each_string_maps_to_one_class(
    translator: ErrorTranslator, code: str, kind: type[ExchangeError]
) -> None:
    assert translator.kind(code) is kind
    error = translator.from_code("place_limit_sell BTC/USD c-1", code, symbol="BTC/USD")
    assert type(error) is kind
    assert str(error) == f"kraken place_limit_sell BTC/USD c-1: {code}"


def test_unknown_strings_are_not_guessed_from_their_words(translator: ErrorTranslator) -> None:
    # the old adapter took any text containing "duplicate" for a duplicate client id
    assert translator.kind("EGeneral:Invalid arguments:duplicate field") is PermanentError
    error = translator.from_code("place", "EOrder:Duplicate order")
    assert type(error) is UnrecognisedRefusal  # checked by a look-up, not by its text
    assert translator.kind("EOrder:Something Kraken adds next year") is None


def test_the_documented_table_covers_the_issue(translator: ErrorTranslator) -> None:
    for code in (
        "EOrder:Rate limit exceeded",
        "EAPI:Rate limit exceeded",
        "EOrder:Orders limit exceeded",
        "EOrder:Post only order",
        "EOrder:Insufficient funds",
        "EOrder:Unknown order",
    ):
        assert code in KRAKEN_ERRORS


@pytest.mark.parametrize(
    ("code", "kind", "tries"),
    [
        ("EOrder:Orders limit exceeded", OpenOrdersLimit, 1),
        ("EOrder:Post only order", PostOnlyRejected, 1),
        ("EOrder:Insufficient funds", InsufficientFunds, 1),
        ("EOrder:Rate limit exceeded", RateLimited, 1),  # never retried: the budget waits
        ("EService:Unavailable", TransientError, 3),
        ("EGeneral:Internal error", TransientError, 3),
    ],
)
async def test_replies_through_ccxt(
    make_exchange: MakeExchange,
    kraken: FakeKraken,
    code: str,
    kind: type[ExchangeError],
    tries: int,
) -> None:
    ex = make_exchange(max_tries=3)
    kraken.inject("AddOrder", *[Fault.kraken_error(code)] * 3)
    with pytest.raises(kind) as caught:
        await place(ex, "c-err")
    assert code in str(caught.value) and "\n" not in str(caught.value)
    assert len(kraken.calls("AddOrder")) == tries
    assert kraken.orders == {}


async def test_a_rate_limit_reply_names_its_pair_and_keeps_the_breaker_closed(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    told: list[str] = []

    async def on_rate_limited(symbol: str) -> None:
        told.append(symbol)

    breaker = CircuitBreaker(name="kraken", failure_threshold=2)
    ex = make_exchange(breaker=breaker, on_rate_limited=on_rate_limited)
    assert kraken.trader_spend("XRP/USD", 60)  # the trader used up XRP/USD's counter
    for n in range(6):
        with pytest.raises(RateLimited) as caught:
            await place(ex, f"c-x{n}", symbol="XRP/USD", amount="100", price="0.61800")
        assert caught.value.symbol == "XRP/USD"
    assert kraken.replies(RATE_LIMITED) == 6
    assert told == ["XRP/USD"] * 6
    assert breaker.state is BreakerState.CLOSED
    # every other pair is untouched
    order = await place(ex, "c-btc")
    assert isinstance(order, Order)
    # the API counter (EAPI) is the key's, not a pair's: no pair is named
    kraken.inject("AddOrder", Fault.kraken_error("EAPI:Rate limit exceeded"))
    with pytest.raises(RateLimited) as api:
        await place(ex, "c-api")
    assert api.value.symbol is None and told == ["XRP/USD"] * 6


async def test_an_unknown_order_refusal_with_our_open_id_is_a_duplicate(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    await place(ex, "c-twice")
    with pytest.raises(DuplicateClientId, match="an open order carries this client id"):
        await place(ex, "c-twice", price="64700.0")
    # the id was looked up among open orders only: a closed one would not refuse it
    assert kraken.calls("OpenOrders")[-1].fields["cl_ord_id"] == "c-twice"
    assert kraken.calls("ClosedOrders") == []

    kraken.inject("AddOrder", Fault.kraken_error("EOrder:Something new"))
    with pytest.raises(UnrecognisedRefusal, match="EOrder:Something new"):
        await place(ex, "c-new")  # no open order carries c-new: a plain refusal
    assert len(kraken.orders) == 1
