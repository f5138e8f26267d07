"""A FIFO sell and a replayed buy (chaos finding: the long run's P&L and live-TP
violations on the FIFO pair). The trader XADDs buy X, buy Y, a FIFO sell, then X again
(a replay). Consumer A reads X and stalls (killed); consumer C records the replay of X
(with the replay's later stream id); consumer B records Y while the sell waits for A's
pending X. When X
itself is reclaimed it is a duplicate, but its earlier stream id is what FIFO must see:
the sell closes X's position, the oldest by the stream order of its first buy, as the
contract's §3 Closing says, not Y's."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from mmops.app import App
from tests.conftest import wait_for
from tests.helpers import fill, now_ms
from workers.groups import runtime_for

D = Decimal


def sol(
    fill_id: str, order_id: str, ts: int, *, side: str = "buy", price: str = "150"
) -> dict[str, str]:
    return fill("s-1", fill_id, order_id, symbol="SOL/USD", side=side, price=price,
                quantity="1", fee="0", ts=ts)  # fmt: skip


async def test_a_fifo_sell_sees_a_buy_whose_replay_was_recorded_first(app: App) -> None:
    ts = now_ms()
    stream = app.keys.stream
    first = await app.redis.xadd(stream, sol("f-x", "o-x", ts))
    await app.redis.xadd(stream, sol("f-y", "o-y", ts + 1, price="160"))
    await app.redis.xadd(stream, sol("f-s", "o-sell", ts + 2, side="sell", price="170"))
    await app.redis.xadd(stream, sol("f-x", "o-x", ts))  # the replay of X
    runtime_a, _ = await runtime_for("coverage", app, "consumer-a")
    runtime_b, _ = await runtime_for("coverage", app, "consumer-b")
    runtime_c, _ = await runtime_for("coverage", app, "consumer-c")
    await runtime_a.ensure_group()
    group = {stream: ">"}
    [[_, held]] = await app.redis.xreadgroup("coverage", "consumer-a", group, count=1)
    assert held[0][0] == first  # A holds X and is killed: B reclaims it once it is idle
    await app.redis.xreadgroup("coverage", "consumer-b", group, count=2)  # Y and the sell
    await runtime_c.run(until_drained=True)  # C records the replay of X first
    replayed = await app.book.position("s-1", "o-x", fresh=True)
    assert replayed is not None and replayed.first_entry != first.decode()

    b = asyncio.create_task(runtime_b.run())  # Y, the sell (it waits for X), then X
    await wait_for(lambda: app.redis.hexists(app.keys.fills("s-1"), "f-s"), timeout=30)
    runtime_b.stop.set()
    await b

    x = await app.book.position("s-1", "o-x", fresh=True)
    y = await app.book.position("s-1", "o-y", fresh=True)
    assert x is not None and y is not None
    assert x.first_entry == first.decode()  # the original's stream id, not the replay's
    assert (x.closed_other, x.open_quantity) == (D("1"), 0)  # the oldest position closed
    assert (y.closed_other, y.open_quantity) == (0, D("1"))
    assert x.realized_pnl == D("20")  # 170 − 150, no fees
