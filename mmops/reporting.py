"""Output for people: aligned tables, durations and percentiles, shared by the commands
and the benchmarks so that every table mmops prints reads the same way."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal

_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+%?")
_PLACEHOLDERS = frozenset({"", "-", "?", "n/a"})


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, rule: bool = False
) -> str:
    """An aligned text table: columns of numbers right-aligned, the others left-aligned.

    None prints as "-"; `rule` draws a line of dashes under the header.
    """
    cells = [["-" if value is None else str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [
        bool(rows)
        and all(_is_number(row[i], text[i]) for row, text in zip(rows, cells, strict=True))
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers)]
    if rule:
        out.append(line(["-" * w for w in widths]))
    out += [line(row) for row in cells]
    return "\n".join(out)


def _is_number(value: object, text: object) -> bool:
    if isinstance(value, int | float | Decimal):
        return True
    return isinstance(text, str) and (text in _PLACEHOLDERS or _NUMBER.fullmatch(text) is not None)


def fmt_ms(ms: int | float | None) -> str:
    """A duration for people: 850ms, 12.3s, 4m05s, 2h07m, 3d04h."""
    if ms is None:
        return "-"
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
