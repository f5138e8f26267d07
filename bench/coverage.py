"""Coverage benchmark: `mmops coverage` processes, a real Redis, the paper exchange (issue 12).

Each phase has its own key prefix (`bench-cov:<run>:<n>:<phase>:`, removed at the end)
and its own worker processes (`python -m mmops coverage`, CONSUMER_BATCH_SIZE --batch-size).
Times are on Redis's clock: the stream ids of `mm:events` and `mm:takeprofits`.

throughput  --fills buy fills over 10 pairs are queued, then 1 worker (and, --processes, 2
            and 4 in the same group, distinct CONSUMER_NAME) is released on them at one
            instant (bench/backlog.py): fills/s = fills / (the releasing XADD's id -> the
            last `created` entry's id). Also the workers' CPU per fill.
latency     one worker, warmed up by --warmup s at --rate (not counted); then --rate fills/s
            XADDed for --seconds s; per fill, its stream id -> its TP's `created` entry id
            (the matching rule: bench/tp_match.py): p50 / p99 / max; beside it, the worker's
            own `latency_ms` field of those TPs (fill id -> exchange ack, the worker's clock).
burst       the same worker: --burst fills XADDed in one pipeline; the first fill's id -> the
            last `created` id of their TPs.
rss         the 1-process throughput worker once drained: VmRSS and peak (VmHWM); and the
            latency worker's peak.
floor       a bare XREADGROUP + XACK loop, COUNT 100 (bench/floor.py, its own process) over
            --fills such fills, released the same way: entries/s; mmops as a fraction of it.
--profile   after the runs, one more 1-process throughput phase with py-spy attached to the
            worker (or, without py-spy or with `--profile cprofile`, the drain in this process
            under cProfile): the top functions by own and cumulative time, to --profile-out.

    python -m bench.coverage [--fills 50000] [--rate 1000] [--seconds 15] [--burst 5000]
        [--processes 1,2,4] [--skip throughput,processes,latency,burst,floor] [--runs 3]
        [--profile [py-spy|cprofile]]

Every figure is the median of --runs runs, with the range in brackets. Long phases show
progress on stderr. The load average of the machine is reported with each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from bench.backlog import Backlog
from bench.common import ROOT, load
from bench.coverage_phases import (
    GROUP,
    PAIRS,
    Bench,
    fill_fields,
    floor,
    live,
    throughput,
)
from bench.coverage_report import Figures, Summary, render, reproduce, revision, worker_logs
from bench.hotpath import GcClock, PySpy, Top, py_spy, stats_top

PHASES = ("throughput", "processes", "latency", "burst", "floor")


# --- one run, the runs, the profile ---------------------------------------------------------
async def run_once(bench: Bench) -> Figures:
    args = bench.args
    out: Figures = {}
    if "throughput" not in args.skip:
        counts = [1] if "processes" in args.skip else args.processes
        for processes in counts:
            out |= await throughput(bench, processes)
        for processes in counts[1:]:
            out[f"x{processes}"] = out[f"tp{processes}"] / out["tp1"]
        total_us = out["tp1_cpu_us"] + out["tp1_redis_us"]
        out |= {
            "tp1_total_us": total_us,
            "tp1_serial": 1e6 / total_us,
            "tp1_ceiling": (os.cpu_count() or 1) * 1e6 / total_us,
        }
    if "floor" not in args.skip:
        out |= await floor(bench)
        if "tp1" in out:
            out["frac"] = out["tp1"] / out["floor"]
    if "latency" not in args.skip or "burst" not in args.skip:
        out |= await live(bench)
    return out


async def profile(bench: Bench, median_tp1: float | None) -> None:
    args = bench.args
    out = Path(args.profile_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spy_exe = py_spy() if args.profile == "py-spy" else None
    if args.profile == "py-spy" and spy_exe is None:
        print(
            "py-spy is not installed: `.venv/bin/pip install py-spy` to profile the worker "
            "process itself; falling back to cProfile around a drain in this process",
            file=sys.stderr,
        )
    bench.round = 99  # its own keys
    if spy_exe is not None:
        spy = PySpy(spy_exe, out.with_suffix(".raw"))
        figures = await throughput(bench, 1, spy)
        assert spy.top is not None
        top = spy.top
        busy = top.total / (spy.rate * figures["tp1_s"])
        how = (
            f"1 `mmops coverage` process, py-spy attached at {spy.rate} Hz; it was active "
            f"(running, or runnable and waiting for a core) in {busy:.0%} of the drain; its "
            "waits on Redis are not sampled; Runner.run's own time is uvloop's C loop; a "
            "garbage collection's time lands on the function whose allocation set it off "
            "(`--profile cprofile` measures the collector)"
        )
    else:
        top, figures, collector = await cprofile_drain(bench)
        how = (
            "the drain run in this process under cProfile (a worker's code, not its "
            f"process); {collector}"
        )
    unprofiled = "" if median_tp1 is None else f"; unprofiled median {median_tp1:,.0f} fills/s"
    heading = (
        f"coverage hot path: {how}\n{args.fills:,} fills drained at {figures['tp1']:,.0f} "
        f"fills/s under the profiler{unprofiled}; load {load():.1f}"
    )
    await asyncio.to_thread(out.write_text, top.report(heading, 80) + "\n")
    print("\n" + top.report(heading, 25))
    print(f"\nprofile written to {out}")


async def cprofile_drain(bench: Bench) -> tuple[Top, Figures, str]:
    from base.settings import Settings
    from mmops.app import App
    from workers.groups import runtime_for

    args = bench.args
    keys = bench.keys("profile")
    backlog = Backlog.of(
        bench.redis, keys.stream, GROUP, args.fills, lambda n, r: fill_fields("prof", n, r), 7
    )
    print(f"profile: queueing {args.fills:,} fills", file=sys.stderr)
    await backlog.queue()
    await backlog.release()
    app = await App.open(Settings.from_env(bench.env(keys, "bench-cov-profile")))
    runtime, close = await runtime_for(GROUP, app, "bench-cov-profile")
    profiler = cProfile.Profile()
    print("profile: draining in process under cProfile", file=sys.stderr)
    started, cpu = time.perf_counter(), time.process_time()
    try:
        with GcClock() as collector:
            profiler.enable()
            await runtime.run(until_drained=True)
            profiler.disable()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        if close is not None:
            await close()
        await app.close()
    return stats_top(profiler), {"tp1": args.fills / seconds}, collector.summary(cpu)


async def main(args: argparse.Namespace) -> int:
    run = f"bench-cov:{secrets.token_hex(4)}:"
    logs = ROOT / ".mmops" / "bench" / run.replace(":", "-").strip("-")
    logs.mkdir(parents=True, exist_ok=True)
    redis = aioredis.Redis.from_url(args.redis_url)
    bench = Bench(args, redis, run, logs)
    version = (await redis.info("server"))["redis_version"]
    at_start = os.getloadavg()
    runs: list[Figures] = []
    try:
        for k in range(args.runs):
            bench.round = k
            if args.runs > 1:
                print(f"run {k + 1} of {args.runs}", file=sys.stderr)
            runs.append(await run_once(bench))
            await cleanup(redis, f"{run}{k}:")
        summary = Summary(runs)
        setup = (
            f"mmops {revision()}, {os.cpu_count()} cores, Redis {version} at {args.redis_url}, "
            f"paper exchange, CONSUMER_BATCH_SIZE {args.batch_size}, fills over {len(PAIRS)} pairs"
        )
        print(render(summary, args, setup, (at_start, os.getloadavg())))
        print(
            "TP entries other than `created`: "
            + (", ".join(f"{n} {w}" for w, n in bench.others.most_common(6)) or "none")
        )
        print("\n".join(worker_logs(logs)))
        for note in bench.exits:
            print(note)
        if args.profile:
            await profile(bench, summary.med("tp1") if summary.has("tp1") else None)
        print(f"\nreproduce: {reproduce(args)}")
    finally:
        await cleanup(redis, run)
        await redis.aclose()
        if not any(p.stat().st_size for p in logs.glob("*.log")):
            shutil.rmtree(logs, ignore_errors=True)
    return 0


async def cleanup(redis: aioredis.Redis, prefix: str) -> None:
    """Remove this run's keys, and only those (the Redis is shared)."""
    async for key in redis.scan_iter(match=f"{prefix}*", count=5000):
        await redis.unlink(key)


