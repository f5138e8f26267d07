"""Regression tests for what the chaos run found (docs/chaos.md, one test per finding),
each reproducing the finding's interleaving on the real Redis."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from base.settings import Settings
from mmops.app import App
from tests.helpers import drain_coverage, fill, now_ms
from trading.paper import PaperExchange
from trading.positions import StepStatus


async def test_a_pending_step_is_resent_once_when_its_order_fills_at_once(
    settings: Settings, redis: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1 (seed 5, --shards 2): two callers settle one pending step. B looks the
    client id up and finds nothing; meanwhile A re-sends the step, the order is confirmed
    and fills at once (the trader fills a TP within milliseconds); then B re-sends the same
    client id, which the exchange no longer refuses (it is not open): two orders for one
    coverage step. The re-send is now claimed first (CAS), so B stands back."""
    fast = dataclasses.replace(settings, tp_pending_settle_ms=0)
    a, b = await App.open(fast), await App.open(fast)
    try:
        await a.redis.xadd(a.keys.stream, fill("s-c1", "f-1", "o-1", quantity="0.01", ts=now_ms()))
        await drain_coverage(a)
        pos = await a.book.position("s-c1", "o-1", fresh=True)
        assert pos is not None
        [step] = pos.live
        await a.exchange.cancel_order(symbol="BTC/USD", order_id=step.order_id)
        pending = msgspec.structs.replace(
            step, n=2, status=StepStatus.PENDING, order_id="", client_id=step.client_id + "-2"
        )
        claimed = pos.with_step(pending)
        await a.book.commit("s-c1", [claimed])
        assert isinstance(a.exchange, PaperExchange)
        exchange_a = a.exchange
        # the trader holds more of the coin (other positions): the re-send is not short of it
        await exchange_a.observe_fill(
            fill_id="f-x",
            order_id="o-x",
            symbol="BTC/USD",
            side="buy",
            price=Decimal(64000),
            quantity=Decimal(1),
        )
        real_lookup = b.exchange.fetch_order_by_client_id

        async def stale_lookup(**kwargs: Any) -> Any:
            found = await real_lookup(**kwargs)  # nothing placed yet
            await a.engine.resolve_pending(claimed)  # A re-sends; the order fills at once
            current = await a.book.position("s-c1", "o-1", fresh=True)
            assert current is not None
            await exchange_a.fill_order(current.step(2).order_id)
            return found

        monkeypatch.setattr(b.exchange, "fetch_order_by_client_id", stale_lookup)
        await b.engine.resolve_pending(claimed)
        same_step = [o for o in await exchange_a.orders() if o.client_id == pending.client_id]
        assert len(same_step) == 1
    finally:
        await a.close()
        await b.close()
