"""The stored-order encoding of the paper exchange: JSON in the `orders` hash, and Orders.

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
from decimal import Decimal
from typing import Any

import msgspec
import orjson

from trading.exchange import Order, OrderStatus
from trading.paper.units import from_units

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