def counts(text: str) -> list[int]:
    found = sorted({int(part) for part in text.split(",") if part.strip()} | {1})
    if found[0] < 1:
        raise argparse.ArgumentTypeError("process counts are >= 1")
    return found


def phases(text: str) -> set[str]:
    found = {part.strip() for part in text.split(",") if part.strip()}
    unknown = found - set(PHASES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown phase {', '.join(sorted(unknown))}: expected some of {','.join(PHASES)}"
        )
    return found


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--fills", type=int, default=50_000, help="queued for throughput and floor")
    p.add_argument("--rate", type=int, default=1000, help="fills/s of the latency phase")
    p.add_argument("--seconds", type=float, default=15, help="length of the latency phase")
    p.add_argument("--warmup", type=float, default=1, help="s at --rate before it, not counted")
    p.add_argument("--burst", type=int, default=5000, help="fills XADDed in one pipeline")
    p.add_argument("--processes", type=counts, default=[1, 2, 4], metavar="1,2,4")
    p.add_argument("--batch-size", type=int, default=200, help="CONSUMER_BATCH_SIZE")
    p.add_argument("--skip", type=phases, default=set(), metavar=",".join(PHASES))
    p.add_argument("--runs", type=int, default=3, help="figures are the median of the runs")
    p.add_argument(
        "--profile",
        nargs="?",
        const="py-spy",
        choices=["py-spy", "cprofile"],
        help="profile one more 1-process throughput phase (default py-spy)",
    )
    p.add_argument("--profile-out", default=str(ROOT / ".mmops" / "bench" / "coverage-profile.txt"))
    p.add_argument("--timeout", type=float, default=600, help="s a drain may take")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = p.parse_args(argv)
    if args.fills < 2 or args.burst < 1 or args.runs < 1 or args.rate < 1:
        p.error("--fills >= 2, --burst, --runs and --rate >= 1")
    return args


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main(parse())))
