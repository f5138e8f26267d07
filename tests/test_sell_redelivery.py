"""A FIFO sell delivered again (its consumer was killed after the commit, before the ack)
while another process trims the position it closed (chaos finding: a position with two
closes of one sell, P&L off and a live TP over what is held). The redelivery finds the
sell recorded; what it computed from its read was never stored, and must not be written
by the trim that follows either."""

from __future__ import annotations

from decimal import Decimal

import pytest

from events import Fill, decode
from mmops.app import App
from storage.streams import Entry
from tests.helpers import drain_coverage, fill, now_ms
from trading.positions import Position
from workers.closing import Closing

D = Decimal


async def test_a_redelivered_fifo_sell_never_writes_its_close_twice(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = now_ms()
    buy = fill("s-1", "f-1", "o-1", symbol="SOL/USD", price="150", quantity="1", fee="0", ts=ts)
    await app.redis.xadd(app.keys.stream, buy)  # type: ignore[arg-type]
    await drain_coverage(app)
    fields = fill(
        "s-1", "f-s", "o-sell", symbol="SOL/USD", side="sell", price="160", quantity="0.4",
        fee="0", ts=ts + 1,
    )  # fmt: skip
    entry_id = (await app.redis.xadd(app.keys.stream, fields)).decode()  # type: ignore[arg-type]
    entry = Entry(entry_id, [(k.encode(), v.encode()) for k, v in fields.items()])
    sell = decode(entry.fields)
    assert isinstance(sell, Fill)
    closing = Closing(app)

    async def no_trim(pos: Position) -> list[object]:
        return []

    with monkeypatch.context() as patch:  # the first delivery commits, then its process dies
        patch.setattr(app.engine, "trim", no_trim)
        await closing.on_sell(entry, sell, [])
    applied = await app.book.position("s-1", "o-1", fresh=True)
    assert applied is not None and len(applied.closes) == 1 and applied.over_covered > 0
    [step] = applied.live
    await app.engine.cancel_step(applied, step, reason="trimmed by another process")

    async def stale_read(sid: str) -> dict[str, Position]:
        return {applied.id: applied}  # the redelivery read before that trim landed

    monkeypatch.setattr(app.book, "positions", stale_read)
    await closing.on_sell(entry, sell, [])  # the redelivery

    after = await app.book.position("s-1", "o-1", fresh=True)
    assert after is not None
    assert [(c.fill_id, c.qty) for c in after.closes] == [("f-s", D("0.4"))]
    assert after.closed_other == D("0.4") and after.open_quantity == D("0.6")
