"""Reconciliation of our TP state with the exchange's orders.

One read of the exchange per sweep (the OpenBook). From an exchange with a change log
(`OrderFeed`, the paper one) only the orders changed since the last pass are read: the
cursor is kept in `mm:sweeper:state`, and a full read is made when there is none, when
the log no longer reaches back to it, and once an hour. Other exchanges are read whole
(`open_orders()`) on every pass.

A live TP that the book shows is no longer open (complete book: missing from it; changes:
changed and not open, or carried over from a pass that did not sweep its session) is
looked up on its own (`fetch_order`) and its final state recorded through the
take-profit engine: cancelled or unknown to the exchange -> the step is cancelled (its
quantity is covered again by the same pass); filled with no fill event yet -> the step
is marked filled. Open orders carrying our client-id prefix that no position knows are
reported (complete book: all of them; changes: those that changed).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from base import logs
from base.clock import Clock
from storage.redis import as_text
from trading.client_ids import is_ours
from trading.exchange import Exchange, Order, OrderFeed, OrderStatus
from trading.outcomes import Outcome, Result
from trading.positions import Position, Step
from trading.takeprofit import TakeProfitEngine
from workers.parts import TradingParts
from workers.session_view import SessionView

log = logs.get("mmops.reconcile")


FULL_READ_EVERY_MS = 3_600_000  # an exchange with a change log is still read whole this often


@dataclass(frozen=True, slots=True)
class OpenBook:
    """What the exchange's book says at `taken_at` (the app clock).

    complete: `orders` is every open order, by id; an order not in it is not open.
    Not complete (changes since the last pass): `orders` holds the changed orders that are
    open, `closed` the order ids known to be no longer open; any other order is as it was.
    """

    taken_at: int
    orders: dict[str, Order]
    complete: bool = True
    closed: frozenset[str] = frozenset()
    cursor: str | None = None  # of the exchange's change log, to read from next pass

    def __contains__(self, order_id: object) -> bool:
        """Whether the order may still be open, as far as this book knows."""
        if self.complete:
            return order_id in self.orders
        return order_id not in self.closed

    def gone(self, live_ids: frozenset[str]) -> set[str]:
        """Of these live TPs' order ids, those the book says are no longer open."""
        if self.complete:
            return set(live_ids.difference(self.orders))
        return set(self.closed.intersection(live_ids))


async def open_book(exchange: Exchange, clock: Clock) -> OpenBook:
    """Snapshot the open orders (one exchange call); ExchangeError if it cannot."""
    taken_at = clock.now_ms()
    orders = await exchange.open_orders()
    return OpenBook(taken_at=taken_at, orders={o.id: o for o in orders})


async def read_book(
    exchange: Exchange, clock: Clock, cursor: str | None, carried: Iterable[str] = ()
) -> OpenBook:
    """The book since `cursor` from an exchange with a change log, else the whole book.

    `carried`: order ids an earlier pass found no longer open and could not reconcile yet
    (their sessions were left to later passes); they stay closed until reconciled."""
    if not isinstance(exchange, OrderFeed):
        return await open_book(exchange, clock)
    taken_at = clock.now_ms()
    changes = await exchange.order_changes(cursor)
    open_now = {o.id: o for o in changes.orders if o.status == OrderStatus.OPEN}
    if changes.complete:
        return OpenBook(taken_at, open_now, complete=True, cursor=changes.cursor)
    closed = {o.id for o in changes.orders if o.status != OrderStatus.OPEN}
    closed |= set(carried) - open_now.keys()
    return OpenBook(taken_at, open_now, False, frozenset(closed), changes.cursor)


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


async def book_since_last_pass(app: TradingParts) -> OpenBook:
    """The book as `read_book` gives it, from the cursor the last pass kept in
    `mm:sweeper:state` (none: a whole read; also when the last whole read is an hour old)."""
    state = await app.redis.hmget(
        app.keys.sweeper_state, ["book_cursor", "book_carried", "book_full_at"]
    )
    cursor, carried, full_at = (as_text(v) if v is not None else None for v in state)
    if int(full_at or 0) < app.clock.now_ms() - FULL_READ_EVERY_MS:
        cursor = None
    return await read_book(app.exchange, app.clock, cursor, orjson.loads(carried or "[]"))


def book_state(book: OpenBook, views: Iterable[SessionView]) -> dict[str, str | int]:
    """What `mm:sweeper:state` keeps of a pass's book: the cursor (every change up to it was
    acted on), the orders found no longer open whose TP a view still holds live (their
    sessions were not swept, or it failed: the next book carries them), the last whole read."""
    if book.cursor is None:
        return {}
    live = list(views)
    carried = sorted(oid for oid in book.closed if any(oid in view.live for view in live))
    out: dict[str, str | int] = {
        "book_cursor": book.cursor,
        "book_carried": orjson.dumps(carried).decode(),
    }
    if book.complete:
        out["book_full_at"] = book.taken_at
    return out
