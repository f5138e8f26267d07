"""The simulator's rolling sessions (`mmops simulate --rolling`): a trading day in miniature.

`sessions` sessions are live at any time; each trades for `session_seconds`, and as one
ends the next starts, until the duration is over. A session ends with TPs still live:
the market comes back to each of them between half of and all of `close_within` seconds
after its end (a delay drawn per session), so the TPs fill after `session_ended` and the
session closes.
That is the life the contract's retention is about (docs/contract.md §3): soaks
(`bench/soak.py`) run it for minutes with the retention shortened to match.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """When one rolling session starts and ends, and when its TPs are all filled at the latest."""

    start: float
    end: float
    close: float


def rolling_slots(
    sessions: int, session_seconds: float, close_within: float, duration: float, rng: random.Random
) -> list[Slot]:
    """Staggered so that `sessions` are live at once: one starts every session_seconds/sessions."""
    step = session_seconds / sessions
    count = max(1, math.ceil(duration / step))
    out = []
    for i in range(count):
        start = i * step
        end = min(duration, start + session_seconds)
        out.append(Slot(start, end, end + rng.uniform(close_within / 2, close_within)))
    return out
