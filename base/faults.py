"""Fault points for fault-injection tests, read once at import.

`MMOPS_CRASH_POINT=<name>[@<n>]` SIGKILLs the process the n-th time (default: the first)
it passes the point; `MMOPS_STALL_POINT=<name>[@<n>]:<ms>` blocks it there for ms (a
slow exchange or disk, frozen mid-batch). A disabled point costs one string comparison.
"""

from __future__ import annotations

import os
import signal
import time

# The points, in the order a buy fill passes them.
POINTS = ("fill_recorded", "step_claimed", "order_placed", "before_ack")
# The migrator's sync of an ended session: between its PostgreSQL commit and the trim of
# the session's changes stream (workers/migration/sync.py).
MIGRATOR_POINTS = ("sync_committed",)


def _parse(raw: str) -> tuple[str, int]:
    name, _, nth = raw.partition("@")
    return name, int(nth) if nth.isdigit() else 1


_CRASH, _CRASH_AT = _parse(os.environ.get("MMOPS_CRASH_POINT", ""))
_STALL_SPEC, _, _STALL_MS = os.environ.get("MMOPS_STALL_POINT", "").partition(":")
_STALL, _STALL_AT = _parse(_STALL_SPEC)
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    if name == _CRASH and _CRASH:
        if _count(name) == _CRASH_AT:
            os.kill(os.getpid(), signal.SIGKILL)
    elif name == _STALL and _STALL and _count(name) == _STALL_AT:
        time.sleep(int(_STALL_MS or "0") / 1000)


def _count(name: str) -> int:
    _passes[name] = _passes.get(name, 0) + 1
    return _passes[name]
