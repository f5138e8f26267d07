"""Hostile input: entries that are not valid (contract §1), as raw field lists.

Each one must end in `mm:dead` once, with a reason, and change nothing else. Their
session ids start with `cx-`, which no valid session uses, so the checker can tell that
no state was kept for them.
"""

from __future__ import annotations

import random

Fields = list[tuple[bytes, bytes]]


def _fill(sid: str, n: int) -> dict[str, str]:
    return {
        "type": "fill",
        "session_id": sid,
        "fill_id": f"{sid}-bad{n}",
        "order_id": f"{sid}-badorder{n}",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": "64000.5",
        "quantity": "0.01",
        "fee": "1.6",
        "ts": "1763700000000",
    }


def _raw(fields: dict[str, str]) -> Fields:
    return [(k.encode(), v.encode()) for k, v in fields.items()]


def _with(fields: dict[str, str], **changes: str) -> Fields:
    return _raw({**fields, **changes})


def _without(fields: dict[str, str], name: str) -> Fields:
    return _raw({k: v for k, v in fields.items() if k != name})


KINDS = (
    "missing_fill_id",
    "nan_price",
    "negative_quantity",
    "unknown_type",
    "repeated_field",
    "extra_field",
    "long_id",
    "bad_ts",
    "non_ascii_digits",
    "oversized",
    "bad_side",
    "zero_price",
    "exponent_out_of_range",
    "ended_without_ts",
)


def hostile_entry(kind: str, sid: str, n: int) -> Fields:
    base = _fill(sid, n)
    if kind == "missing_fill_id":
        return _without(base, "fill_id")
    if kind == "nan_price":
        return _with(base, price="NaN")
    if kind == "negative_quantity":
        return _with(base, quantity="-0.01")
    if kind == "unknown_type":
        return _with(base, type="refund")
    if kind == "repeated_field":
        return [*_raw(base), (b"price", b"1.5")]
    if kind == "extra_field":
        return _with(base, colour="blue")
    if kind == "long_id":
        return _with(base, fill_id="f" * 65)
    if kind == "bad_ts":
        return _with(base, ts="12:30")
    if kind == "non_ascii_digits":
        return _with(base, quantity="٠.٥")
    if kind == "oversized":
        return _with(base, order_type="x" * 9000)
    if kind == "bad_side":
        return _with(base, side="short")
    if kind == "zero_price":
        return _with(base, price="0")
    if kind == "exponent_out_of_range":
        return _with(base, price="1E+40")
    if kind == "ended_without_ts":
        return _raw({"type": "session_ended", "session_id": sid})
    raise ValueError(kind)


def hostile_entries(rng: random.Random, n: int) -> list[tuple[str, Fields]]:
    """n hostile entries (kind, raw fields), each of a session `cx-...` of its own."""
    out = []
    for i in range(n):
        kind = rng.choice(KINDS)
        out.append((kind, hostile_entry(kind, f"cx-{rng.randrange(10**6)}", i)))
    return out
