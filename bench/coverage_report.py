"""The coverage benchmark's table: medians and ranges over the runs, targets, the peers.

One row per measure (bench/coverage.py says how each is taken), with the load average
of the machine at the end of its phase, the target from issue 12, whether the median
meets it, and the figures the issue cites beside it: the peers (Hummingbot, Freqtrade),
its anchors (the stream alone, the bare consumer) and mmops before the batch path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import orjson

from bench.common import ROOT
from mmops.reporting import render_table

Figures = dict[str, float]

# the anchors and the peers it cites (issue 12, "The anchors")
HUMMINGBOT = "Hummingbot: a TP on a 1 s control loop"
FREQTRADE = "Freqtrade: exits checked every ~5 s, no TP on the exchange"
STREAM_ALONE = "stream alone: p50 0.4 / p99 1.1-1.4 ms at 4,000 msg/s"


class Summary:
    """Medians and ranges of each figure over the runs."""

    def __init__(self, runs: list[Figures]) -> None:
        self.runs = runs

    def has(self, *keys: str) -> bool:
        return all(key in run for run in self.runs for key in keys)

    def med(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs)

    def total(self, key: str) -> int:
        return int(sum(run[key] for run in self.runs))

    def v(self, key: str, fmt: str = "{:,.0f}") -> str:
        """The median, and the range over the runs in brackets."""
        text = fmt.format(self.med(key))
        if len(self.runs) > 1:
            lo, hi = min(r[key] for r in self.runs), max(r[key] for r in self.runs)
            text += f" ({fmt.format(lo)}-{fmt.format(hi)})"
        return text


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def table_rows(s: Summary, args: argparse.Namespace) -> list[list[object]]:
    rows: list[list[object]] = []
    n = f"{args.fills:,}"
    if s.has("tp1"):
        rows.append(
            [
                "throughput, 1 process",
                f"{s.v('tp1')} fills/s",
                f"{n} fills drained in {s.v('tp1_s', '{:.2f}')} s (release -> last TP created); "
                f"{s.total('tp1_uncovered')} without TP; the worker on a CPU {s.v('tp1_busy')} % "
                f"of the drain; load {s.v('tp1_load', '{:.1f}')}",
                ">= 10,000 fills/s",
                met(s.med("tp1") >= 10_000),
                "before the batch path: 1,522 fills/s",
            ]
        )
        cores = os.cpu_count() or 1
        rows.append(
            [
                "  CPU per fill, 1 process",
                f"{s.v('tp1_cpu_us')} + {s.v('tp1_redis_us')} = {s.v('tp1_total_us')} us",
                f"the worker's (utime + stime) + the Redis server's (INFO cpu: the whole server, "
                f"shared with other clients here) over the drain; one process runs them in series, "
                f"1 / total = {s.v('tp1_serial')} fills/s; {cores} cores / total = "
                f"{s.v('tp1_ceiling')} fills/s, the box's ceiling for any number of processes",
                "-",
                "-",
                "before the batch path: Python ~250-270 + ~300 placing, Redis ~120 us",
            ]
        )
    if s.has("lat_p50"):
        rows.append(
            [
                f"latency at {args.rate:,} fills/s (Redis's clock)",
                f"p50 {s.v('lat_p50')} / p99 {s.v('lat_p99')} / max {s.v('lat_max')} ms",
                f"fill id -> its TP's `created` id; {s.med('lat_n'):,.0f} fills over "
                f"{args.seconds:g} s at {s.v('lat_rate')}/s on Redis's clock ({args.warmup:g} s "
                f"warm-up not counted); {s.total('lat_uncovered')} without TP, "
                f"{s.total('lat_shared')} sharing a TP; 1 ms resolution; load "
                f"{s.v('lat_load', '{:.1f}')}",
                "p99 <= 5 ms, max <= 20 ms",
                met(s.med("lat_p99") <= 5 and s.med("lat_max") <= 20),
                f"{HUMMINGBOT}; {FREQTRADE}; {STREAM_ALONE}",
            ]
        )
        rows.append(
            [
                "  the worker's own latency_ms",
                f"p50 {s.v('wk_p50')} / p99 {s.v('wk_p99')} / max {s.v('wk_max')} ms",
                "the same TPs' `latency_ms` field: fill id -> exchange ack, the worker's clock, "
                "before the `created` entry is written",
                "-",
                "-",
                "before the batch path: p50 5 / p99 152 / max 225 ms",
            ]
        )
    if s.has("burst_ms"):
        rows.append(
            [
                f"burst: {args.burst:,} fills in one pipeline",
                f"{s.v('burst_ms')} ms to the last TP",
                f"first fill id -> last `created` id; the XADDs spanned {s.v('burst_xadd_ms')} ms; "
                f"per fill p50 {s.v('burst_p50')} / p99 {s.v('burst_p99')} ms; "
                f"{s.total('burst_uncovered')} without TP; load {s.v('burst_load', '{:.1f}')}",
                "<= 1,000 ms",
                met(s.med("burst_ms") <= 1000),
                f"{HUMMINGBOT}; {FREQTRADE}",
            ]
        )
    for processes in args.processes[1:]:
        p = f"tp{processes}"
        if not s.has(p):
            continue
        scaling = (
            ">= 1.8x one"
            if processes == 2
            else f"reported: {processes} processes on 2 cores, beside Redis, cannot scale"
        )
        rows.append(
            [
                f"throughput, {processes} processes",
                f"{s.v(p)} fills/s = {s.v(f'x{processes}', '{:.2f}')}x one",
                f"one group, {processes} consumers; drained in {s.v(f'{p}_s', '{:.2f}')} s; "
                f"{s.total(f'{p}_uncovered')} without TP; CPU per fill: workers "
                f"{s.v(f'{p}_cpu_us')} us, Redis {s.v(f'{p}_redis_us')} us; each worker on a CPU "
                f"{s.v(f'{p}_busy')} % of the drain; load {s.v(f'{p}_load', '{:.1f}')}",
                scaling,
                met(s.med(f"x{processes}") >= 1.8) if processes == 2 else "-",
                "-",
            ]
        )
    if s.has("rss_end") or s.has("live_rss_peak"):
        parts, peaks = [], []
        if s.has("rss_end"):
            parts.append(f"after {n} fills: {s.v('rss_end')} MB, peak {s.v('rss_peak')} MB")
            peaks.append(s.med("rss_peak"))
        if s.has("live_rss_peak"):
            parts.append(f"latency/burst worker: peak {s.v('live_rss_peak')} MB")
            peaks.append(s.med("live_rss_peak"))
        rows.append(
            [
                "worker RSS",
                f"peak {max(peaks):.0f} MB",
                "; ".join(parts),
                "<= 150 MB",
                met(max(peaks) <= 150),
                "before the batch path: 74 MB",
            ]
        )
    if s.has("floor"):
        rows.append(
            [
                "floor: bare XREADGROUP + XACK",
                f"{s.v('floor')} entries/s",
                f"COUNT 100, redis-py asyncio + hiredis + uvloop, own process, {n} such fills; "
                f"CPU per entry: it {s.v('floor_cpu_us', '{:.1f}')} us, Redis "
                f"{s.v('floor_redis_us', '{:.1f}')} us; load {s.v('floor_load', '{:.1f}')}",
                "-",
                "-",
                "issue 12: about 157,000 entries/s",
            ]
        )
    if s.has("frac"):
        rows.append(
            [
                "mmops / floor",
                f"{s.v('frac', '{:.3f}')} (1/{1 / s.med('frac'):.0f})",
                "1-process throughput over the floor's entries/s, per run",
                "-",
                "-",
                "issue 12: about 1/100",
            ]
        )
    return rows


def render(
    summary: Summary,
    args: argparse.Namespace,
    setup: str,
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> str:
    """The heading, the machine's load and the table."""
    runs = len(summary.runs)
    out = [
        f"coverage benchmark (issue 12): {setup}; "
        + (
            f"median of {runs} runs (range in brackets; counts of fills are totals)"
            if runs > 1
            else "1 run"
        ),
        "load average (1/5/15 min): at the start "
        + "/".join(f"{x:.2f}" for x in loads[0])
        + ", at the end "
        + "/".join(f"{x:.2f}" for x in loads[1]),
    ]
    headers = ["measure", "result", "detail", "target", "met", "peers, anchors (issue 12)"]
    rows = table_rows(summary, args)
    if rows:
        out.append(render_table(headers, rows, rule=True))
    return "\n".join(out)


