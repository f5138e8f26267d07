"""What a take-profit step came to: the results the engine, coverage and the sweeper share."""

from __future__ import annotations

import enum

import msgspec

from trading.positions import Position

MAX_CAS_TRIES = 16
MAX_REASON = 300


class Result(enum.StrEnum):
    CREATED = "created"
    NOTHING = "nothing"  # fully covered already
    DUST = "dust"
    SKIPPED = "skipped"
    FAILED = "failed"
    PENDING = "pending"  # outcome unknown (exchange unreachable): the sweeper settles it
    BUSY = "busy"  # another caller claimed this step moments ago: look again shortly
    CANCELLED = "cancelled"
    FILLED = "filled"


class Outcome(msgspec.Struct, frozen=True):  # 1-2 per fill: a struct is built in C
    result: Result
    position: Position | None = None
    reason: str = ""
