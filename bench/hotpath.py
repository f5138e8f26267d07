"""Where a coverage worker's time goes: a top table of its functions, by own and cumulative time.

Two profilers, one table:
- py-spy, attached to the real worker process (`record --pid`, raw collapsed stacks, one
  frame per function): samples while the process runs Python, idle waits left out;
- cProfile, in the bench's own process, around a drain of the same backlog (the fallback
  when py-spy is not installed: `.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import pstats
import re
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT
from mmops.reporting import render_table

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*):(?P<line>\d+)\)$")
_SITE = re.compile(r"^.*/(site|dist)-packages/")
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/")


@dataclass(frozen=True, slots=True)
class Line:
    function: str
    own: float
    cum: float
    calls: int | None = None


@dataclass(frozen=True, slots=True)
class Top:
    """A profile as functions with own and cumulative figures, in `unit` (of `total`)."""

    profiler: str
    unit: str  # "samples" | "s"
    total: float
    lines: list[Line]

    def table(self, by: str, limit: int) -> str:
        key = (lambda x: x.own) if by == "own" else (lambda x: x.cum)
        lines = self.lines
        if by == "cum":  # leave out the entry frames (and the bench's own, for cProfile)
            lines = [
                x
                for x in lines
                if (x.cum < self.total or x.own >= 0.01 * self.total)
                and "(bench/" not in x.function
                and "(uvloop/__init__.py" not in x.function
            ]
        rows = sorted(lines, key=key, reverse=True)[:limit]
        share = 100 / self.total if self.total else 0.0
        out = [
            [
                n + 1,
                f"{x.own * share:.1f}%",
                f"{x.cum * share:.1f}%",
                _amount(x.own, self.unit),
                _amount(x.cum, self.unit),
                "-" if x.calls is None else f"{x.calls:,}",
                x.function,
            ]
            for n, x in enumerate(rows)
        ]
        headers = ["#", "own", "cum", f"own {self.unit}", f"cum {self.unit}", "calls", "function"]
        return render_table(headers, out, rule=True)

    def report(self, heading: str, limit: int) -> str:
        return "\n".join(
            [
                heading,
                f"profiler: {self.profiler}; total {_amount(self.total, self.unit)} {self.unit}",
                "",
                f"by own time (top {limit})",
                self.table("own", limit),
                "",
                f"by cumulative time (top {limit})",
                self.table("cum", limit),
            ]
        )


def _amount(value: float, unit: str) -> str:
    return f"{value:,.0f}" if unit == "samples" else f"{value:.3f}"


def short(path: str) -> str:
    """A source path as a reader finds it: relative to the repo, a package, or the stdlib."""
    if _SITE.match(path):
        return _SITE.sub("", path)
    root = str(ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    return _STDLIB.sub("", path)


def frame_name(frame: str) -> str:
    found = _FRAME.match(frame)
    if found is None:
        return frame
    return f"{found['name']} ({short(found['file'])}:{found['line']})"


def collapsed_top(text: str) -> Top:
    """py-spy's raw format (`a;b;c COUNT` a line) as a Top: own = the leaf, cum = on the stack."""
    own: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    total = 0
    for row in text.splitlines():
        stack, _, count = row.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            cum[name] += n
    lines = [Line(name, float(own[name]), float(cum[name])) for name in cum]
    return Top("py-spy", "samples", float(total), lines)


def stats_top(profile: cProfile.Profile) -> Top:
    stats = pstats.Stats(profile)
    lines: list[Line] = []
    total = 0.0
    for (file, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        _, calls, own, cum, _ = row
        total += own
        where = name if file == "~" else f"{name} ({short(file)}:{line})"
        lines.append(Line(where, own, cum, calls))
    return Top("cProfile (in process)", "s", total, lines)


def py_spy() -> str | None:
    """The py-spy executable: beside this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """`py-spy record` attached to a running process until stop()."""

    def __init__(self, exe: str, raw: Path, rate: int = 250) -> None:
        self.exe = exe
        self.raw = raw
        self.rate = rate
        self.proc: asyncio.subprocess.Process | None = None
        self._said: asyncio.Task[bytes] | None = None
        self.top: Top | None = None

    async def start(self, pid: int) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--function",
            "--rate",
            str(self.rate),
            "--output",
            str(self.raw),
            stdout=asyncio.subprocess.PIPE,  # py-spy talks on stdout, errors on stderr
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        said: list[str] = []
        while True:  # "py-spy> Sampling process 250 times a second ..."
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError("py-spy did not attach: " + " ".join(said)[-400:])
            said.append(line.strip())
            if "Sampling process" in line:
                self._said = asyncio.ensure_future(self.proc.stdout.read())  # keep the pipe open
                return

    async def stop(self) -> Top:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):  # it stops by itself if the process did
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Control-C
        await asyncio.wait_for(self.proc.wait(), 60)
        said = (await self._said).decode() if self._said is not None else ""
        if not self.raw.exists():
            raise RuntimeError("py-spy wrote no profile: " + said[-400:])
        self.top = collapsed_top(self.raw.read_text())
        return self.top


class GcClock:
    """Time the garbage collector takes in this process, by generation (gc.callbacks).

    A profiler does not show it: a collection runs inside whatever allocation set it off,
    so its time lands on that function's own time."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self.longest = 0.0
        self._started = 0.0

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._tick)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._tick)

    def _tick(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = int(info["generation"])
        self.seconds[generation] += took
        self.counts[generation] += 1
        self.longest = max(self.longest, took)

    def summary(self, cpu_s: float) -> str:
        total = sum(self.seconds)
        share = total / cpu_s if cpu_s else 0.0
        gens = ", ".join(f"gen{g} {self.seconds[g]:.2f} s / {self.counts[g]}" for g in range(3))
        return (
            f"garbage collector: {total:.2f} s of the drain's {cpu_s:.2f} s CPU ({share:.0%}); "
            f"{gens} collections; the longest {self.longest * 1000:.0f} ms"
        )
