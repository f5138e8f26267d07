"""A progress line on stderr: a redrawn bar on a terminal, a few plain lines otherwise.

    progress = Progress(total, "migrating")
    progress.advance()      # one item done (or .advance(n))
    progress.close()        # final line

On a TTY the bar is redrawn in place (at most ~10 times a second); when stderr is a
file or a pipe (logs, CI) a line is written at every 10 % step, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24
_REDRAW_S = 0.1


class Progress:
    def __init__(self, total: int, label: str, *, stream: TextIO | None = None) -> None:
        self.total = max(0, total)
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._last_decile = -1
        self._written = -1  # `done` as of the last line written (non-TTY)
        self._closed = False
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 1.0
        if self.tty:
            if not force and now - self._drawn_at < _REDRAW_S and self.done < self.total:
                return
            filled = int(fraction * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            self.stream.write(
                f"\r{self.label} [{bar}] {self.done}/{self.total} {fraction:4.0%} "
                f"{now - self._started:5.1f}s"
            )
        else:
            decile = int(fraction * 10)
            if decile == self._last_decile and not (force and self.done != self._written):
                return
            self._last_decile = decile
            self._written = self.done
            self.stream.write(
                f"{self.label}: {self.done}/{self.total} ({fraction:.0%}) "
                f"{now - self._started:.1f}s\n"
            )
        self._drawn_at = now
        self.stream.flush()
