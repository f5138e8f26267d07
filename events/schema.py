"""The four event types of the input stream (docs/contract.md §1), as typed msgspec Structs."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Side = Literal["buy", "sell"]


class SessionStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="session_started"):
    session_id: str
    pairs: tuple[str, ...]
    ts: int


class Fill(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="fill"):
    session_id: str
    fill_id: str
    order_id: str
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    fee: Decimal
    ts: int
    fee_currency: str | None = None  # None: the quote currency
    order_type: str | None = None
    client_order_id: str | None = None  # the filled order's exchange client id, if known

    @property
    def base(self) -> str:
        return self.symbol.split("/", 1)[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/", 1)[1]


class Order(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="order"):
    session_id: str
    order_id: str
    symbol: str
    side: Side
    order_type: str
    price: Decimal
    quantity: Decimal
    status: str
    ts: int


class SessionEnded(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="session_ended"):
    session_id: str
    ts: int
    fills: int | None = None  # the trader's own count of the session's fills
    reason: str | None = None


Event = SessionStarted | Fill | Order | SessionEnded

EVENT_TYPES: dict[str, type[Event]] = {
    "session_started": SessionStarted,
    "fill": Fill,
    "order": Order,
    "session_ended": SessionEnded,
}
