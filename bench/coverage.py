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
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench import floor as floor_process
from bench.backlog import Backlog, entry_ms, wait_drained, wait_registered, xadd_all
from bench.common import ROOT, cpu_seconds, load, rss_mb, start_mmops, worker_env
from bench.coverage_report import Figures, Summary, render, reproduce, revision, worker_logs
from bench.hotpath import GcClock, PySpy, Top, py_spy, stats_top
from bench.tp_match import Matched, match, read_tps
from mmops.progress import Progress
from mmops.reporting import percentile
from storage.keys import Keys
from storage.redis import as_text, stream_id
from trading.paper import KRAKEN_USD_PAIRS

PAIRS = list(KRAKEN_USD_PAIRS)[:10]
PRICES = {
    "BTC/USD": 64000,
    "ETH/USD": 3200,
    "SOL/USD": 150,
    "XRP/USD": 0.61,
    "ADA/USD": 0.45,
    "DOGE/USD": 0.16,
    "DOT/USD": 6.5,
    "LINK/USD": 14,
    "LTC/USD": 80,
    "AVAX/USD": 30,
}
PHASES = ("throughput", "processes", "latency", "burst", "floor")
GROUP = "coverage"


_WALK: dict[str, float] = {}


def fill_fields(sid: str, n: int, rng: random.Random) -> dict[str, str]:
    """A buy fill of about 100 USD; each pair's price walks by at most 0.05 % a fill (a
    market maker buys near the bid: its TP, 0.75 % above, rests on the book)."""
    symbol = PAIRS[n % len(PAIRS)]
    price = _WALK.get(symbol, PRICES.get(symbol, 10)) * (1 + rng.uniform(-0.0005, 0.0005))
    _WALK[symbol] = price
    qty = max(100 / price, 0.001)  # about 100 USD a fill
    ordermin = float(KRAKEN_USD_PAIRS[symbol].min_amount)
    qty = max(qty, ordermin * 1.5)
    return {
        "type": "fill",
        "session_id": sid,
        "fill_id": f"f{n}",
        "order_id": f"o{n}",
        "symbol": symbol,
        "side": "buy",
        "price": f"{price:.6g}",
        "quantity": f"{qty:.6f}",
        "fee": f"{price * qty * 0.0026:.6f}",
        "ts": str(time.time_ns() // 1_000_000),
    }


Positions = dict[tuple[str, str], list[tuple[int, int]]]


def positions(fills: Sequence[dict[str, str]], ids: Sequence[str]) -> Positions:
    """(session, position = order id) -> the stream ids of its fills."""
    out: Positions = {}
    for fields, entry_id in zip(fills, ids, strict=True):
        out.setdefault((fields["session_id"], fields["order_id"]), []).append(stream_id(entry_id))
    return out


@dataclass
class Bench:
    args: argparse.Namespace
    redis: aioredis.Redis
    run: str  # this invocation's key prefix: bench-cov:<random>:
    logs: Path  # the workers' logs
    round: int = 0
    others: Counter[str] = field(default_factory=Counter)  # TP entries other than `created`
    exits: list[str] = field(default_factory=list)  # workers that did not exit 0 on SIGTERM

    def keys(self, phase: str) -> Keys:
        return Keys(f"{self.run}{self.round}:{phase}:")

    def env(self, keys: Keys, consumer: str) -> dict[str, str]:
        return worker_env(
            REDIS_URL=self.args.redis_url,
            MM_KEY_PREFIX=keys.prefix,
            CONSUMER_NAME=consumer,
            CONSUMER_BATCH_SIZE=str(self.args.batch_size),
            TAKEPROFITS_MAXLEN=str(max(100_000, 2 * (self.args.fills + self.args.burst))),
        )

    def worker(self, keys: Keys, consumer: str) -> subprocess.Popen[bytes]:
        phase = keys.prefix.rstrip(":").rsplit(":", 2)[-1]
        path = self.logs / f"{self.round}-{phase}-{consumer}.log"
        with path.open("ab") as log:
            return start_mmops([GROUP], self.env(keys, consumer), log=log)

    def stop(self, workers: Sequence[subprocess.Popen[bytes]]) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            if code != 0:
                self.exits.append(f"worker {worker.pid} exited with {code}")


# --- throughput: 1, 2, 4 processes ----------------------------------------------------------
async def throughput(bench: Bench, processes: int, spy: PySpy | None = None) -> Figures:
    args = bench.args
    keys = bench.keys(f"tp{processes}")
    sid = f"bench-tp{processes}"
    backlog = Backlog.of(
        bench.redis, keys.stream, GROUP, args.fills, lambda n, r: fill_fields(sid, n, r), 7
    )
    label = f"throughput, {processes} process{'es' if processes > 1 else ''}"
    print(f"{label}: queueing {args.fills:,} fills over {len(PAIRS)} pairs", file=sys.stderr)
    await backlog.queue()
    names = [f"bench-cov-{i}" for i in range(processes)]
    workers = [bench.worker(keys, name) for name in names]
    out: Figures = {}
    try:
        await wait_registered(bench.redis, keys.stream, GROUP, names, workers)
        if spy is not None:
            await spy.start(workers[0].pid)
        cpu = sum(cpu_seconds(w.pid) for w in workers)
        server = await redis_cpu(bench.redis)
        started = await backlog.release()
        await wait_drained(
            bench.redis,
            keys.stream,
            GROUP,
            backlog.released_id,
            workers,
            label=f"{label}: draining",
            total=args.fills,
            timeout_s=args.timeout,
        )
        cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu
        server = await redis_cpu(bench.redis) - server
        if spy is not None:
            await spy.stop()
        if processes == 1:
            out |= {"rss_end": rss_mb(workers[0].pid), "rss_peak": rss_mb(workers[0].pid, "VmHWM")}
    finally:
        bench.stop(workers)
    matched = await matched_tps(bench, keys, positions(backlog.fills, backlog.ids))
    seconds = max(1, max(matched.tp_ms, default=started) - started) / 1000
    p = f"tp{processes}"
    return out | {
        p: args.fills / seconds,
        f"{p}_s": seconds,
        f"{p}_cpu_us": cpu / args.fills * 1e6,
        f"{p}_redis_us": server / args.fills * 1e6,
        f"{p}_busy": cpu / seconds / processes * 100,  # % of the drain a worker was on a CPU
        f"{p}_uncovered": matched.uncovered,
        f"{p}_load": load(),
    }


async def redis_cpu(redis: aioredis.Redis) -> float:
    """CPU seconds the Redis server has used (all its clients: it is shared here)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def matched_tps(bench: Bench, keys: Keys, fills: Positions) -> Matched:
    matched = match(fills, await read_tps(bench.redis, keys.takeprofits))
    bench.others.update(matched.others)
    return matched


# --- latency at a steady rate, and the burst: one warm worker ------------------------------
async def steady(
    redis: aioredis.Redis, stream: str, sid: str, rate: int, seconds: float, label: str
) -> tuple[Positions, float]:
    """XADD `rate` fills/s for `seconds` on a fixed schedule (a late round sends what is due);
    the fills, and the rate achieved on Redis's clock."""
    total = max(2, int(rate * seconds))
    rng = random.Random(11)
    fills: Positions = {}
    sent = 0
    first = last = 0
    started = time.perf_counter()
    with Progress(total, label) as progress:
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            if due > sent:
                batch = [fill_fields(sid, n, rng) for n in range(sent, due)]
                ids = await xadd_all(redis, stream, batch)
                fills |= positions(batch, ids)
                first = first or entry_ms(ids[0])
                last = entry_ms(ids[-1])
                progress.advance(due - sent)
                sent = due
            await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))
    return fills, (total - 1) * 1000 / max(1, last - first)


