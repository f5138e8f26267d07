"""The stored-order encoding of the paper exchange: JSON in the `orders` hash, and Orders;
a sell request as the place script takes it (`place_args`) and its answer (`placed`).

Fields (all strings but ``seq``): ``id``, ``cid`` (client id), ``sym``, ``side``,
``base``, ``quote``, ``px`` and ``amt`` (the price and amount exactly as given), ``fil``
and ``rem`` (filled and remaining, units of 1e-8), ``st`` (an OrderStatus value),
``ts`` (epoch ms), ``seq`` (placement counter). The Lua scripts write these with
cjson; Python only reads them.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from decimal import ROUND_UP, Decimal
from typing import Any

import msgspec
import orjson

from storage.redis import as_text
from trading.exchange import (
    DuplicateClientId,
    ExchangeError,
    InsufficientFunds,
    Order,
    OrderStatus,
    PostOnlyRejected,
    SellRequest,
)
from trading.paper.faults import MESSAGES
from trading.paper.rules import split_symbol
from trading.paper.units import (
    PRICE_EXP,
    exact_units,
    from_units,
    positive,
    price_from_units,
    to_units,
)

_STATUS = {status.value: status for status in OrderStatus}  # a dict lookup is 10x the enum call


def new_order_id() -> str:
    """Kraken-style OXXXXX-XXXXX-XXXXXX from 80 random bits."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode()
    return f"O{raw[:5]}-{raw[5:10]}-{raw[10:16]}"


def decode_order(raw: bytes | str) -> Order:
    return order_from(orjson.loads(raw))


def order_from(o: dict[str, Any]) -> Order:
    """The Order of a stored order already parsed into a dict."""
    return Order(
        id=o["id"],
        client_id=o["cid"],
        symbol=o["sym"],
        side=o["side"],
        price=Decimal(o["px"]),
        amount=Decimal(o["amt"]),
        filled=from_units(o["fil"]),
        status=_STATUS[o["st"]],
        timestamp_ms=int(o["ts"]),
    )


class _Stored(msgspec.Struct):
    """The fields of a stored order that an Order needs (decoded without a dict per order)."""

    id: str
    cid: str
    sym: str
    side: str
    px: str
    amt: str
    fil: str | int
    st: str
    ts: str | int
    seq: int | float = 0


_stored = msgspec.json.Decoder(_Stored)


def sorted_orders(raws: Iterable[bytes | str | None]) -> list[Order]:
    """Orders in placement order; a sweep reads 100k of them, so this path is kept lean."""
    decoded = [_stored.decode(raw) for raw in raws if raw is not None]
    decoded.sort(key=lambda o: o.seq)
    status = _STATUS
    return [
        Order(
            id=o.id,
            client_id=o.cid,
            symbol=o.sym,
            side=o.side,
            price=Decimal(o.px),
            amount=Decimal(o.amt),
            filled=from_units(o.fil),
            status=status[o.st],
            timestamp_ms=int(o.ts),
        )
        for o in decoded
    ]


def place_args(r: SellRequest) -> list[str]:
    """A request's fields for PLACE_LUA (all but the order id); PermanentError if invalid."""
    base, quote = split_symbol(r.symbol)
    units = exact_units("amount", positive("amount", r.amount))
    positive("price", r.price)
    price_units = to_units(r.price, ROUND_UP, PRICE_EXP)
    return [
        r.client_id,
        r.symbol,
        base,
        quote,
        str(r.amount),
        str(units),
        str(r.price),
        str(price_units),
        "1" if r.post_only else "0",
    ]


def placed(r: SellRequest, outcome: bytes, detail: bytes) -> Order | ExchangeError:
    """The Order, or the error, of one request from PLACE_LUA's reply."""
    if outcome == b"ok":
        return decode_order(detail)
    if outcome == b"dup":
        return DuplicateClientId(f"client id {r.client_id!r} is open as {as_text(detail)}")
    if outcome == b"post_only":
        if detail == b"fault":
            return PostOnlyRejected(
                f"post-only sell at {r.price}: {MESSAGES['post_only']} (paper fault post_only)"
            )
        bid = price_from_units(detail)
        return PostOnlyRejected(f"post-only sell at {r.price} would cross the bid {bid}")
    if outcome == b"funds":
        base = r.symbol.partition("/")[0]
        return InsufficientFunds(f"free {base} {from_units(int(detail))} < {r.amount} ({r.symbol})")
    raise RuntimeError(f"unexpected reply of the paper place script: {as_text(outcome)[:40]!r}")
