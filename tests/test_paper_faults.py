"""PAPER_FAULTS: each fault kind of the paper exchange, made certain (probability 1)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.clock import SystemClock
from base.setting_values import PAPER_FAULT_CALLS
from base.settings import Settings
from storage.keys import Keys
from trading.exchange import (
    DuplicateClientId,
    InsufficientFunds,
    Order,
    OrderStatus,
    PostOnlyRejected,
    SellRequest,
    TransientError,
)
from trading.factory import make_exchange
from trading.paper import PaperExchange, PaperFaults

D = Decimal
NOW = 1_700_000_000_000
START = {"USD": D("10000"), "BTC": D("1")}


def make(
    redis: aioredis.Redis, keys: Keys, faults: dict[str, float] | None = None, seed: int = 7
) -> PaperExchange:
    return PaperExchange(
        redis=redis,
        keys=keys,
        starting_balances=START,
        clock_ms=lambda: NOW,
        faults=None if faults is None else PaperFaults(faults, seed=seed),
    )


@pytest.fixture
def clean(redis: aioredis.Redis, keys: Keys) -> PaperExchange:
    """The same account without faults: what really happened."""
    return make(redis, keys)


async def place(ex: PaperExchange, cid: str, price: str = "60000") -> Order:
    return await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.1"), price=D(price), client_id=cid
    )


async def state(ex: PaperExchange) -> tuple[object, ...]:
    return (await ex.orders(), await ex.balances(), await ex.free_balance("BTC"))


# --- the draw ------------------------------------------------------------------------
def test_a_draw_picks_at_most_one_kind_of_the_call() -> None:
    certain = PaperFaults({"place_5xx": 1.0, "cancel_5xx": 1.0})
    assert {certain.draw("place") for _ in range(50)} == {"place_5xx"}
    assert {certain.draw("cancel") for _ in range(50)} == {"cancel_5xx"}
    assert {certain.draw("fetch") for _ in range(50)} == {None}
    never = PaperFaults({"place_5xx": 0.0})
    assert {never.draw(call) for call in PAPER_FAULT_CALLS for _ in range(50)} == {None}


def test_a_seed_makes_the_draws_reproducible() -> None:
    table = {"place_5xx": 0.3, "post_only": 0.3, "lost_response": 0.2}
    runs = [PaperFaults(table, seed=11), PaperFaults(table, seed=11)]
    draws = [[run.draw("place") for _ in range(200)] for run in runs]
    assert draws[0] == draws[1]
    assert set(draws[0]) == {"place_5xx", "post_only", "lost_response", None}


def test_a_table_the_settings_would_refuse_is_refused() -> None:
    with pytest.raises(ValueError, match="PAPER_FAULTS"):
        PaperFaults({"place_5xx": 0.7, "post_only": 0.7})
    with pytest.raises(ValueError, match="PAPER_FAULTS"):
        PaperFaults({"meteor": 0.1})


# --- each kind -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("place_5xx", "EService:Unavailable"),
        ("rate_limit", "EAPI:Rate limit exceeded"),
        ("place_timeout", "timed out, the order was not placed"),
    ],
)
async def test_place_faults_change_nothing(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange, kind: str, message: str
) -> None:
    before = await state(clean)
    ex = make(redis, keys, {kind: 1.0})
    with pytest.raises(TransientError, match=message) as caught:
        await place(ex, "c1")
    assert f"(paper fault {kind})" in str(caught.value)
    assert await state(clean) == before
    assert await clean.fetch_order_by_client_id(symbol="BTC/USD", client_id="c1") is None
    assert await ex.fault_counts() == {kind: 1}
    assert (await place(clean, "c1")).status is OrderStatus.OPEN  # nothing was left behind


async def test_lost_response_places_the_order_and_hides_it(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange
) -> None:
    ex = make(redis, keys, {"lost_response": 1.0})
    with pytest.raises(TransientError, match="may have been placed"):
        await place(ex, "c1")
    found = await clean.fetch_order_by_client_id(symbol="BTC/USD", client_id="c1")
    assert found is not None and found.status is OrderStatus.OPEN
    assert await clean.free_balance("BTC") == D("0.9")
    # the caller retries with the same client id: the duplicate guard holds
    with pytest.raises(DuplicateClientId, match=found.id):
        await place(clean, "c1")
    assert [o.id for o in await clean.orders()] == [found.id]
    assert await ex.fault_counts() == {"lost_response": 1}


async def test_lost_response_hides_a_refusal_too(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange
) -> None:
    ex = make(redis, keys, {"lost_response": 1.0})
    with pytest.raises(TransientError):
        await ex.place_limit_sell(
            symbol="BTC/USD", amount=D("5"), price=D("60000"), client_id="big"
        )
    assert await clean.orders() == []


async def test_post_only_fault_rejects_an_order_that_would_not_cross(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange
) -> None:
    await clean.set_price("BTC/USD", D("50000"))  # bid 49995.0, far below 60000
    ex = make(redis, keys, {"post_only": 1.0})
    with pytest.raises(PostOnlyRejected, match=r"\(paper fault post_only\)"):
        await place(ex, "c1")
    assert await clean.orders() == []
    assert await clean.free_balance("BTC") == D("1")
    taker = await ex.place_limit_sell(
        symbol="BTC/USD", amount=D("0.1"), price=D("60000"), client_id="c2", post_only=False
    )
    assert taker.status is OrderStatus.OPEN  # a taker order cannot be post-only rejected
    open_one = await place(clean, "c3")
    with pytest.raises(DuplicateClientId):  # the client id check comes first, as before
        await place(ex, "c3")
    assert await clean.open_orders() == [taker, open_one]
    assert await ex.fault_counts() == {"post_only": 1}


async def test_cancel_faults_leave_the_order_open(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange
) -> None:
    order = await place(clean, "c1")
    for kind, message in (("cancel_5xx", "EService:Unavailable"), ("rate_limit", "EAPI:Rate")):
        ex = make(redis, keys, {kind: 1.0})
        with pytest.raises(TransientError, match=message):
            await ex.cancel_order(symbol="BTC/USD", order_id=order.id)
        assert await clean.open_orders() == [order]
        assert await clean.free_balance("BTC") == D("0.9")
    assert await clean.fault_counts() == {"cancel_5xx": 1, "rate_limit": 1}


@pytest.mark.parametrize("kind", ["fetch_5xx", "rate_limit"])
async def test_fetch_faults_fail_every_read(
    redis: aioredis.Redis, keys: Keys, clean: PaperExchange, kind: str
) -> None:
    await clean.set_price("BTC/USD", D("50000"))
    order = await place(clean, "c1")
    ex = make(redis, keys, {kind: 1.0})
    reads = [
        ex.fetch_order(symbol="BTC/USD", order_id=order.id),
        ex.fetch_order_by_client_id(symbol="BTC/USD", client_id="c1"),
        ex.open_orders(),
        ex.free_balance("BTC"),
        ex.quote("BTC/USD"),
    ]
    for read in reads:
        with pytest.raises(TransientError, match=rf"\(paper fault {kind}\)"):
            await read
    assert await ex.fault_counts() == {kind: 5}
    # the simulator hooks and the market rules never fail
    assert (await ex.market("BTC/USD")).tick == D("0.1")
    assert [o.id for o in await ex.orders()] == [order.id]
    assert (await ex.balances())["BTC"] == D("1")


async def test_a_batch_draws_once_per_request(redis: aioredis.Redis, keys: Keys) -> None:
    table = {"place_5xx": 0.25, "lost_response": 0.25}
    requests = [
        SellRequest(symbol="BTC/USD", amount=D("0.01"), price=D("60000"), client_id=f"c{i}")
        for i in range(40)
    ]
    draws = PaperFaults(table, seed=3)
    expected = [draws.draw("place") for _ in requests]  # the same seed draws the same kinds
    ex = make(redis, keys, table, seed=3)
    results = await ex.place_limit_sells(requests)
    clean = make(redis, keys)
    for request, result, kind in zip(requests, results, expected, strict=True):
        placed = await clean.fetch_order_by_client_id(symbol="BTC/USD", client_id=request.client_id)
        if kind is None:
            assert isinstance(result, Order) and result == placed
        else:
            assert isinstance(result, TransientError)
            assert f"paper fault {kind}" in str(result)
            # a 5xx placed nothing; a lost response placed the order all the same
            assert (placed is not None) is (kind == "lost_response")
    counts = {k: expected.count(k) for k in ("place_5xx", "lost_response") if k in expected}
    assert await ex.fault_counts() == counts
    assert set(expected) == {None, "place_5xx", "lost_response"}  # the seed gives a mix


async def test_insufficient_funds_is_not_a_fault(redis: aioredis.Redis, keys: Keys) -> None:
    ex = make(redis, keys, {"place_5xx": 0.0, "cancel_5xx": 1.0})
    with pytest.raises(InsufficientFunds):
        await ex.place_limit_sell(symbol="BTC/USD", amount=D("2"), price=D("60000"), client_id="c1")
    assert await ex.fault_counts() == {}


# --- wiring --------------------------------------------------------------------------
async def test_the_factory_passes_the_setting_in(
    settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    plain = make_exchange(settings, redis, keys, SystemClock())
    assert isinstance(plain, PaperExchange)
    await plain.observe_fill(
        fill_id="f1",
        order_id="o1",
        symbol="BTC/USD",
        side="buy",
        price=D("50000"),
        quantity=D("1"),
    )
    assert (await place(plain, "c1")).status is OrderStatus.OPEN
    faulty_settings = replace(settings, paper_faults=(("rate_limit", 1.0),), paper_faults_seed=1)
    faulty = make_exchange(faulty_settings, redis, keys, SystemClock())
    assert isinstance(faulty, PaperExchange)
    with pytest.raises(TransientError, match="EAPI:Rate limit exceeded"):
        await place(faulty, "c2")
    with pytest.raises(TransientError, match="EAPI:Rate limit exceeded"):
        await faulty.open_orders()
    assert [o.client_id for o in await plain.open_orders()] == ["c1"]
