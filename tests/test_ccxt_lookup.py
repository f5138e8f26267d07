"""Looking a client id up never adopts an order that is not ours (issue 10 item 9), closed
orders are looked at before any re-send (item 11), and no place request leaves later
than `worst_call_ms` after the call began — through the real ccxt client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from base.settings import SettingsError
from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import Fault
from tests.kraken_env import HANG, MakeExchange, place
from trading.ccxt_exchange import CcxtExchange
from trading.exchange import OrderStatus, TransientError
from trading.factory import check_pending_settle

MINE = "6d6d6f70-0000-4000-8000-00000000abcd"  # a client id as mmops makes them


async def traders_orders(trader: Any) -> None:
    """The trader's orders on the account, all newer than ours would be."""
    # a buy and a sell with neither cl_ord_id nor userref (ccxt's clientOrderId: "0")
    await trader.create_order("BTC/USD", "limit", "buy", "0.01", "64000.0")
    await trader.create_order("BTC/USD", "limit", "sell", "0.01", "65000.0")
    # a sell tagged with a userref (ccxt's clientOrderId: "7")
    await trader.create_order("BTC/USD", "limit", "sell", "0.01", "65001.0", {"userref": 7})
    # our client id, by accident, on a buy (filled) and on another pair (cancelled): an
    # open order with it would refuse ours, so these are closed by the time we look
    await trader.create_order("BTC/USD", "limit", "buy", "0.01", "64585.0", {"clientOrderId": MINE})
    eth = await trader.create_order(
        "ETH/USD", "limit", "sell", "0.1", "3300.00", {"clientOrderId": MINE}
    )
    await trader.cancel_order(eth["id"], "ETH/USD")


async def test_a_look_up_never_adopts_a_foreign_order(
    ex: CcxtExchange, kraken: FakeKraken, trader: Any
) -> None:
    kraken.ignore_client_id_filter = True  # an exchange that ignores the filter
    await traders_orders(trader)
    filled = await trader.create_order("BTC/USD", "limit", "sell", "0.01", "64584.8")  # takes
    assert kraken.orders[filled["id"]].status == "closed"

    assert await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id=MINE) is None

    ours = await place(ex, MINE)
    found = await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id=MINE)
    assert found is not None
    assert (found.id, found.client_id, found.side, found.symbol) == (
        ours.id,
        MINE,
        "sell",
        "BTC/USD",
    )


async def test_other_orders_never_carry_a_client_id_they_do_not_have(
    ex: CcxtExchange, kraken: FakeKraken, trader: Any
) -> None:
    await traders_orders(trader)
    await place(ex, MINE)
    by_id = {o.id: o for o in await ex.open_orders("BTC/USD")}
    assert len(by_id) == 4
    client_ids = sorted(str(o.client_id) for o in by_id.values())
    # ccxt reports userref as clientOrderId ("0", "7"); mmops does not
    assert client_ids == sorted(["None", "None", "None", MINE])


async def test_a_retry_finds_an_order_that_already_filled(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    # the first try is accepted and fills at once (it crossed the book), but its answer
    # is lost: the open orders do not have it, the closed ones do; no second order
    kraken.inject("AddOrder", Fault.accept_then_hang(HANG))
    order = await place(ex, "c-filled", price="64584.8", post_only=False)

    assert len(kraken.calls("AddOrder")) == 1
    (booked,) = kraken.orders.values()
    assert order.id == booked.txid and order.status == OrderStatus.CLOSED
    assert kraken.calls("ClosedOrders")[-1].fields["cl_ord_id"] == "c-filled"


async def test_a_pending_step_is_settled_from_closed_orders(
    ex: CcxtExchange, kraken: FakeKraken
) -> None:
    order = await place(ex, MINE)
    kraken.fill(order.id)  # the TP filled before anyone confirmed it
    found = await ex.fetch_order_by_client_id(symbol="BTC/USD", client_id=MINE)
    assert found is not None and found.status == OrderStatus.CLOSED and found.id == order.id


def test_worst_call_ms_and_the_settle_check() -> None:
    ex = CcxtExchange(max_tries=3, timeout_ms=10_000, backoff_base=0.2)
    # 3 tries x 10 s + 2 look-ups (open, closed) x 10 s before each of 2 retries
    # + backoff caps 0.2 s and 0.4 s + 1 s slack
    assert ex.worst_call_ms == 30_000 + 40_000 + 600 + 1_000
    with pytest.raises(SettingsError) as caught:
        check_pending_settle(5_000, ex.worst_call_ms)
    message = str(caught.value)
    assert message.startswith("TP_PENDING_SETTLE_MS: ") and "71600" in message
    assert "\n" not in message
    check_pending_settle(71_600, ex.worst_call_ms)
    assert CcxtExchange(max_tries=1, timeout_ms=2_000).worst_call_ms == 3_000
    asyncio.run(ex.close())


async def test_no_place_request_leaves_after_the_calls_deadline(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    holder: list[CcxtExchange] = []

    async def slow_backoff(seconds: float) -> None:
        await asyncio.sleep(holder[0].worst_call_ms / 1000)  # sleeps past the deadline

    ex = make_exchange(max_tries=3, sleep=slow_backoff)
    holder.append(ex)
    kraken.inject("AddOrder", *[Fault.hang(HANG)] * 3)
    with pytest.raises(TransientError, match="no time left"):
        await place(ex, "c-late")
    assert len(kraken.calls("AddOrder")) == 1  # the retry would have left too late
    assert kraken.orders == {}
    assert ex.worst_call_ms == 3 * 500 + 2 * 500 * 2 + 600 + 1_000
