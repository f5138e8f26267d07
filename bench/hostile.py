"""Hostile raw stream entries: each a plausible input event with exactly one thing wrong.

Used by tests/test_fuzz_input.py, `python -m bench.fuzz` and the chaos run. An entry is
returned as its raw field list — (name, value) byte pairs in order, a name may repeat —
because redis-py's dict form keeps only the last value of a repeated field: XADD it with
`xadd_raw`, which sends the pairs as they are.

The kinds (docs/contract.md §1 says why each is invalid):

- `unknown_type`: `type` is not one of the four event types (`trade`, `FILL`, ...)
- `wrong_value_type`: a field holds a value of another kind: text for a number or a ts,
  `BUY` for a side, a symbol without `/`
- `missing_field`: one required field (`type` included) is left out
- `repeated_field`: one field is given twice; the *last* value is valid, so a reader
  that kept only the last value (a dict) would accept it
- `extra_fields`: 200 extra fields with unknown names (the entry stays under
  MAX_ENTRY_BYTES)
- `nan` / `infinity` / `exponent_1e1000`: a number field is `NaN` / `Infinity` /
  `1E+1000`
- `exponent_beyond_decimal`: a number field is `1E+99999999999999999999`, more than
  Decimal can hold (its construction raised InvalidOperation, not EventError, until the
  codec caught it)
- `negative`: a number field (or a ts) is `-1`
- `underscore`: a number field is `1_0`
- `blanks`: a number field is `' 2 '`
- `non_ascii_digits`: a number field is written with Arabic-Indic digits (`'٣'`)
- `id_blank`: an id (`session_id`, `fill_id`, `order_id`, `client_order_id`) has a blank
  in it or around it
- `id_65_plus`: an id of 65 to 200 characters of the allowed alphabet
- `value_100kb`: one field's value is 100 KB (the entry is larger than MAX_ENTRY_BYTES)
- `value_10mb`: one field's value is 10 MB (`max_huge` of them at most per call)
- `binary_junk`: one value is bytes that are not valid UTF-8

Every kind lands on a `fill`, `order`, `session_ended` or `session_started` entry that is
valid otherwise (`valid_entry`), so the reason a worker gives is about that one thing.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from typing import Any

Pairs = list[tuple[bytes, bytes]]
Hostile = tuple[str, Pairs]

MB = 1_000_000
SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/EUR", "ADA/USD")
BASE_TS = 1_763_700_000_000
ID_CHARS = string.ascii_letters + string.digits + "._:-"
IDS = ("session_id", "fill_id", "order_id", "client_order_id")
# the number fields of each event type (ts and fills are counts: integers)
NUMBERS = {
    "fill": ("price", "quantity", "fee", "ts"),
    "order": ("price", "quantity", "ts"),
    "session_ended": ("ts", "fills"),
    "session_started": ("ts",),
}


def _token(rng: random.Random, prefix: str) -> str:
    return f"{prefix}-{rng.randrange(16**8):08x}"


def valid_entry(
    rng: random.Random, kind: str | None = None, sessions: Sequence[str] = ()
) -> dict[str, str]:
    """A valid event of type `kind` (default: any of the four), its fields in XADD order;
    of one of `sessions` (default: a session of its own)."""
    kind = kind or rng.choice(("fill", "order", "session_ended", "session_started"))
    sid = rng.choice(sessions) if sessions else _token(rng, "hs")
    ts = str(BASE_TS + rng.randrange(10**9))
    if kind == "session_started":
        pairs = ",".join(rng.sample(SYMBOLS, rng.randint(1, 3)))
        return {"type": kind, "session_id": sid, "pairs": pairs, "ts": ts}
    if kind == "session_ended":
        return {"type": kind, "session_id": sid, "ts": ts, "fills": str(rng.randrange(100))}
    common = {
        "session_id": sid,
        "order_id": _token(rng, "o"),
        "symbol": rng.choice(SYMBOLS),
        "side": rng.choice(("buy", "sell")),
        "price": f"{rng.randint(1, 70000)}.{rng.randrange(100):02d}",
        "quantity": f"0.{rng.randrange(1, 10**6):06d}",
    }
    if kind == "order":
        return {"type": kind, **common, "order_type": "limit", "status": "open", "ts": ts}
    fill = {"type": kind, "fill_id": _token(rng, "f"), **common, "fee": "0.16", "ts": ts}
    if rng.random() < 0.3:
        fill["client_order_id"] = _token(rng, "c")
    return fill


def _pairs(fields: dict[str, str]) -> Pairs:
    return [(k.encode(), v.encode()) for k, v in fields.items()]


def _replace(fields: dict[str, str], name: str, value: bytes) -> Pairs:
    return [(k.encode(), value if k == name else v.encode()) for k, v in fields.items()]


def _number_field(rng: random.Random, fields: dict[str, str]) -> str:
    return rng.choice([n for n in NUMBERS[fields["type"]] if n in fields])


def _on_number(value: str) -> Callable[[random.Random, dict[str, str]], Pairs]:
    def make(rng: random.Random, fields: dict[str, str]) -> Pairs:
        return _replace(fields, _number_field(rng, fields), value.encode())

    return make


def _unknown_type(rng: random.Random, fields: dict[str, str]) -> Pairs:
    wrong = rng.choice(("trade", "FILL", "fills", "session_start", "", "order "))
    return _replace(fields, "type", wrong.encode())


def _wrong_value_type(rng: random.Random, fields: dict[str, str]) -> Pairs:
    choices: list[tuple[str, str]] = [(_number_field(rng, fields), "sixty-four thousand")]
    choices.append(("ts", rng.choice(("1763700000000.5", "yesterday", "1e12"))))
    if "side" in fields:
        choices.append(("side", rng.choice(("BUY", "long", "1"))))
    if "symbol" in fields:
        choices.append(("symbol", rng.choice(("BTCUSD", "64000.5", "BTC/USD/EUR"))))
    if "pairs" in fields:
        choices.append(("pairs", "42"))
    name, value = rng.choice(choices)
    return _replace(fields, name, value.encode())


def _missing_field(rng: random.Random, fields: dict[str, str]) -> Pairs:
    optional = {"client_order_id", "fills"}
    gone = rng.choice([k for k in fields if k not in optional])
    return [(k.encode(), v.encode()) for k, v in fields.items() if k != gone]


def _repeated_field(rng: random.Random, fields: dict[str, str]) -> Pairs:
    """The name twice: first another valid value of the same event, then the real one."""
    name = rng.choice(list(fields))
    other = valid_entry(rng, fields["type"]).get(name, fields[name])
    pairs = _pairs(fields)
    at = list(fields).index(name)
    pairs.insert(rng.randint(0, at), (name.encode(), other.encode()))
    return pairs


def _extra_fields(rng: random.Random, fields: dict[str, str]) -> Pairs:
    extra = [(f"x_{i:03d}".encode(), str(rng.randrange(10)).encode()) for i in range(200)]
    pairs = _pairs(fields)
    return pairs[:1] + extra + pairs[1:] if rng.random() < 0.5 else pairs + extra


def _id_blank(rng: random.Random, fields: dict[str, str]) -> Pairs:
    name = rng.choice([k for k in IDS if k in fields])
    value = fields[name]
    cut = rng.randint(1, len(value) - 1)
    wrong = rng.choice((value[:cut] + " " + value[cut:], " " + value, value + " ", value + "\t"))
    return _replace(fields, name, wrong.encode())


def _id_long(rng: random.Random, fields: dict[str, str]) -> Pairs:
    name = rng.choice([k for k in IDS if k in fields])
    wrong = "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(65, 200)))
    return _replace(fields, name, wrong.encode())


def _sized(size: int) -> Callable[[random.Random, dict[str, str]], Pairs]:
    def make(rng: random.Random, fields: dict[str, str]) -> Pairs:
        name = rng.choice([k for k in fields if k != "type"])
        value = fields[name].encode() or b"x"
        return _replace(fields, name, (value * (size // len(value) + 1))[:size])

    return make


def _binary_junk(rng: random.Random, fields: dict[str, str]) -> Pairs:
    name = rng.choice(list(fields))
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 24)))
    # a lone continuation byte or 0xff: never valid UTF-8, wherever it stands
    bad = rng.choice((b"\xff", b"\x80", b"\xc3\x28", b"\xed\xa0\x80"))
    value = rng.choice((bad + junk, fields[name].encode() + bad, junk + bad))
    return _replace(fields, name, value)


MAKERS: dict[str, Callable[[random.Random, dict[str, str]], Pairs]] = {
    "unknown_type": _unknown_type,
    "wrong_value_type": _wrong_value_type,
    "missing_field": _missing_field,
    "repeated_field": _repeated_field,
    "extra_fields": _extra_fields,
    "nan": _on_number("NaN"),
    "infinity": _on_number("Infinity"),
    "exponent_1e1000": _on_number("1E+1000"),
    "exponent_beyond_decimal": _on_number("1E+99999999999999999999"),
    "negative": _on_number("-1"),
    "underscore": _on_number("1_0"),
    "blanks": _on_number(" 2 "),
    "non_ascii_digits": _on_number("٣"),
    "id_blank": _id_blank,
    "id_65_plus": _id_long,
    "value_100kb": _sized(100_000),
    "value_10mb": _sized(10 * MB),
    "binary_junk": _binary_junk,
}
KINDS = tuple(MAKERS)
HUGE = "value_10mb"


def hostile_entry(rng: random.Random, kind: str, sessions: Sequence[str] = ()) -> Pairs:
    """One entry of `kind`, on a valid event of any type (each has an id and a number),
    of one of `sessions` if given: a dead letter must leave a live session as it was."""
    return MAKERS[kind](rng, valid_entry(rng, sessions=sessions))


def hostile_entries(
    rng: random.Random,
    n: int,
    *,
    kinds: Sequence[str] = KINDS,
    max_huge: int = 2,
    sessions: Sequence[str] = (),
) -> list[Hostile]:
    """`n` hostile entries, (kind, raw field pairs): the kinds in turn (each round in a new
    order, so every kind shows up once n >= len(kinds)); at most `max_huge` 10 MB ones,
    the other turns of that kind become 100 KB ones."""
    out: list[Hostile] = []
    huge = 0
    order: list[str] = []
    while len(out) < n:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        if kind == HUGE:
            if huge >= max_huge:
                kind = "value_100kb"
            huge += 1
        out.append((kind, hostile_entry(rng, kind, sessions)))
    return out


def flat(pairs: Pairs) -> list[bytes]:
    return [part for pair in pairs for part in pair]


async def xadd_raw(redis: Any, stream: str, pairs: Pairs) -> str:
    """XADD the pairs as they are (a repeated name stays repeated); the entry's id."""
    entry_id = await redis.execute_command("XADD", stream, "*", *flat(pairs))
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def xadd_raw_pipe(pipe: Any, stream: str, pairs: Pairs) -> None:
    """The same XADD queued on a pipeline (its reply is the entry's id)."""
    pipe.execute_command("XADD", stream, "*", *flat(pairs))
