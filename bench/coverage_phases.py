"""The coverage benchmark's phases (bench/coverage.py says what each measures): the fills,
the workers, and the throughput, latency, burst and floor measurements of one run."""

from __future__ import annotations

import argparse
import asyncio
import random
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
from bench.common import cpu_seconds, load, rss_mb, start_mmops, worker_env
from bench.coverage_report import Figures
from bench.hotpath import PySpy
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
