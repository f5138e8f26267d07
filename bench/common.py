"""Shared bits of the benchmarks: servers, subprocess workers, tables."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    env.update(PYTHONPATH=str(ROOT), LOG_LEVEL="WARN", **extra)
    return env


def start_mmops(
    args: Sequence[str], env: dict[str, str], *, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m mmops ARGS`; its log (JSON lines on stderr) goes to `log`, else to ours."""
    return subprocess.Popen(
        [sys.executable, "-m", "mmops", *args], env=env, stdout=subprocess.DEVNULL, stderr=log
    )


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a live process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def load() -> float:
    """The machine's 1-minute load average (on this 2-core box, above 2 means waiting)."""
    return os.getloadavg()[0]
