"""Crash points for fault-injection tests: MMOPS_CRASH_POINT=<name> SIGKILLs the process there.

Read once at import; a disabled crash point costs one string comparison.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("MMOPS_CRASH_POINT", "")

# The points, in the order a buy fill passes them.
POINTS = ("fill_recorded", "step_claimed", "order_placed", "before_ack")


def crash_point(name: str) -> None:
    if _POINT and name == _POINT:
        os.kill(os.getpid(), signal.SIGKILL)
