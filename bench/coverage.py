"""Coverage benchmark: one `mmops coverage` process, real Redis, paper exchange.

(a) max sustained fills/s: N fills over 10 pairs are queued, then one worker drains them;
(b) latency_ms (fill XADD -> exchange ack) p50/p99/max at a steady rate;
(c) the worker's RSS at the end.

    python -m bench.coverage [--fills 100000] [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid

import redis.asyncio as aioredis

from bench.common import rss_mb, start_mmops, worker_env
from mmops.reporting import percentile, render_table
from storage.keys import Keys
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


async def queue_fills(r: aioredis.Redis, keys: Keys, sid: str, count: int) -> None:
    rng = random.Random(7)
    for start in range(0, count, 5000):
        async with r.pipeline(transaction=False) as pipe:
            for n in range(start, min(count, start + 5000)):
                pipe.xadd(keys.stream, fill_fields(sid, n, rng))
            await pipe.execute()


async def processed(r: aioredis.Redis, keys: Keys) -> int:
    groups = await r.xinfo_groups(keys.stream)
    for g in groups:
        if g["name"] in (b"coverage", "coverage"):
            return int(g.get("entries-read") or 0) - int(g["pending"])
    return 0


async def wait_processed(r: aioredis.Redis, keys: Keys, target: int, label: str) -> None:
    last = -1
    while (done := await processed(r, keys)) < target:
        if done != last and sys.stderr.isatty():
            print(f"\r{label}: {done}/{target}", end="", file=sys.stderr)
        last = done
        await asyncio.sleep(0.05)
    if sys.stderr.isatty():
        print(file=sys.stderr)


async def cleanup(r: aioredis.Redis, prefix: str) -> None:
    async for key in r.scan_iter(match=f"{prefix}*", count=5000):
        await r.unlink(key)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fills", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    import os

    redis_url = args.redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    keys = Keys(prefix)
    r = aioredis.Redis.from_url(redis_url)
    env = worker_env(
        REDIS_URL=redis_url, MM_KEY_PREFIX=prefix, CONSUMER_NAME="bench", CONSUMER_BATCH_SIZE="200"
    )
    rows: list[list[object]] = []
    try:
        # (a) throughput: queue everything first, then one worker drains it
        print(f"queueing {args.fills} fills over {len(PAIRS)} pairs ...", file=sys.stderr)
        await queue_fills(r, keys, "bench-a", args.fills)
        worker = start_mmops(["coverage"], env)
        started = time.perf_counter()
        await wait_processed(r, keys, args.fills, "draining")
        elapsed = time.perf_counter() - started
        created = await r.xlen(keys.takeprofits)
        rows.append(
            [
                "(a) sustained throughput",
                f"{args.fills / elapsed:,.0f} fills/s",
                f"{args.fills} fills in {elapsed:.1f} s incl. start-up; {created} TPs created",
                ">= 5,000 fills/s",
            ]
        )

        # (b) latency at a steady rate
        await r.delete(keys.takeprofits)
        rng = random.Random(11)
        total = args.rate * args.seconds
        base = args.fills
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            due = int((time.perf_counter() - t0) * args.rate)
            if due > sent:
                async with r.pipeline(transaction=False) as pipe:
                    for n in range(sent, min(due, total)):
                        pipe.xadd(keys.stream, fill_fields("bench-b", base + n, rng))
                    await pipe.execute()
                sent = min(due, total)
            await asyncio.sleep(0.001)
        await wait_processed(r, keys, args.fills + total, "steady")
        latencies = []
        for _, fields in await r.xrange(keys.takeprofits):
            if fields.get(b"type") == b"created" and fields.get(b"latency_ms"):
                latencies.append(float(fields[b"latency_ms"]))
        rows.append(
            [
                f"(b) latency_ms at {args.rate} fills/s",
                f"p50 {percentile(latencies, 50) or 0:.0f} / p99 {percentile(latencies, 99) or 0:.0f} / max {max(latencies):.0f} ms",
                f"{len(latencies)} TPs over {args.seconds} s",
                "p99 <= 10 ms",
            ]
        )
        rows.append(
            [
                "(c) worker RSS at the end",
                f"{rss_mb(worker.pid):.0f} MB",
                f"peak {rss_mb(worker.pid, 'VmHWM'):.0f} MB",
                "<= 150 MB",
            ]
        )
        worker.terminate()
        worker.wait(30)
    finally:
        await cleanup(r, prefix)
        await r.aclose()
    print(render_table(["measure", "result", "detail", "target"], rows, rule=True))
    print(
        f"\nreproduce: python -m bench.coverage --fills {args.fills} --rate {args.rate} --seconds {args.seconds}"
    )


if __name__ == "__main__":
    asyncio.run(main())
