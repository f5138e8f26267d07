"""Soak: is Redis memory bounded by open work, not by history? (issue 10, contract §3 Retention)

Runs the real workers as processes (coverage, migrator, sweeper) against a redis-server
of its own (so `used_memory` is this run's alone) and a PostgreSQL schema of its own,
and `mmops simulate --rolling` for `--duration` seconds at about `--rate` buy fills per
second (with the TP fills, session starts and ends, about twice that in events) over
rolling sessions that end with live TPs, whose TPs fill after the end, and that close.
SESSION_RETENTION_DAYS is shortened to `--retention-minutes`, the input stream's
retention to a minute, the output streams' caps to a few thousand entries.

Every `--sample` seconds it records Redis `used_memory`, the number of keys, the
streams' lengths, the sessions Redis still holds, the paper exchange's records and the
workers' RSS, and prints them as a table over time. Memory must be flat after the
warm-up (retention + a session's life + its close + two sweeper intervals): the verdict
compares the median `used_memory` of the last third of the samples with that of the
middle third (flat: at most 10 % more).

    .venv/bin/python -m bench.soak [--duration 600] [--rate 25] [--retention-minutes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, rss_mb
from mmops.reporting import render_table
from storage.keys import Keys
from storage.servers import RedisProcess, free_port

WORKERS = ("coverage", "migrator", "sweeper")
SWEEP_INTERVAL_MIN = Decimal("0.25")


@dataclass
class Sample:
    t: float
    used_mb: float
    keys: int
    events: int  # entries ever added to the input stream
    stream: int  # its length now
    takeprofits: int
    alerts: int
    dead: int
    sessions: int  # sessions Redis still holds (mm:sessions)
    paper_orders: int
    seen_fills: int
    rss: dict[str, float] = field(default_factory=dict)


class OwnRedis(RedisProcess):
    """The machine's redis-server when there is one (XINFO's entries-added needs Redis 7)."""

    def start(self, timeout: float = 10.0) -> RedisProcess:
        found = shutil.which("redis-server")
        if found is None:
            return super().start(timeout)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [found, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                subprocess.run(
                    [found.replace("redis-server", "redis-cli"), "-p", str(self.port), "ping"],
                    capture_output=True,
                    check=True,
                    timeout=2,
                )
                return self
            except (subprocess.SubprocessError, OSError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


def environment(args: argparse.Namespace, redis_url: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    env.update(
        PYTHONPATH=str(ROOT),
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        EXCHANGE="paper",
        PAPER_BALANCES="USD=100000000",
        LOG_LEVEL=args.log_level,
        SESSION_LOG_DIR="",
        SETTLEMENT_INTERVAL_MINUTES=str(SWEEP_INTERVAL_MIN),
        SESSION_RETENTION_DAYS=str(Decimal(args.retention_minutes) / 1440),
        MM_STREAM_RETENTION_HOURS="0.02",  # 72 s
        TAKEPROFITS_MAXLEN="5000",
        ALERTS_MAXLEN="1000",
        DEAD_MAXLEN="1000",
    )
    return env


async def sample(
    redis: aioredis.Redis, keys: Keys, t: float, procs: dict[str, subprocess.Popen[bytes]]
) -> Sample:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.dbsize()
        pipe.xlen(keys.stream)
        pipe.xlen(keys.takeprofits)
        pipe.xlen(keys.alerts)
        pipe.xlen(keys.dead)
        pipe.zcard(keys.sessions)
        pipe.hlen(keys.paper("orders"))
        pipe.scard(keys.paper("seen_fills"))
        memory, size, stream, tps, alerts, dead, sessions, orders, seen = await pipe.execute()
    try:
        added = int((await redis.xinfo_stream(keys.stream)).get("entries-added") or 0)
    except aioredis.ResponseError:
        added = 0
    rss = {name: rss_mb(p.pid) for name, p in procs.items() if p.poll() is None}
    return Sample(
        t,
        memory["used_memory"] / 2**20,
        size,
        added,
        stream,
        tps,
        alerts,
        dead,
        sessions,
        orders,
        seen,
        rss,
    )


def start(
    args: list[str], env: dict[str, str], name: str, log_dir: Path
) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "mmops", *args],
        env={**env, "CONSUMER_NAME": f"soak-{name}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def verdict(samples: list[Sample]) -> tuple[bool, str]:
    third = max(1, len(samples) // 3)
    middle = statistics.median(s.used_mb for s in samples[third : 2 * third])
    last = statistics.median(s.used_mb for s in samples[2 * third :])
    flat = last <= middle * 1.10
    return flat, (
        f"used_memory median, middle third of the run {middle:.2f} MB, last third {last:.2f} MB "
        f"({(last / middle - 1) * 100:+.1f} %): {'FLAT' if flat else 'GROWING'} "
        "(flat: at most +10 %)"
    )


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mmops-soak-"))
    server = OwnRedis(free_port(), workdir / "redis").start()
    schema = f"soak_{secrets.token_hex(4)}"
    base_db = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    conn = await asyncpg.connect(base_db)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    env = environment(args, server.url, with_schema(base_db, schema))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    samples: list[Sample] = []
    redis = aioredis.Redis.from_url(server.url)
    keys = Keys()
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mmops", "db", "upgrade"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        for name in WORKERS:
            procs[name] = start([name], env, name, workdir)
        sim = start(
            [
                "simulate",
                "--rolling",
                "--sessions",
                str(args.sessions),
                "--session-seconds",
                str(args.session_seconds),
                "--close-within",
                str(args.close_within),
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--pairs",
                "10",
                "--seed",
                str(args.seed),
            ],
            env,
            "simulate",
            workdir,
        )
        began = time.monotonic()
        while True:
            t = time.monotonic() - began
            samples.append(await sample(redis, keys, t, procs))
            print(
                f"soak {t:5.0f} s: used_memory {samples[-1].used_mb:.2f} MB, keys "
                f"{samples[-1].keys}",
                file=sys.stderr,
            )
            if sim.poll() is not None:
                break
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"worker(s) {', '.join(dead)} exited; logs in {workdir}")
            await asyncio.sleep(args.sample)
        if sim.returncode != 0:
            raise RuntimeError(f"the simulator failed; log in {workdir / 'simulate.log'}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        await redis.aclose()
        server.stop()
        conn = await asyncpg.connect(base_db)
        migrated = 0
        if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.sessions"):
            migrated = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".sessions WHERE migrated_at IS NOT NULL'
            )
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    rows = [
        [
            f"{s.t:.0f}",
            f"{s.used_mb:.2f}",
            s.keys,
            s.events,
            s.stream,
            s.takeprofits,
            s.alerts,
            s.dead,
            s.sessions,
            s.paper_orders,
            s.seen_fills,
            " ".join(f"{s.rss.get(n, float('nan')):.0f}" for n in WORKERS),
        ]
        for s in samples
    ]
    print(
        f"soak: {args.duration:.0f} s of `mmops simulate --rolling` ({args.sessions} sessions "
        f"live, {args.session_seconds:.0f} s each, TPs filled within {args.close_within:.0f} s "
        f"after the end), {args.rate:g} buy fills/s; SESSION_RETENTION_DAYS = "
        f"{args.retention_minutes} min, sweeper every {SWEEP_INTERVAL_MIN * 60} s; own redis-server"
    )
    print(
        render_table(
            [
                "t s",
                "used_memory MB",
                "keys",
                "events",
                "mm:events",
                "mm:takeprofits",
                "mm:alerts",
                "mm:dead",
                "sessions",
                "paper orders",
                "seen fills",
                "RSS MB cov/mig/swp",
            ],
            rows,
            rule=True,
        )
    )
    flat, text = verdict(samples)
    print(text)
    print(f"sessions migrated to PostgreSQL during the run: {migrated}; worker logs: {workdir}")
    return 0 if flat else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of trading")
    parser.add_argument("--rate", type=float, default=25.0, help="buy fills per second")
    parser.add_argument("--sessions", type=int, default=6, help="sessions live at once")
    parser.add_argument("--session-seconds", type=float, default=60.0)
    parser.add_argument("--close-within", type=float, default=40.0)
    parser.add_argument("--retention-minutes", type=float, default=2.0)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="WARN", help="of the workers (logs in a temp dir)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
