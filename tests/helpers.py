"""Small builders shared by tests: events as XADD field maps, and draining a worker."""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal

from mmops.app import App
from trading.paper import PaperExchange
from workers.groups import runtimes_for
from workers.runtime import RunStats


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fill(
    sid: str,
    fill_id: str,
    order_id: str,
    *,
    symbol: str = "BTC/USD",
    side: str = "buy",
    price: str = "64000.5",
    quantity: str = "0.01",
    fee: str = "1.024008",
    ts: int | None = None,
) -> dict[str, str]:
    return {
        "type": "fill",
        "session_id": sid,
        "fill_id": fill_id,
        "order_id": order_id,
        "symbol": symbol,
        "side": side,
        "price": price,
        "quantity": quantity,
        "fee": fee,
        "ts": str(ts or now_ms()),
    }


async def drain(app: App, group: str, consumer: str = "test-consumer") -> RunStats:
    """Run `group` (from the registry, with its own configuration, a runtime per shard)
    until nothing is left."""
    runtimes = await runtimes_for(group, app, consumer)
    try:
        return await runtimes.run(until_drained=True)
    finally:
        await runtimes.aclose()


async def drain_coverage(app: App, consumer: str = "test-consumer") -> RunStats:
    return await drain(app, "coverage", consumer)


async def takeprofit_entries(app: App, kind: str | None = None) -> list[dict[str, str]]:
    rows = await app.redis.xrange(app.keys.takeprofits)
    out = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
    return [r for r in out if kind is None or r["type"] == kind]


async def orders_per_client_id(app: App) -> Counter[str]:
    assert isinstance(app.exchange, PaperExchange)
    return Counter(o.client_id or "" for o in await app.exchange.orders())


async def placed_by_position(app: App, sid: str) -> dict[str, Decimal]:
    """Σ amount of paper orders placed per position, from the TP records."""
    out: dict[str, Decimal] = {}
    for tp in await takeprofit_entries(app, "created"):
        if tp["session_id"] == sid:
            out[tp["position_id"]] = out.get(tp["position_id"], Decimal(0)) + Decimal(
                tp["quantity"]
            )
    return out
