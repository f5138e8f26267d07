"""PaperExchange.place_limit_sells: the whole batch in one script, with exactly the
per-request meaning of place_limit_sell (checked against it on the real Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.commands.core import AsyncScript

from storage.keys import Keys
from storage.servers import Servers
from trading.exchange import (
    BadSymbol,
    DuplicateClientId,
    ExchangeError,
    InsufficientFunds,
    Order,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    SellRequest,
)
from trading.paper import PaperExchange
from trading.paper.scripts import PLACE_LUA

D = Decimal
NOW = 1_700_000_000_000
START = {"USD": D("10000"), "BTC": D("1"), "ETH": D("0.5")}


class RecordingExchange(PaperExchange):
    """The real exchange, noting each script it runs with the keys it passes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, list[str]]] = []

    async def _run(
        self, script: AsyncScript, keys: list[str], args: Sequence[Any] = (), *, hot: bool = False
    ) -> Any:
        self.calls.append((str(script.script), list(keys)))
        return await super()._run(script, keys, args, hot=hot)


def make(
    redis: aioredis.Redis, keys: Keys, starting_balances: dict[str, Decimal] = START
) -> RecordingExchange:
    return RecordingExchange(
        redis=redis, keys=keys, starting_balances=starting_balances, clock_ms=lambda: NOW
    )


@pytest.fixture
def ex(redis: aioredis.Redis, keys: Keys) -> PaperExchange:
    return make(redis, keys)


def sell(
    cid: str,
    amount: str = "0.1",
    price: str = "60000",
    symbol: str = "BTC/USD",
    post_only: bool = True,
) -> SellRequest:
    return SellRequest(
        symbol=symbol, amount=D(amount), price=D(price), client_id=cid, post_only=post_only
    )


async def single(ex: PaperExchange, r: SellRequest) -> Order | ExchangeError:
    try:
        return await ex.place_limit_sell(
            symbol=r.symbol,
            amount=r.amount,
            price=r.price,
            client_id=r.client_id,
            post_only=r.post_only,
        )
    except ExchangeError as exc:
        return exc


# --- examples ------------------------------------------------------------------------
async def test_an_empty_batch_places_nothing(ex: PaperExchange) -> None:
    assert await ex.place_limit_sells([]) == []
    assert await ex.orders() == []


async def test_a_batch_is_one_script_call(redis: aioredis.Redis, keys: Keys) -> None:
    ex = make(redis, keys, starting_balances={"BTC": D("10")})
    await ex.free_balance("BTC")  # starting balances applied before counting
    ex.calls.clear()
    placed = await ex.place_limit_sells([sell(f"c{i}") for i in range(25)])
    assert [script for script, _ in ex.calls] == [PLACE_LUA]
    assert all(isinstance(o, Order) and o.status is OrderStatus.OPEN for o in placed)
    assert [o.client_id for o in placed if isinstance(o, Order)] == [f"c{i}" for i in range(25)]
    assert await ex.free_balance("BTC") == D("7.5")


async def test_duplicates_inside_one_batch(ex: PaperExchange) -> None:
    a, dup1, b, dup2 = await ex.place_limit_sells([sell("a"), sell("a"), sell("b"), sell("a")])
    assert isinstance(a, Order) and isinstance(b, Order)
    for dup in (dup1, dup2):
        assert isinstance(dup, DuplicateClientId)
        assert a.id in str(dup)  # names the open order
    assert await ex.free_balance("BTC") == D("0.8")  # only a and b locked
    await ex.cancel_order(symbol="BTC/USD", order_id=a.id)
    again, dup3 = await ex.place_limit_sells([sell("a"), sell("a")])  # free again after cancel
    assert isinstance(again, Order) and again.id != a.id
    assert isinstance(dup3, DuplicateClientId)
    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="a") == again


async def test_mixed_outcomes_keep_their_order_and_do_not_affect_each_other(
    ex: PaperExchange,
) -> None:
    await ex.set_price("BTC/USD", D("50000"))  # bid 49995.0
    before = await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.1"), price=D("60000"), client_id="old"
    )
    results = await ex.place_limit_sells(
        [
            sell("p1", amount="0.5"),  # ok: 0.4 BTC left free
            sell("x1", price="49995"),  # at the bid: post-only rejected
            sell("old"),  # open already: duplicate
            sell("p2", amount="0.5"),  # only 0.4 free: insufficient
            sell("bad", symbol="BTCUSD"),  # malformed symbol: refused before the script
            sell("tiny", amount="0.000000001"),  # not a multiple of 1e-8
            sell("p3", amount="0.4", price="49000", post_only=False),  # crosses, not post-only
            sell("eth", amount="0.5", price="3000", symbol="ETH/USD"),  # another asset
            sell("p4", amount="0.00000001"),  # nothing left after p3
        ]
    )
    kinds = [type(r) for r in results]
    assert kinds == [
        Order,
        PostOnlyRejected,
        DuplicateClientId,
        InsufficientFunds,
        BadSymbol,
        PermanentError,
        Order,
        Order,
        InsufficientFunds,
    ]
    assert "would cross the bid 49995" in str(results[1])
    assert str(results[3]) == "free BTC 0.40000000 < 0.5 (BTC/USD)"
    assert before.id in str(results[2])
    placed = [r for r in results if isinstance(r, Order)]
    assert [(o.client_id, o.amount, o.price) for o in placed] == [
        ("p1", D("0.5"), D("60000")),
        ("p3", D("0.4"), D("49000")),
        ("eth", D("0.5"), D("3000")),
    ]
    assert [o.client_id for o in await ex.open_orders()] == ["old", "p1", "p3", "eth"]
    assert await ex.free_balance("BTC") == 0
    assert await ex.free_balance("ETH") == 0
    assert await ex.balances() == {"BTC": D("1"), "ETH": D("0.5"), "USD": D("10000")}


