"""The exchange boundary: one small Protocol that the paper and ccxt adapters implement.

Everything the coverage engine and the sweeper need from an exchange is here, with
money as Decimal. Adapters translate their own errors into the classes below so the
engine can decide: a TransientError is retried (or left for later), a PermanentError
is recorded as the step's outcome.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

import msgspec


@dataclass(frozen=True, slots=True, kw_only=True)
class Market:
    """Trading rules of one symbol, in the units the exchange enforces."""

    symbol: str
    base: str
    quote: str
    tick: Decimal  # price increment
    lot: Decimal  # amount increment
    min_amount: Decimal  # smallest order amount in base
    min_cost: Decimal  # smallest order value in quote (0 when the exchange has none)
    maker_fee: Decimal  # rate, 0.0025 = 0.25 %


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    bid: Decimal
    ask: Decimal
    last: Decimal | None = None  # price of the last trade; None when the exchange gives none


class SellRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # built per fill: C-fast
    """One limit sell of a batch (`Exchange.place_limit_sells`)."""

    symbol: str
    amount: Decimal
    price: Decimal
    client_id: str
    post_only: bool = True


class SeenFill(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # built per fill: C-fast
    """A trader fill, as `Exchange.observe_fills` takes it (`fill_id` unique per exchange)."""

    fill_id: str
    order_id: str
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal


class OrderStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # fully filled
    CANCELED = "canceled"  # may be partially filled: see Order.filled
    REJECTED = "rejected"


class Order(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An exchange order. A msgspec Struct: a sweep builds 100k of them per pass."""

    id: str
    client_id: str | None
    symbol: str
    side: str
    price: Decimal
    amount: Decimal
    filled: Decimal
    status: OrderStatus
    timestamp_ms: int | None = None

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass(frozen=True, slots=True)
class OrderChanges:
    """What `OrderFeed.order_changes` read: pass `cursor` back next time."""

    cursor: str
    complete: bool  # `orders` is every open order (no cursor, or an expired one)
    orders: list[Order]  # complete: the open orders; else every order changed since the cursor


class ExchangeError(Exception):
    """Base of every error an adapter raises; the message is one line, secrets-free."""


class TransientError(ExchangeError):
    """Network trouble, timeouts, rate limits, maintenance: the outcome may be unknown."""


class CircuitOpen(TransientError):
    """The circuit breaker is open: the call was not attempted."""


class RateLimited(TransientError):
    """The exchange's rate counter refused the call; nothing was placed or cancelled.

    Kraken: `EOrder:Rate limit exceeded` (the pair's trading counter) or `EAPI:Rate limit
    exceeded` (the key's API counter). The exchange is alive, so it never trips the
    circuit breaker; `symbol` names the pair when the call had one.
    """

    def __init__(self, message: str, *, symbol: str | None = None) -> None:
        super().__init__(message)
        self.symbol = symbol


class PermanentError(ExchangeError):
    """The exchange refused the request; repeating it unchanged will not help."""


class InsufficientFunds(PermanentError):
    pass


class PostOnlyRejected(PermanentError):
    """A post-only order would have crossed the book and was not placed."""


class OpenOrdersLimit(PermanentError):
    """The pair's open-order cap is reached (Kraken: `EOrder:Orders limit exceeded`)."""


class DuplicateClientId(PermanentError):
    """An order with this client id is already open: the step was placed before."""


class BadSymbol(PermanentError):
    pass


class OrderNotFound(PermanentError):
    pass


@runtime_checkable
class Exchange(Protocol):
    """What mmops needs from an exchange. Implemented by PaperExchange and CcxtExchange."""

    name: str

    async def market(self, symbol: str) -> Market:
        """Trading rules of a symbol (cached by the adapter). BadSymbol if unknown."""
        ...

    async def place_limit_sell(
        self,
        *,
        symbol: str,
        amount: Decimal,
        price: Decimal,
        client_id: str,
        post_only: bool = True,
    ) -> Order:
        """Place a limit sell. amount/price are already rounded to the market's steps.

        Raises PostOnlyRejected, InsufficientFunds, DuplicateClientId (an order with this
        client id is open), other PermanentError, or TransientError (outcome unknown).
        """
        ...

    async def place_limit_sells(
        self, requests: Sequence[SellRequest]
    ) -> list[Order | ExchangeError]:
        """Place several limit sells at once; per request, the order or the error
        `place_limit_sell` would have raised for it (same meaning, same order)."""
        ...

    async def cancel_order(self, *, symbol: str, order_id: str) -> Order:
        """Cancel; returns the order's final state (CLOSED if it had filled already)."""
        ...

    async def fetch_order(self, *, symbol: str, order_id: str) -> Order | None: ...

    async def fetch_order_by_client_id(self, *, symbol: str, client_id: str) -> Order | None:
        """The order placed with this client id, open or not, or None if there is none."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[Order]: ...

    async def free_balance(self, asset: str) -> Decimal: ...

    async def quote(self, symbol: str) -> Quote:
        """Best bid and ask, and the last trade price when the exchange gives it."""
        ...

    async def observe_fill(
        self,
        *,
        fill_id: str,
        order_id: str,
        symbol: str,
        side: str,
        price: Decimal,
        quantity: Decimal,
    ) -> None:
        """A trader fill was seen. The paper exchange moves balances and prices; real ones
        ignore it."""
        ...

    async def observe_fills(self, fills: Sequence[SeenFill]) -> None:
        """`observe_fill` for several fills at once (one round trip where it matters)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class KeepsHistory(Protocol):
    """An exchange that keeps every order and fill it saw in mmops' Redis (the paper one):
    session retention asks it to forget what belonged to a removed session."""

    async def forget(self, *, order_ids: Sequence[str], fill_ids: Sequence[str]) -> int: ...


@runtime_checkable
class OrderFeed(Protocol):
    """An exchange that can tell which orders changed since a cursor (the paper one keeps a
    change log in Redis); others are read whole (`open_orders`)."""

    async def order_changes(self, cursor: str | None) -> OrderChanges: ...
