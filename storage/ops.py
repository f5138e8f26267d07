"""The Redis commands a commit carries, as typed values built by named constructors.

A change to positions and its side effects (TP records, output-stream entries, metrics)
are applied by one Lua script (storage/ledger.py), so the effects travel to the script
as data. Each `Op` is built here by a function named for the command; the script
runs `Op.args` as a Redis command, except `decimal_incrby`, which it interprets (an
exact decimal counter Redis has no command for).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import msgspec

Arg = str | int
OpKind = Literal["call", "decimal_incrby"]


class Op(msgspec.Struct, frozen=True, gc=False):
    """One command for the commit script: `kind` says how the script runs `args`.

    A frozen msgspec struct (like the documents): ~9 are built per fill on the coverage
    hot path, and one is built in a quarter of a frozen dataclass's time."""

    kind: OpKind
    args: tuple[Arg, ...]

    def wire(self) -> list[Arg]:
        """The form the script decodes: [kind, arg, ...]."""
        return [self.kind, *self.args]

    def command(self) -> tuple[Arg, ...]:
        """The plain Redis command (for a MULTI outside the script)."""
        if self.kind != "call":
            raise ValueError(f"{self.kind} runs only inside the commit script")
        return self.args


def _pairs(fields: Mapping[str, Arg]) -> tuple[Arg, ...]:
    out: list[Arg] = []
    for name, value in fields.items():
        out += [name, value]
    return tuple(out)


def hset(key: str, fields: Mapping[str, Arg]) -> Op:
    return Op("call", ("HSET", key, *_pairs(fields)))


def sadd(key: str, *members: str) -> Op:
    return Op("call", ("SADD", key, *members))


def zadd(key: str, score: int, member: str, *, only_new: bool = False) -> Op:
    """ZADD; `only_new` keeps an existing member's score (NX)."""
    flags: tuple[Arg, ...] = ("NX",) if only_new else ()
    return Op("call", ("ZADD", key, *flags, score, member))


def hdel(key: str, *fields: str) -> Op:
    return Op("call", ("HDEL", key, *fields))


def hincrby(key: str, field: str, amount: int) -> Op:
    return Op("call", ("HINCRBY", key, field, amount))


def set_value(key: str, value: str, *, ttl_s: int | None = None) -> Op:
    extra: tuple[Arg, ...] = ("EX", ttl_s) if ttl_s is not None else ()
    return Op("call", ("SET", key, value, *extra))


def xadd(stream: str, fields: Mapping[str, Arg], *, maxlen: int | None = None) -> Op:
    """XADD with an auto id; `maxlen` caps the stream approximately (MAXLEN ~)."""
    cap: tuple[Arg, ...] = ("MAXLEN", "~", maxlen) if maxlen else ()
    return Op("call", ("XADD", stream, *cap, "*", *_pairs(fields)))


E8 = Decimal(100_000_000)


def decimal_incrby(key: str, field: str, amount: Decimal) -> Op:
    """Add `amount` exactly to a decimal counter: the integer of 1e-8 units lives in
    `<field>_e8`, its decimal text in `<field>` (rounded half-even to 1e-8)."""
    units = int((amount * E8).to_integral_value(rounding=ROUND_HALF_EVEN))
    return Op("decimal_incrby", (key, field, units))