async def live(bench: Bench) -> Figures:
    """One worker: a warm-up, then the steady rate (latency) and the burst."""
    args = bench.args
    keys = bench.keys("live")
    worker = bench.worker(keys, "bench-cov-live")
    sent = 0
    out: Figures = {}

    async def drained(last_id: str, total: int, label: str) -> None:
        nonlocal sent
        await wait_drained(
            bench.redis,
            keys.stream,
            GROUP,
            last_id,
            [worker],
            label=label,
            total=total,
            timeout_s=args.timeout,
            before=sent,
        )
        sent += total

    try:
        await wait_registered(bench.redis, keys.stream, GROUP, ["bench-cov-live"], [worker])
        warm, _ = await steady(
            bench.redis, keys.stream, "bench-warm", args.rate, args.warmup, "warm-up"
        )
        await drained(_last(warm), len(warm), "warm-up: draining")
        if "latency" not in args.skip:
            label = f"latency: {args.rate:,} fills/s for {args.seconds:g} s"
            fills, rate = await steady(
                bench.redis, keys.stream, "bench-lat", args.rate, args.seconds, label
            )
            await drained(_last(fills), len(fills), "latency: draining")
            m = await matched_tps(bench, keys, fills)
            out |= {
                "lat_p50": _pct(m.latencies_ms, 50),
                "lat_p99": _pct(m.latencies_ms, 99),
                "lat_max": max(m.latencies_ms, default=float("nan")),
                "lat_n": m.covered,
                "lat_rate": rate,
                "lat_uncovered": m.uncovered,
                "lat_shared": m.shared,
                "wk_p50": _pct(m.worker_ms, 50),
                "wk_p99": _pct(m.worker_ms, 99),
                "wk_max": max(m.worker_ms, default=float("nan")),
                "lat_load": load(),
            }
        if "burst" not in args.skip:
            out |= await burst(bench, keys, drained)
        out |= {"live_rss_end": rss_mb(worker.pid), "live_rss_peak": rss_mb(worker.pid, "VmHWM")}
    finally:
        bench.stop([worker])
    return out