async def test_an_order_id_collision_retries_the_rest_with_new_ids(
    ex: PaperExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.1"), price=D("60000"), client_id="first"
    )
    drawn = ["OAAAAA-AAAAA-AAAAAA", first.id, "OUNUSE-D0000-000000"]  # the first call
    drawn += ["OBBBBB-BBBBB-BBBBBB", "OCCCCC-CCCCC-CCCCCC"]  # the rest, sent again
    ids = iter(drawn)
    monkeypatch.setattr("trading.paper.exchange.new_order_id", lambda: next(ids))
    # the second request drew first.id: the script stops there and the rest go again
    results = await ex.place_limit_sells([sell("a"), sell("b"), sell("c", amount="0.8")])
    assert [r.id if isinstance(r, Order) else type(r) for r in results] == [
        "OAAAAA-AAAAA-AAAAAA",
        "OBBBBB-BBBBB-BBBBBB",
        InsufficientFunds,  # 0.7 free after a and b, as one by one
    ]
    assert next(ids, None) is None
    assert await ex.fetch_order(symbol="BTC/USD", order_id=first.id) == first  # untouched
    assert await ex.fetch_order(symbol="BTC/USD", order_id="OUNUSE-D0000-000000") is None
    assert await ex.free_balance("BTC") == D("0.7")


# --- equivalence with the one-by-one path ---------------------------------------------
REQUESTS = st.builds(
    sell,
    cid=st.sampled_from(["a", "b", "c", "d"]),
    amount=st.sampled_from(["0.1", "0.25", "0.4", "0.000000001"]),
    price=st.sampled_from(["49995", "49995.1", "60000"]),
    symbol=st.sampled_from(["BTC/USD", "ETH/USD", "BTC/BTC"]),
    post_only=st.booleans(),
)


@pytest.fixture(scope="module")
def redis_url(servers: Servers) -> str:
    return servers.redis_url


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def comparable(result: Order | ExchangeError) -> tuple[Any, ...]:
    """A result without what differs between two exchanges (order ids, in messages too)."""
    if isinstance(result, Order):
        return ("order", result.client_id, result.symbol, result.price, result.amount,
                result.status, result.timestamp_ms)  # fmt: skip
    if isinstance(result, DuplicateClientId):
        return ("dup",)
    return (type(result).__name__, str(result))


@pytest.mark.redis
@settings(max_examples=40, deadline=None)
@given(
    opened=st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True),
    btc=st.sampled_from(["0.3", "1"]),
    batch=st.lists(REQUESTS, min_size=1, max_size=6),
)
def test_a_batch_equals_the_same_requests_one_by_one(
    redis_url: str,
    loop: asyncio.AbstractEventLoop,
    opened: list[str],
    btc: str,
    batch: list[SellRequest],
) -> None:
    loop.run_until_complete(_compare(redis_url, opened, D(btc), batch))


async def _compare(
    redis_url: str, opened: list[str], btc: Decimal, batch: list[SellRequest]
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    prefixes = [f"t{uuid.uuid4().hex[:10]}:" for _ in range(2)]
    try:
        one, other = (
            make(client, Keys(p), starting_balances={"BTC": btc, "ETH": D("0.5")}) for p in prefixes
        )
        for ex in (one, other):
            await ex.set_price("BTC/USD", D("50000"))  # bid 49995.0
            for cid in opened:
                await ex.place_limit_sell(
                    symbol="BTC/USD", amount=D("0.1"), price=D("60000"), client_id=cid
                )
        batched = await one.place_limit_sells(batch)
        one_by_one = [await single(other, r) for r in batch]
        assert [comparable(r) for r in batched] == [comparable(r) for r in one_by_one]
        assert await one.balances() == await other.balances()
        assert await one.free_balance("BTC") == await other.free_balance("BTC")
        assert await one.free_balance("ETH") == await other.free_balance("ETH")
        assert [comparable(o) for o in await one.orders()] == [
            comparable(o) for o in await other.orders()
        ]
        assert [comparable(o) for o in await one.open_orders()] == [
            comparable(o) for o in await other.open_orders()
        ]
    finally:
        for prefix in prefixes:
            async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                await client.unlink(key)
        await client.aclose()
