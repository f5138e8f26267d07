"""The paper exchange against the real Redis: rules, balances, orders and races."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from storage.keys import Keys
from tests.conftest import second_connection
from trading.exchange import (
    BadSymbol,
    DuplicateClientId,
    Exchange,
    InsufficientFunds,
    Order,
    OrderNotFound,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    TransientError,
)
from trading.paper import PaperExchange

D = Decimal
NOW = 1_700_000_000_000
START = {"USD": D("10000"), "BTC": D("1")}


def make(
    redis: aioredis.Redis,
    keys: Keys,
    *,
    starting_balances: dict[str, Decimal] = START,
    half_spread: Decimal = Decimal("0.0001"),
) -> PaperExchange:
    return PaperExchange(
        redis=redis,
        keys=keys,
        starting_balances=starting_balances,
        half_spread=half_spread,
        clock_ms=lambda: NOW,
    )


@pytest.fixture
def redis(redis_or_fake: aioredis.Redis) -> aioredis.Redis:
    """Every test here runs on fakeredis (the unit layer) and on the test Redis."""
    return redis_or_fake


@pytest.fixture
def keys(names: tuple[str, str]) -> Keys:
    return Keys(names[0])


@pytest.fixture
def ex(redis: aioredis.Redis, keys: Keys) -> PaperExchange:
    return make(redis, keys)


@pytest.fixture
async def other_client(redis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """A second connection, as another worker process would have."""
    client = second_connection(redis)
    yield client
    await client.aclose()


async def place(
    ex: PaperExchange, cid: str, amount: str = "0.1", price: str = "60000", post_only: bool = True
) -> Order:
    return await ex.place_limit_sell(
        symbol="BTC/USD", amount=D(amount), price=D(price), client_id=cid, post_only=post_only
    )


# --- markets -------------------------------------------------------------------------
async def test_implements_the_protocol(ex: PaperExchange) -> None:
    assert isinstance(ex, Exchange)
    assert ex.name == "paper"


async def test_btc_usd_has_krakens_rules(ex: PaperExchange) -> None:
    m = await ex.market("BTC/USD")
    assert (m.base, m.quote) == ("BTC", "USD")
    assert m.tick == D("0.1")
    assert m.lot == D("0.00000001")
    assert m.min_amount == D("0.00005")
    assert m.min_cost == D("0.5")
    assert m.maker_fee == D("0.0025")


async def test_unlisted_symbol_gets_a_generic_market(
    ex: PaperExchange, redis: aioredis.Redis, keys: Keys
) -> None:
    before = await ex.market("FOO/USD")
    assert (before.base, before.quote, before.min_amount, before.min_cost) == (
        "FOO",
        "USD",
        D(0),
        D("0.5"),
    )
    assert before.tick == D("0.00000001")  # no price yet: provisional
    await ex.observe_fill(
        fill_id="f1",
        order_id="t1",
        symbol="FOO/USD",
        side="buy",
        price=D("1.2345"),
        quantity=D("10"),
    )
    m = await ex.market("FOO/USD")
    assert m.tick == D("0.0001")  # 5 significant digits at 1.2345
    assert m.lot == D("0.00000001")
    # the tick is fixed by the first price and shared with other processes
    await ex.set_price("FOO/USD", D("123.45"))
    assert (await make(redis, keys).market("FOO/USD")).tick == D("0.0001")
    await ex.set_price("PEPE/USD", D("0.000012345"))
    assert (await ex.market("PEPE/USD")).tick == D("1E-9")


@pytest.mark.parametrize(
    "symbol", ["BTCUSD", "BTC/", "/USD", "BTC/USD/EUR", "BTC/BTC", "BT C/USD", ""]
)
async def test_malformed_symbols_are_bad(ex: PaperExchange, symbol: str) -> None:
    with pytest.raises(BadSymbol):
        await ex.market(symbol)
    with pytest.raises(BadSymbol):
        await ex.place_limit_sell(symbol=symbol, amount=D("0.1"), price=D("1"), client_id="c")


# --- prices --------------------------------------------------------------------------
async def test_quote_rounds_outwards_to_the_tick(ex: PaperExchange) -> None:
    with pytest.raises(TransientError, match="no price yet for BTC/USD"):
        await ex.quote("BTC/USD")
    await ex.set_price("BTC/USD", D("84000.05"))
    q = await ex.quote("BTC/USD")
    assert q.bid == D("83991.6")  # 83991.649995 rounded down to 0.1
    assert q.ask == D("84008.5")  # 84008.450005 rounded up to 0.1


async def test_bid_is_always_below_ask(redis: aioredis.Redis, keys: Keys) -> None:
    ex = make(redis, keys, half_spread=D(0))
    await ex.set_price("BTC/USD", D("100.05"))
    q = await ex.quote("BTC/USD")
    assert (q.bid, q.ask) == (D("100.0"), D("100.1"))
    await ex.set_price("BTC/USD", D("100.0"))
    q = await ex.quote("BTC/USD")
    assert q.bid < q.ask
    assert (q.bid, q.ask) == (D("100.0"), D("100.1"))


# --- balances ------------------------------------------------------------------------
async def test_observe_fill_credits_once_per_fill_id(ex: PaperExchange) -> None:
    for _ in range(2):  # the second is a redelivery
        await ex.observe_fill(
            fill_id="f1",
            order_id="T1",
            symbol="ETH/USD",
            side="buy",
            price=D("3000.5"),
            quantity=D("0.5"),
        )
    assert await ex.free_balance("ETH") == D("0.5")
    assert (await ex.quote("ETH/USD")).bid == D("3000.19")  # last price moved to the fill
    await ex.observe_fill(
        fill_id="f2",
        order_id="T2",
        symbol="ETH/USD",
        side="sell",
        price=D("3001"),
        quantity=D("0.2"),
    )
    assert await ex.free_balance("ETH") == D("0.3")  # the trader sold by itself


async def test_sell_fill_of_a_paper_order_changes_no_balance(ex: PaperExchange) -> None:
    order = await place(ex, "c1", amount="0.4")
    filled = await ex.fill_order(order.id)
    before = await ex.balances()
    await ex.observe_fill(
        fill_id="f9",
        order_id=filled.id,
        symbol="BTC/USD",
        side="sell",
        price=D("60000"),
        quantity=D("0.4"),
    )
    assert await ex.balances() == before
    assert (await ex.quote("BTC/USD")).ask == D("60006.0")


async def test_starting_balances_are_applied_once(
    redis: aioredis.Redis, keys: Keys, other_client: aioredis.Redis
) -> None:
    a, b = make(redis, keys), make(other_client, keys)
    await asyncio.gather(a.free_balance("USD"), b.free_balance("USD"))  # both start at once
    assert await make(redis, keys).balances() == {"BTC": D("1"), "USD": D("10000")}


# --- placing -------------------------------------------------------------------------
async def test_place_opens_an_order_and_locks_the_amount(ex: PaperExchange) -> None:
    order = await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.25"), price=D("65000.1"), client_id="c1"
    )
    assert order.status is OrderStatus.OPEN
    assert (order.symbol, order.side, order.client_id) == ("BTC/USD", "sell", "c1")
    assert (order.amount, order.price, order.filled) == (D("0.25"), D("65000.1"), D(0))
    assert order.timestamp_ms == NOW
    assert len(order.id) == 19 and order.id[0] == "O" and order.id[6] == order.id[12] == "-"
    assert await ex.free_balance("BTC") == D("0.75")
    assert (await ex.balances())["BTC"] == D("1")  # still owned, only locked
    assert await ex.fetch_order(symbol="BTC/USD", order_id=order.id) == order
    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c1") == order
    assert await ex.open_orders() == [order]
    assert await ex.open_orders("ETH/USD") == []
    assert await ex.fetch_order(symbol="BTC/USD", order_id="OXXXXX-XXXXX-XXXXXX") is None
    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="nope") is None


async def test_duplicate_client_id_while_open_then_reusable_after_cancel(ex: PaperExchange) -> None:
    first = await place(ex, "c1")
    with pytest.raises(DuplicateClientId):
        await place(ex, "c1")
    await ex.cancel_order(symbol="BTC/USD", order_id=first.id)
    second = await place(ex, "c1")
    assert second.id != first.id
    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c1") == second
    assert [o.id for o in await ex.orders()] == [first.id, second.id]


async def test_insufficient_funds(ex: PaperExchange) -> None:
    with pytest.raises(InsufficientFunds):
        await place(ex, "c1", amount="1.00000001")
    with pytest.raises(InsufficientFunds):
        await ex.place_limit_sell(symbol="ETH/USD", amount=D("1"), price=D("3000"), client_id="c2")
    await place(ex, "c3", amount="1")  # exactly the balance is fine
    assert await ex.free_balance("BTC") == 0
    assert await ex.open_orders() != []


async def test_bad_amounts_and_prices_are_permanent_errors(ex: PaperExchange) -> None:
    for amount, price in [
        ("0", "1"),
        ("-1", "1"),
        ("0.000000001", "1"),
        ("0.1", "0"),
        ("NaN", "1"),
    ]:
        with pytest.raises(PermanentError):
            await place(ex, "c", amount=amount, price=price)


async def test_post_only_rejected_at_or_below_the_bid(ex: PaperExchange) -> None:
    await ex.set_price("BTC/USD", D("50000"))
    assert (await ex.quote("BTC/USD")).bid == D("49995.0")
    for price in ("49995", "49990", "40000"):
        with pytest.raises(PostOnlyRejected):
            await place(ex, f"c{price}", price=price)
    assert await ex.free_balance("BTC") == D("1")  # nothing was locked
    above = await place(ex, "up", price="49995.1")
    assert above.status is OrderStatus.OPEN
    taker = await place(ex, "taker", price="49990", post_only=False)
    assert taker.status is OrderStatus.OPEN


# --- filling and canceling -----------------------------------------------------------
async def test_fill_credits_quote_net_of_the_maker_fee(ex: PaperExchange) -> None:
    order = await place(ex, "c1", amount="0.4", price="50000")
    part = await ex.fill_order(order.id, D("0.1"))
    assert (part.status, part.filled) == (OrderStatus.OPEN, D("0.1"))
    assert await ex.free_balance("USD") == D("10000") + D("5000") - D("12.5")
    done = await ex.fill_order(order.id, D("5"))  # never more than remaining
    assert (done.status, done.filled) == (OrderStatus.CLOSED, D("0.4"))
    assert await ex.balances() == {"BTC": D("0.6"), "USD": D("29950")}
    assert await ex.free_balance("BTC") == D("0.6")
    assert await ex.open_orders() == []
    assert await ex.fill_order(order.id) == done  # closed: unchanged


async def test_fill_rounding_favours_the_exchange(redis: aioredis.Redis, keys: Keys) -> None:
    ex = make(redis, keys, starting_balances={"XRP": D("10")})
    order = await ex.place_limit_sell(
        symbol="XRP/USD", amount=D("3.33333333"), price=D("0.51237"), client_id="x"
    )
    await ex.fill_order(order.id)
    gross = D("0.51237") * D("3.33333333")  # 1.7078999982921
    fee = (gross * D("0.0025")).quantize(D("1e-8"), ROUND_UP)  # 0.00426975
    net = gross.quantize(D("1e-8"), ROUND_DOWN) - fee  # 1.70789999 - 0.00426975
    assert await ex.free_balance("USD") == net == D("1.70363024")


async def test_cancel_partially_filled_unlocks_only_the_remainder(ex: PaperExchange) -> None:
    order = await place(ex, "c1", amount="1", price="50000")
    await ex.fill_order(order.id, D("0.4"))
    canceled = await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    assert (canceled.status, canceled.filled, canceled.remaining) == (
        OrderStatus.CANCELED,
        D("0.4"),
        D("0.6"),
    )
    assert await ex.free_balance("BTC") == D("0.6")
    assert await ex.balances() == {"BTC": D("0.6"), "USD": D("10000") + D("20000") - D("50")}
    again = await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    assert again == canceled
    assert await ex.free_balance("BTC") == D("0.6")
    assert await ex.open_orders() == []


async def test_cancel_of_a_filled_order_returns_it_closed(ex: PaperExchange) -> None:
    order = await place(ex, "c1", amount="0.5")
    await ex.fill_order(order.id)
    before = await ex.balances()
    result = await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
    assert (result.status, result.filled) == (OrderStatus.CLOSED, D("0.5"))
    assert await ex.balances() == before
    with pytest.raises(OrderNotFound):
        await ex.cancel_order(symbol="BTC/USD", order_id="ONOPE0-00000-000000")
    with pytest.raises(OrderNotFound):
        await ex.fill_order("ONOPE0-00000-000000")


# --- races ---------------------------------------------------------------------------
async def _outcomes(
    calls: list[Coroutine[Any, Any, Order]],
) -> tuple[list[Order], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    placed = [r for r in results if isinstance(r, Order)]
    return placed, [r for r in results if isinstance(r, BaseException)]


async def test_concurrent_places_with_one_client_id_open_one_order(ex: PaperExchange) -> None:
    placed, errors = await _outcomes([place(ex, "same") for _ in range(20)])
    assert len(placed) == 1
    assert all(isinstance(e, DuplicateClientId) for e in errors)
    assert len(await ex.orders()) == 1
    assert await ex.free_balance("BTC") == D("0.9")


async def test_two_processes_placing_one_client_id_open_one_order(
    redis: aioredis.Redis, keys: Keys, other_client: aioredis.Redis
) -> None:
    a, b = make(redis, keys), make(other_client, keys)
    placed, errors = await _outcomes([place(x, "same") for _ in range(10) for x in (a, b)])
    assert len(placed) == 1
    assert all(isinstance(e, DuplicateClientId) for e in errors)
    assert len(await a.orders()) == 1


async def test_concurrent_places_never_oversell(
    ex: PaperExchange, other_client: aioredis.Redis, keys: Keys
) -> None:
    other = make(other_client, keys)
    calls = [
        place(ex if i % 2 else other, f"c{i}", amount="0.15") for i in range(20)
    ]  # 3 BTC asked, 1 owned
    placed, errors = await _outcomes(calls)
    assert len(placed) == 6  # 6 x 0.15 = 0.9 <= 1 < 7 x 0.15
    assert all(isinstance(e, InsufficientFunds) for e in errors)
    assert sum(o.amount for o in await ex.open_orders()) == D("0.9")
    assert await ex.free_balance("BTC") == D("0.1")


async def test_many_open_orders_are_listed(redis: aioredis.Redis, keys: Keys) -> None:
    ex = make(redis, keys, starting_balances={"BTC": D("100")})
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(9000):  # more than Lua's unpack() takes at once
            pipe.hset(keys.paper("open_clients"), f"c{i}", f"O{i}")
            pipe.hset(
                keys.paper("orders"),
                f"O{i}",
                b'{"id":"O%d","cid":"c%d","sym":"BTC\\/USD","side":"sell","px":"1","amt":"1","fil":"0","rem":"100000000","st":"open","ts":"1","seq":%d}'
                % (i, i, i),
            )
        await pipe.execute()
    listed = await ex.open_orders("BTC/USD")
    assert [o.id for o in listed] == [f"O{i}" for i in range(9000)]
