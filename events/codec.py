"""Decode the flat field maps XREADGROUP returns into events, and encode events for XADD.

Every rejection is an EventError whose message is one line naming the field, e.g.
``price: not a finite decimal: 'NaN'``. Nothing else escapes `decode`, whatever the
input (a property test holds us to that).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from events.schema import EVENT_TYPES, Event, Fill, Order, SessionEnded, SessionStarted, Side

MAX_ENTRY_BYTES = 4096
MAX_PAIRS = 500
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_SYMBOL = re.compile(r"[A-Za-z0-9.]{1,24}/[A-Za-z0-9.]{1,24}")
_WORD = re.compile(r"[A-Za-z0-9_ -]{1,32}")
_CURRENCY = re.compile(r"[A-Za-z0-9.]{1,24}")
# docs/contract.md §1: only plain ASCII forms are numbers
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NOT_FINITE = re.compile(r"[+-]?(?:s?nan|inf|infinity)", re.IGNORECASE)
MAX_SIGNIFICANT = 38
SMALLEST = Decimal("1E-18")  # a non-zero number lies in [SMALLEST, LARGEST)
LARGEST = Decimal("1E+15")
_PARSE = Context(traps=[InvalidOperation])  # whatever the caller's context: a bad form raises
_MAX_TS = 10**14  # epoch ms, far beyond any real clock
_MAX_DIGITS_TEXT = 15  # ts and counts: at most this many ASCII digits


class EventError(ValueError):
    """An entry that is not a valid event; str() is the one-line reason."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


def _show(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "…")


def _id(name: str, raw: str) -> str:
    if not _ID.fullmatch(raw):
        raise EventError(name, f"expected 1-64 characters of [A-Za-z0-9._:-], got {_show(raw)}")
    return raw


def _symbol(name: str, raw: str) -> str:
    if not _SYMBOL.fullmatch(raw):
        raise EventError(name, f"expected a BASE/QUOTE symbol, got {_show(raw)}")
    return raw


def _side(name: str, raw: str) -> Side:
    if raw == "buy":
        return "buy"
    if raw == "sell":
        return "sell"
    raise EventError(name, f"expected 'buy' or 'sell', got {_show(raw)}")


def _word(name: str, raw: str) -> str:
    if not _WORD.fullmatch(raw):
        raise EventError(name, f"expected 1-32 characters of [A-Za-z0-9_ -], got {_show(raw)}")
    return raw


def _currency(name: str, raw: str) -> str:
    if not _CURRENCY.fullmatch(raw):
        raise EventError(name, f"expected a currency code, got {_show(raw)}")
    return raw


def _text(name: str, raw: str) -> str:
    if len(raw) > 256 or not raw.isprintable():
        raise EventError(name, "expected printable text of at most 256 characters")
    return raw


def _out_of_range(name: str, raw: str) -> EventError:
    return EventError(name, f"out of range (from 1E-18 up to, not including, 1E+15): {_show(raw)}")


def _decimal(name: str, raw: str, *, positive: bool) -> Decimal:
    if not _NUMBER.fullmatch(raw):
        if _NOT_FINITE.fullmatch(raw):
            raise EventError(name, f"not a finite decimal: {_show(raw)}")
        if raw[:1] == "-" and _NUMBER.fullmatch(raw[1:]):  # signs are not allowed: say why
            raise EventError(name, f"must be {'> 0' if positive else '>= 0'}, got {_show(raw)}")
        raise EventError(name, f"not a decimal number (plain ASCII digits): {_show(raw)}")
    try:
        value = Decimal(raw, _PARSE)  # exact: construction never rounds
    except ArithmeticError:  # an exponent beyond what Decimal holds (1E+99999999999999999999)
        if raw.partition("e")[0].partition("E")[0].strip("0."):
            raise _out_of_range(name, raw) from None
        value = Decimal(0)  # zero, whatever its exponent
    if not value:
        if positive:
            raise EventError(name, f"must be > 0, got {_show(raw)}")
        return Decimal(0)  # 0E-100 and 0.000 become 0
    if len(value.as_tuple().digits) > MAX_SIGNIFICANT:
        raise EventError(name, f"more than {MAX_SIGNIFICANT} significant digits: {_show(raw)}")
    if not SMALLEST <= value < LARGEST:  # exact comparisons, no context arithmetic
        raise _out_of_range(name, raw)
    return value


def _positive(name: str, raw: str) -> Decimal:
    return _decimal(name, raw, positive=True)


def _non_negative(name: str, raw: str) -> Decimal:
    return _decimal(name, raw, positive=False)


def _int(name: str, raw: str, upper: int) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_DIGITS_TEXT:
        raise EventError(name, f"expected a non-negative integer, got {_show(raw)}")
    value = int(raw)
    if value >= upper:
        raise EventError(name, f"out of range, got {_show(raw)}")
    return value


def _ts(name: str, raw: str) -> int:
    return _int(name, raw, _MAX_TS)


def _count(name: str, raw: str) -> int:
    return _int(name, raw, 10**12)


def _pairs(name: str, raw: str) -> tuple[str, ...]:
    items = raw.split(",")
    if len(items) > MAX_PAIRS:
        raise EventError(name, f"more than {MAX_PAIRS} pairs")
    pairs = tuple(_symbol(name, item.strip()) for item in items)
    if len(set(pairs)) != len(pairs):
        raise EventError(name, "a pair is listed twice")
    return pairs


Parser = Callable[[str, str], Any]

