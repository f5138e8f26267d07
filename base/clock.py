"""The clock, behind a Protocol so tests can move time (aging tiers, UTC days)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time, epoch milliseconds (UTC)."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass
class ManualClock:
    """A clock that stands still until told to move (tests)."""

    ms: int

    def now_ms(self) -> int:
        return self.ms

    def advance(self, *, hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        self.ms += int((hours * 3600 + minutes * 60 + seconds) * 1000)


@functools.lru_cache(maxsize=256)  # the hot path formats the same few ms over and over
def iso(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-21T09:45:18.123Z."""
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")