def worker_logs(path: Path) -> list[str]:
    """What the workers logged (LOG_LEVEL=WARN): counts by level and the first messages."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for file in sorted(path.glob("*.log")):
        for line in file.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
                level, msg = str(entry.get("level", "?")), str(entry.get("msg", ""))
            except orjson.JSONDecodeError:
                level, msg = "raw", line.decode(errors="replace")
            levels[level] += 1
            messages[f"{level} {msg[:160]}"] += 1
    if not levels:
        return ["worker logs (LOG_LEVEL=WARN): nothing logged"]
    head = ", ".join(f"{n} {level}" for level, n in levels.most_common())
    return [f"worker logs (LOG_LEVEL=WARN, in {path}): {head}"] + [
        f"  {n} x {msg}" for msg, n in messages.most_common(5)
    ]


def reproduce(args: argparse.Namespace) -> str:
    parts = [
        "python -m bench.coverage",
        f"--fills {args.fills}",
        f"--rate {args.rate}",
        f"--seconds {args.seconds:g}",
        f"--burst {args.burst}",
        f"--processes {','.join(map(str, args.processes))}",
        f"--batch-size {args.batch_size}",
        f"--runs {args.runs}",
    ]
    if args.skip:
        parts.append(f"--skip {','.join(sorted(args.skip))}")
    if args.profile:
        parts.append(f"--profile {args.profile}")
    return " ".join(parts)


def revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = ""
    return rev or "unknown"