async def burst(
    bench: Bench, keys: Keys, drained: Callable[[str, int, str], Awaitable[None]]
) -> Figures:
    count = bench.args.burst
    rng = random.Random(13)
    batch = [fill_fields("bench-burst", n, rng) for n in range(count)]
    print(f"burst: {count:,} fills in one pipeline", file=sys.stderr)
    async with bench.redis.pipeline(transaction=False) as pipe:
        for fields in batch:
            pipe.xadd(keys.stream, fields)  # type: ignore[arg-type]
        ids = [as_text(i) for i in await pipe.execute()]
    await drained(ids[-1], count, "burst: draining")
    m = await matched_tps(bench, keys, positions(batch, ids))
    first = entry_ms(ids[0])
    return {
        "burst_ms": max(m.tp_ms, default=first) - first,
        "burst_xadd_ms": entry_ms(ids[-1]) - first,
        "burst_p50": _pct(m.latencies_ms, 50),
        "burst_p99": _pct(m.latencies_ms, 99),
        "burst_uncovered": m.uncovered,
        "burst_load": load(),
    }


def _last(fills: Positions) -> str:
    ms, seq = max(max(ids) for ids in fills.values())
    return f"{ms}-{seq}"


def _pct(values: Sequence[float], pct: float) -> float:
    found = percentile(values, pct)
    return float("nan") if found is None else found


# --- the floor: a bare XREADGROUP + XACK loop ----------------------------------------------
async def floor(bench: Bench) -> Figures:
    args = bench.args
    keys = bench.keys("floor")
    backlog = Backlog.of(
        bench.redis, keys.stream, "floor", args.fills, lambda n, r: fill_fields("fl", n, r), 7
    )
    print(f"floor: queueing {args.fills:,} fills", file=sys.stderr)
    await backlog.queue()
    proc = floor_process.start(
        args.redis_url, keys.stream, "floor", "floor", args.fills, worker_env()
    )
    try:
        await wait_registered(bench.redis, keys.stream, "floor", ["floor"], [proc])
        cpu = cpu_seconds(proc.pid)
        server = await redis_cpu(bench.redis)
        started = await backlog.release()
        print("floor: draining", file=sys.stderr)
        report = await asyncio.to_thread(floor_process.report, proc, args.timeout)
        server = await redis_cpu(bench.redis) - server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = max(1.0, report["end_us"] / 1000 - started) / 1000
    return {
        "floor": report["acked"] / seconds,
        "floor_s": seconds,
        "floor_cpu_us": (report["cpu_s"] - cpu) / report["acked"] * 1e6,
        "floor_redis_us": server / report["acked"] * 1e6,
        "floor_load": load(),
    }


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
