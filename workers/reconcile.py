"""Reconciliation of our TP state with the exchange's orders.

One `open_orders()` call per sweep (the OpenBook); a live TP missing from it is looked up
on its own (`fetch_order`) and its final state recorded through the take-profit engine:
cancelled or unknown to the exchange -> the step is cancelled (its quantity is covered
again by the same pass); filled with no fill event yet -> the step is marked filled.
Open orders carrying our client-id prefix that no position knows are reported.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from base import logs
from base.clock import Clock
from trading.client_ids import is_ours
from trading.exchange import Exchange, Order, OrderStatus
from trading.outcomes import Outcome, Result
from trading.positions import Position, Step
from trading.takeprofit import TakeProfitEngine
from workers.session_view import SessionView

log = logs.get("mmops.reconcile")


@dataclass(frozen=True, slots=True)
class OpenBook:
    """The exchange's open orders at `taken_at` (the app clock), by order id."""

    taken_at: int
    orders: dict[str, Order]

    def __contains__(self, order_id: object) -> bool:
        return order_id in self.orders


async def open_book(exchange: Exchange, clock: Clock) -> OpenBook:
    """Snapshot the open orders (one exchange call); ExchangeError if it cannot."""
    taken_at = clock.now_ms()
    orders = await exchange.open_orders()
    return OpenBook(taken_at=taken_at, orders={o.id: o for o in orders})


class Finding(enum.StrEnum):
    CANCELLED = "cancelled"  # the exchange reports it cancelled or rejected
    UNKNOWN = "unknown"  # the exchange has no such order
    FILLED = "filled"  # filled on the exchange, no fill event yet


@dataclass(frozen=True, slots=True)
class Reconciled:
    finding: Finding
    outcome: Outcome


async def reconcile_step(
    exchange: Exchange, engine: TakeProfitEngine, pos: Position, step: Step
) -> Reconciled | None:
    """Look up a live TP missing from the open book and record its final state.

    None when the exchange has it open after all (placed after the book was taken).
    """
    order = await exchange.fetch_order(symbol=pos.symbol, order_id=step.order_id)
    if order is None:
        finding = Finding.UNKNOWN
        order = Order(
            id=step.order_id,
            client_id=step.client_id,
            symbol=pos.symbol,
            side="sell",
            price=step.price,
            amount=step.qty,
            filled=step.filled,
            status=OrderStatus.CANCELED,
        )
    elif order.status == OrderStatus.CLOSED:
        finding = Finding.FILLED
    elif order.status in (OrderStatus.CANCELED, OrderStatus.REJECTED):
        finding = Finding.CANCELLED
    else:
        return None
    outcome = await engine.record_order_state(pos, step, order)
    if outcome.result not in (Result.CANCELLED, Result.FILLED):
        return None  # someone else changed the step meanwhile
    if finding is Finding.FILLED:
        log.info(
            "TP %s filled on the exchange, no fill event yet",
            step.order_id,
            extra={"session_id": pos.session_id, "position_id": pos.id},
        )
    return Reconciled(finding, outcome)


def unknown_orders(book: OpenBook, sessions: Iterable[SessionView]) -> list[Order]:
    """Open orders with our client-id prefix that no position's step knows."""
    views = list(sessions)
    candidates = set(book.orders)
    for view in views:
        candidates -= view.step_orders
    out = []
    for order_id in candidates:
        order = book.orders[order_id]
        if is_ours(order.client_id) and not any(order.client_id in view.clients for view in views):
            out.append(order)
    return sorted(out, key=lambda o: o.id)
