"""The orders pass: the trader's orders as COPY lines — its `order` events, then (unless
SQL does it, on the staging path) the orders known only from their fills."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from decimal import localcontext

from events import Order
from storage import session_reader as reader
from storage.keys import Keys
from storage.orders import status_rank
from storage.redis import AnyRedis
from storage.session_reader import decode_order
from storage.session_writer import copy_line
from workers.migration.figures import EXACT, average_price
from workers.migration.tally import SessionTally

CHUNK = 20_000  # derived order lines per COPY chunk
FINAL_RANK = status_rank("filled")


async def trader_order_lines(
    redis: AnyRedis, keys: Keys, tally: SessionTally, *, derive: bool
) -> AsyncIterator[bytes]:
    """The trader's `order` events; with `derive`, then its orders known only from fills:
    quantity = filled = the sum of their fills, price = their volume-weighted average
    (18 decimals, half up), created at the first fill."""
    t = tally
    async for batch in reader.order_events(redis, keys, t.sid):
        lines = _event_lines(t, batch)
        if lines:
            yield "".join(lines).encode()
    if not derive:
        return
    lines = []
    with localcontext(EXACT):
        for oid in sorted(t.derived):  # in id order: the primary key is filled in order
            if oid in t.event_ids:
                continue
            agg = t.derived[oid]
            t.figure(agg.symbol).orders += 1
            lines.append(
                copy_line(
                    (
                        oid,
                        t.sid,
                        agg.symbol,
                        str(t.index[agg.symbol]),
                        agg.side,
                        agg.kind,
                        str(agg.quantity),
                        average_price(agg.notional, agg.quantity),
                        "filled",
                        "f",
                        "",
                        "",
                        "",
                        str(agg.quantity),
                        t.ts(agg.first),
                        "",
                        str(FINAL_RANK),
                    )
                )
            )
            if len(lines) >= CHUNK:
                t.new_orders += len(lines)
                yield "".join(lines).encode()
                lines = []
    t.new_orders += len(lines)
    if lines:
        yield "".join(lines).encode()


async def order_event_lines(
    redis: AnyRedis,
    keys: Keys,
    tally: SessionTally,
    order_ids: Sequence[str],
    symbols: set[str],
) -> AsyncIterator[bytes]:
    """The `order` events of these order ids (those that have one), as COPY lines; their
    symbols are added to `symbols`."""
    for start in range(0, len(order_ids), CHUNK):
        raws = await redis.hmget(keys.orders(tally.sid), list(order_ids[start : start + CHUNK]))
        batch = [decode_order(raw) for raw in raws if isinstance(raw, bytes)]
        symbols.update(order.symbol for order in batch)
        lines = _event_lines(tally, batch)
        if lines:
            yield "".join(lines).encode()


def _event_lines(t: SessionTally, batch: list[Order]) -> list[str]:
    """COPY lines of the trader's `order` events (each order once per tally; not our TPs)."""
    lines = []
    for order in batch:
        if order.order_id in t.tp_ids or order.order_id in t.event_ids:
            continue
        t.event_ids.add(order.order_id)
        t.figure(order.symbol).orders += 1
        agg = t.derived.get(order.order_id)
        lines.append(
            copy_line(
                (
                    order.order_id,
                    t.sid,
                    order.symbol,
                    str(t.index[order.symbol]),
                    order.side,
                    order.order_type,
                    str(order.quantity),
                    str(order.price),
                    order.status,
                    "f",
                    "",
                    "",
                    "",
                    str(agg.quantity) if agg is not None else "0",
                    t.ts(order.ts),
                    t.ts(order.ts),
                    str(status_rank(order.status)),
                )
            )
        )
    t.new_orders += len(lines)
    return lines
