"""Scaling benchmark: MM_STREAM_SHARDS x `mmops coverage` processes, on a local Redis Cluster.

For every cell (shards S, processes P), with fresh keys:
(a) throughput: F buy fills (over many sessions, so over every shard) are queued, then P
    coverage processes drain them; fills/s from the first to the last `created` entry of
    `mm:takeprofits`, on Redis's clock (stream ids), so process start-up is not counted;
(b) latency: a steady R fills/s for D s; per fill, its stream id -> the id of its TP's
    `created` entry, p50/p99/max (Redis's clock again: on one machine the nodes share it).

    python -m bench.cluster [--shards 1,2,4] [--processes 1,2,4] [--fills 20000]
                            [--rate 500] [--seconds 10] [--single [--redis-url URL]]

By default it starts its own cluster (3 masters, storage/local_cluster.py, the same as the
tests' fixture) with REDIS_CLUSTER=true; --single uses one Redis (REDIS_URL). A cell whose
workers do not finish within --timeout is reported with what they did.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import start_mmops, worker_env
from bench.coverage import fill_fields
from mmops.reporting import percentile, render_table
from storage import redis as redis_store
from storage.keys import Keys
from storage.local_cluster import LocalCluster
from storage.redis import AnyRedis, as_text

SESSIONS = 64  # sessions the fills are spread over (and so the shards)


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    cluster: bool


@dataclass
class Cell:
    shards: int
    processes: int
    throughput: float | None = None
    latencies: list[float] | None = None
    note: str = ""

    def row(self) -> list[object]:
        lat = self.latencies or []
        return [
            self.shards,
            self.processes,
            "-" if self.throughput is None else f"{self.throughput:,.0f}",
            f"{percentile(lat, 50):.0f}" if lat else "-",
            f"{percentile(lat, 99):.0f}" if lat else "-",
            f"{max(lat):.0f}" if lat else "-",
            self.note,
        ]


def ms(entry_id: object) -> int:
    return int(as_text(entry_id).split("-", 1)[0])


async def send(redis: AnyRedis, keys: Keys, fills: list[dict[str, str]]) -> dict[str, int]:
    """XADD each fill to its session's shard; order_id -> the fill's stream time (ms)."""
    sent: dict[str, int] = {}
    for start in range(0, len(fills), 2000):
        batch = fills[start : start + 2000]
        async with redis.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(keys.stream_for(fields["session_id"]), fields)  # type: ignore[arg-type]
            ids = await pipe.execute()
        sent.update({f["order_id"]: ms(i) for f, i in zip(batch, ids, strict=True)})
    return sent


STALL_S = 20.0  # no new TP for this long: the cell is stopped and reported as stalled


async def wait_for_tps(
    redis: AnyRedis, keys: Keys, count: int, workers: list[subprocess.Popen[bytes]], within_s: float
) -> str:
    """'' once mm:takeprofits has `count` entries; else why not (a worker exited, no
    progress for STALL_S, or the time is up)."""
    deadline = time.monotonic() + within_s
    progress, seen = time.monotonic(), -1
    while (have := int(await redis.xlen(keys.takeprofits))) < count:
        dead = [w.returncode for w in workers if w.poll() is not None]
        if dead:
            return f"worker exited ({dead[0]}); {have}/{count} TPs"
        now = time.monotonic()
        if have != seen:
            progress, seen = now, have
        if now - progress > STALL_S:
            return f"stalled: {have}/{count} TPs, none for {STALL_S:.0f} s (see the workers' log)"
        if now > deadline:
            return f"timeout: {have}/{count} TPs in {within_s:.0f} s"
        await asyncio.sleep(0.05)
    return ""


async def created_since(redis: AnyRedis, keys: Keys, after: str) -> list[tuple[int, str]]:
    """(id ms, position_id) of the `created` entries after stream id `after`."""
    out: list[tuple[int, str]] = []
    for entry_id, fields in await redis.xrange(keys.takeprofits, min=f"({after}"):
        if fields.get(b"type") == b"created":
            out.append((ms(entry_id), as_text(fields.get(b"position_id", b""))))
    return out


async def run_cell(target: Target, cell: Cell, args: argparse.Namespace) -> None:
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    keys = Keys(prefix, "mm:events", cell.shards)
    redis = await redis_store.connect(target.url, cluster=target.cluster)
    env = worker_env(
        REDIS_URL=target.url,
        REDIS_CLUSTER=str(target.cluster).lower(),
        MM_STREAM_SHARDS=str(cell.shards),
        MM_KEY_PREFIX=prefix,
        CONSUMER_BATCH_SIZE="200",
    )
    rng = random.Random(cell.shards * 10 + cell.processes)
    sids = [f"bench-{n}" for n in range(SESSIONS)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # (a) drain what is queued
        await send(
            redis, keys, [fill_fields(sids[n % SESSIONS], n, rng) for n in range(args.fills)]
        )
        workers = [
            start_mmops(["coverage"], {**env, "CONSUMER_NAME": f"bench-{i}"})
            for i in range(cell.processes)
        ]
        cell.note = await wait_for_tps(redis, keys, args.fills, workers, args.timeout)
        created = await created_since(redis, keys, "0-0")
        if cell.note or len(created) < 2:
            return
        cell.throughput = (len(created) - 1) * 1000 / max(1, created[-1][0] - created[0][0])

        # (b) a steady rate
        last = as_text((await redis.xrevrange(keys.takeprofits, count=1))[0][0])
        total = args.rate * args.seconds
        sent: dict[str, int] = {}
        t0 = time.perf_counter()
        done = 0
        while done < total:
            due = min(total, int((time.perf_counter() - t0) * args.rate))
            if due > done:
                batch = [
                    fill_fields(sids[n % SESSIONS], args.fills + n, rng) for n in range(done, due)
                ]
                sent.update(await send(redis, keys, batch))
                done = due
            await asyncio.sleep(0.002)
        cell.note = await wait_for_tps(redis, keys, args.fills + total, workers, args.timeout)
        cell.latencies = [
            float(at - sent[pos])
            for at, pos in await created_since(redis, keys, last)
            if pos in sent
        ]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        async for key in redis.scan_iter(match=f"{prefix}*", count=5000):
            await redis.unlink(key)
        await redis.aclose()


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shards", type=counts, default=[1, 2, 4], metavar="1,2,4")
    parser.add_argument("--processes", type=counts, default=[1, 2, 4], metavar="1,2,4")
    parser.add_argument("--fills", type=int, default=20_000, help="queued for (a)")
    parser.add_argument("--rate", type=int, default=500, help="fills/s for (b)")
    parser.add_argument("--seconds", type=int, default=10, help="duration of (b)")
    parser.add_argument("--timeout", type=float, default=120, help="per phase of a cell")
    parser.add_argument("--single", action="store_true", help="one Redis (REDIS_URL), no cluster")
    parser.add_argument("--redis-url", default=None, help="with --single (default REDIS_URL)")
    args = parser.parse_args()

    cluster: LocalCluster | None = None
    if args.single:
        url = args.redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        target = Target(url, cluster=False)
    else:
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="mmops-bench-cluster-"))).start()
        target = Target(cluster.url, cluster=True)
    cells = [Cell(s, p) for s in args.shards for p in args.processes]
    try:
        for cell in cells:
            await run_cell(target, cell, args)
    finally:
        if cluster is not None:
            cluster.stop()
    where = (
        "one Redis"
        if args.single
        else f"a local cluster of 3 masters ({cluster and cluster.binary})"
    )
    print(
        f"coverage on {where}: (a) {args.fills} fills queued then drained; "
        f"(b) {args.rate} fills/s for {args.seconds} s"
    )
    headers = [
        "SHARDS",
        "PROCESSES",
        "FILLS/S (a)",
        "P50 MS (b)",
        "P99 MS (b)",
        "MAX MS (b)",
        "NOTE",
    ]
    print(render_table(headers, [cell.row() for cell in cells], rule=True))


if __name__ == "__main__":
    asyncio.run(main())