# field -> (parser, required); order is the order fields are reported in.
_FIELDS: dict[str, dict[str, tuple[Parser, bool]]] = {
    "session_started": {"session_id": (_id, True), "pairs": (_pairs, True), "ts": (_ts, True)},
    "fill": {
        "session_id": (_id, True),
        "fill_id": (_id, True),
        "order_id": (_id, True),
        "symbol": (_symbol, True),
        "side": (_side, True),
        "price": (_positive, True),
        "quantity": (_positive, True),
        "fee": (_non_negative, True),
        "ts": (_ts, True),
        "fee_currency": (_currency, False),
        "order_type": (_word, False),
        "client_order_id": (_id, False),
    },
    "order": {
        "session_id": (_id, True),
        "order_id": (_id, True),
        "symbol": (_symbol, True),
        "side": (_side, True),
        "order_type": (_word, True),
        "price": (_positive, True),
        "quantity": (_positive, True),
        "status": (_word, True),
        "ts": (_ts, True),
    },
    "session_ended": {
        "session_id": (_id, True),
        "ts": (_ts, True),
        "fills": (_count, False),
        "reason": (_text, False),
    },
}


def _field_name(key: str) -> str:
    """A field name as it appears in a message: short, and on one line whatever it contains."""
    return key[:40] if key.isprintable() else repr(key[:40])


def _as_text(value: object, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise EventError(name, "not valid UTF-8") from None
    if isinstance(value, str):
        return value
    raise EventError(name, f"expected a string, got {type(value).__name__}")


Fields = Mapping[Any, Any] | Sequence[tuple[Any, Any]]
"""An entry's fields: a map, or the (name, value) pairs of a raw reply (names may repeat)."""


_TUPLE, _TWO = frozenset({tuple}), frozenset({2})


def field_pairs(fields: Fields) -> Sequence[tuple[Any, Any]]:
    # the hot path (a raw reply's pairs: a list, never a Mapping), checked in C
    if (
        type(fields) is list
        and _TUPLE.issuperset(map(type, fields))
        and _TWO.issuperset(map(len, fields))
    ):
        return fields
    if isinstance(fields, Mapping):
        return list(fields.items())
    if isinstance(fields, list | tuple) and all(
        isinstance(pair, tuple) and len(pair) == 2 for pair in fields
    ):
        return fields
    raise EventError(None, f"expected a field map, got {type(fields).__name__}")


def decode(fields: Fields | None, *, max_bytes: int = MAX_ENTRY_BYTES) -> Event:
    """Validate one stream entry's fields and return the event, or raise EventError."""
    if fields is None:
        raise EventError(None, "entry payload is missing (trimmed from the stream)")
    text = _texts(field_pairs(fields), max_bytes)
    kind = text.pop("type", None)
    if kind is None:
        raise EventError("type", "missing")
    spec = _FIELDS.get(kind)
    if spec is None:
        raise EventError("type", f"unknown event type {_show(kind)}")
    if not text.keys() <= spec.keys():
        unknown = next(key for key in text if key not in spec)
        raise EventError(_field_name(unknown), f"unknown field for a {kind} event")
    values: dict[str, Any] = {}
    for name, (parse, required) in spec.items():
        raw = text.get(name)
        if raw is None:
            if required:
                raise EventError(name, "missing")
            continue
        values[name] = parse(name, raw)
    return EVENT_TYPES[kind](**values)


def _texts(pairs: Sequence[tuple[Any, Any]], max_bytes: int) -> dict[str, str]:
    """The fields as text, in one pass (the hot path: bytes from Redis); the checks of the
    slow path (`_text_of`) name what is wrong."""
    text: dict[str, str] = {}
    size = 0
    try:
        for raw_key, raw_value in pairs:
            size += len(raw_key) + len(raw_value)
            key = raw_key.decode() if type(raw_key) is bytes else raw_key
            if size > max_bytes or key in text or type(key) is not str:
                raise TypeError
            text[key] = raw_value.decode() if type(raw_value) is bytes else raw_value
            if type(text[key]) is not str:
                raise TypeError
    except (TypeError, AttributeError, UnicodeDecodeError):
        return _text_of(pairs, max_bytes)
    return text


def _text_of(pairs: Sequence[tuple[Any, Any]], max_bytes: int) -> dict[str, str]:
    size = 0
    text: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = _as_text(raw_key, "<field name>")
        if isinstance(raw_key, str | bytes):
            size += len(raw_key)
        if isinstance(raw_value, str | bytes):
            size += len(raw_value)
        if size > max_bytes:
            raise EventError(_field_name(key), f"entry larger than {max_bytes} bytes")
        if key in text:
            raise EventError(_field_name(key), "repeated field")
        text[key] = _as_text(raw_value, _field_name(key))
    return text


def _number(value: Decimal) -> str:
    return format(value, "f")


def encode(event: Event) -> dict[str, str]:
    """The flat field map to XADD for an event (the inverse of `decode`)."""
    out: dict[str, str] = {"type": _type_name(event)}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if value is None:
            continue
        if isinstance(value, Decimal):
            out[name] = _number(value)
        elif isinstance(value, tuple):
            out[name] = ",".join(value)
        else:
            out[name] = str(value)
    return out


def _type_name(event: Event) -> str:
    match event:
        case SessionStarted():
            return "session_started"
        case Fill():
            return "fill"
        case Order():
            return "order"
        case SessionEnded():
            return "session_ended"
    raise TypeError(f"not an event: {event!r}")  # pragma: no cover


def session_of(fields: Fields | None) -> str | None:
    """The session id of an entry without decoding it (None if absent)."""
    if not fields:
        return None
    try:
        pairs = field_pairs(fields)
    except EventError:
        return None
    for key, raw in pairs:
        if key in (b"session_id", "session_id"):
            if isinstance(raw, bytes):
                return raw.decode("utf-8", "replace")
            return raw if isinstance(raw, str) else None
    return None
