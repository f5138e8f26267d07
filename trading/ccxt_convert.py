"""ccxt's unified structures (markets, orders) as trading.exchange's, money as Decimal.

Numbers from ccxt are converted with Decimal(str(x)) (the shortest repr of a float, so
64584.9 stays 64584.9); amounts and prices go out as exact fixed-point strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

from trading.exchange import Market, Order, OrderStatus, PermanentError

STATUSES = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.CLOSED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


def dec(value: Any) -> Decimal:
    """A ccxt number (float, int or str) as an exact Decimal of its shortest repr."""
    if isinstance(value, Decimal):
        return value
    if value is None or isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float) and value.is_integer():
        return Decimal(int(value))  # 100.0 -> 100, not 100.0
    return Decimal(str(value))


def dec_or(value: Any, default: Decimal) -> Decimal:
    return default if value is None else dec(value)


def plain(value: Decimal) -> str:
    """Fixed-point text, never exponent notation (Decimal('1E-8') -> '0.00000001')."""
    return format(value, "f")


def client_id_of(raw: Mapping[str, Any]) -> str | None:
    """The client order id the exchange holds for an order, or None.

    Kraken's raw order carries it as `cl_ord_id`; ccxt's unified `clientOrderId` falls
    back to `userref` (an integer tag, "0" on most orders), which is not a client id.
    """
    info = raw.get("info")
    if isinstance(info, Mapping) and ("cl_ord_id" in info or "userref" in info):
        value = info.get("cl_ord_id")
        return None if value in (None, "") else str(value)
    value = raw.get("clientOrderId")
    return None if value in (None, "") else str(value)


def step(precision_mode: Any, name: str, symbol: str, which: str, value: Any) -> Decimal:
    """A price/amount increment from ccxt's precision, whatever its precisionMode."""
    if value is None:
        raise PermanentError(f"{name} market {symbol}: no {which} precision")
    if precision_mode == TICK_SIZE:  # the value is the step itself, e.g. 0.1
        return dec(value)
    if precision_mode == DECIMAL_PLACES:  # the value is a number of digits, e.g. 1 -> 0.1
        return Decimal(1).scaleb(-int(value))
    raise PermanentError(f"{name} market {symbol}: unsupported precision mode {precision_mode}")


def to_market(
    *,
    name: str,
    symbol: str,
    raw: Mapping[str, Any],
    precision_mode: Any,
    maker_fee: Decimal | None,
    default_maker: Any,
) -> Market:
    precision = raw.get("precision") or {}
    limits = raw.get("limits") or {}
    tick = step(precision_mode, name, symbol, "price", precision.get("price"))
    lot = step(precision_mode, name, symbol, "amount", precision.get("amount"))
    maker = maker_fee
    if maker is None:
        fee = raw.get("maker")
        if fee is None:
            fee = default_maker
        if fee is None:
            raise PermanentError(f"{name} market {symbol}: no maker fee known")
        maker = dec(fee)
    return Market(
        symbol=symbol,
        base=str(raw["base"]),
        quote=str(raw["quote"]),
        tick=tick,
        lot=lot,
        min_amount=dec_or((limits.get("amount") or {}).get("min"), lot),
        min_cost=dec_or((limits.get("cost") or {}).get("min"), Decimal(0)),
        maker_fee=maker,
    )


def to_order(
    raw: Mapping[str, Any],
    *,
    client_id: str | None = None,
    symbol: str | None = None,
    side: str | None = None,
    price: Decimal | None = None,
    amount: Decimal | None = None,
) -> Order:
    """ccxt's unified order as ours; the keyword arguments fill what ccxt left empty."""
    raw_status = raw.get("status")
    status = STATUSES.get(str(raw_status), OrderStatus.OPEN) if raw_status else OrderStatus.OPEN
    raw_price = raw.get("price")
    if raw_price is None:
        raw_price = raw.get("average")
    timestamp = raw.get("timestamp")
    return Order(
        id=str(raw["id"]),
        client_id=client_id_of(raw) or client_id,
        symbol=raw.get("symbol") or symbol or "",
        side=raw.get("side") or side or "",
        price=price if price is not None else dec_or(raw_price, Decimal(0)),
        amount=amount if amount is not None else dec_or(raw.get("amount"), Decimal(0)),
        filled=dec_or(raw.get("filled"), Decimal(0)),
        status=status,
        timestamp_ms=int(timestamp) if timestamp is not None else None,
    )


def is_our_sell(raw: Mapping[str, Any], *, symbol: str, client_id: str) -> bool:
    """The order carries exactly `client_id` and is a sell of `symbol` (issue 10 item 9).

    A client-id lookup must never adopt another order, also on an exchange that ignores
    the filter: no client id is not a match, and neither is a buy or another pair.
    """
    return (
        client_id_of(raw) == client_id and raw.get("side") == "sell" and raw.get("symbol") == symbol
    )
