"""One chaos run, end to end: servers, workers, traffic under faults, quiescence, the check."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis

from bench.chaos import processes
from bench.chaos.checker import Checker, Violation
from bench.chaos.config import ChaosConfig
from bench.chaos.faults import Injector
from bench.chaos.oracle import Expected, expected
from bench.chaos.pg_proxy import PgProxy
from bench.chaos.traffic import Traffic
from storage.keys import Keys
from trading.paper import PaperExchange

MAXLEN = {"takeprofits": 100_000, "alerts": 10_000, "dead": 10_000}
Progress = Callable[[str], None]
KEEP = bool(os.environ.get("CHAOS_KEEP"))  # keep the database and the run's directory


@dataclass
class RunResult:
    config: ChaosConfig
    violations: list[Violation] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[tuple[float, str, str]] = field(default_factory=list)
    events: int = 0
    traffic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    workdir: str = ""


def worker_env(config: ChaosConfig, redis_url: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MM_", "PYTEST", "MMOPS_"))}
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        MM_STREAM_SHARDS=str(config.shards),
        CONSUMER_BLOCK_MS="100",
        RECLAIM_IDLE_MS="1500",
        SETTLEMENT_INTERVAL_MINUTES="0.05",
        MIGRATION_SYNC_SECONDS="1",
        MIGRATION_GRACE_MINUTES="0.2",
        PAPER_BALANCES="USD=1000000000",
        PAPER_FAULTS=config.paper_faults if config.faults else "",
        SESSION_LOG_DIR="",
        LOG_LEVEL="WARN",
        TAKEPROFITS_MAXLEN=str(MAXLEN["takeprofits"]),
        ALERTS_MAXLEN=str(MAXLEN["alerts"]),
        DEAD_MAXLEN=str(MAXLEN["dead"]),
        PYTHONPATH=str(processes.ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


async def run_once(config: ChaosConfig, progress: Progress = print) -> RunResult:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"mmops-chaos-{config.seed}-"))
    result = RunResult(config, workdir=str(workdir))
    server = await asyncio.to_thread(processes.own_redis, workdir / "redis")
    db_name = await processes.create_database(config.seed)
    direct_url = processes.database_url(db_name)
    proxy = await PgProxy(direct_url).start()
    client = aioredis.Redis.from_url(server.url)
    keys = Keys("", "mm:events", config.shards)
    exchange = PaperExchange(redis=client, keys=keys)
    env = worker_env(config, server.url, proxy.url)
    workers = processes.Workers(config, env, workdir / "logs")
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mmops", "db", "upgrade"],
            env={**env, "DATABASE_URL": direct_url},
            cwd=processes.ROOT,
            check=True,
            capture_output=True,
        )
        workers.start_all()
        traffic = Traffic(config, client, keys, exchange)

        async def reconnect() -> None:
            await client.connection_pool.disconnect()

        injector = Injector(config, workers, server, proxy, traffic.gate, reconnect)
        faults = asyncio.create_task(injector.run()) if config.faults else None
        reporter = asyncio.create_task(_report(traffic, injector, progress, started))
        try:
            await traffic.run()
        finally:
            injector.stopping.set()
            if faults is not None:
                await faults
            reporter.cancel()
        await injector.settle()
        progress(f"quiescence: faults stopped after {time.monotonic() - started:.0f}s")
        exp = expected(
            ((s.stream, s.entry_id, s.fields, s.invalid) for s in traffic.record.sent),
            traffic.record.tp_owner,
        )
        _write_record(traffic, workdir / "sent.jsonl")
        result.violations = await _quiesce_and_check(
            config, exp, client, keys, exchange, direct_url, env, workdir
        )
        await asyncio.to_thread(workers.stop_all)
        result.violations += [
            Violation("worker.sigterm_exit", name, f"exit code {code} after SIGTERM")
            for name, code in workers.bad_exits
        ]
        result.faults = injector.counts + Counter(await exchange.fault_counts())
        result.fault_log = injector.log
        result.events = traffic.events
        result.traffic = {k: int(v) for k, v in vars(traffic.trader.stats).items()}
    finally:
        for w in workers.pool:
            workers.kill(w)
        await client.aclose()
        await proxy.close()
        await asyncio.to_thread(server.kill)
        if KEEP:
            progress(f"kept database {db_name}")
        else:
            await processes.drop_database(db_name)
    result.seconds = time.monotonic() - started
    if not result.violations and not KEEP:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


async def _quiesce_and_check(
    config: ChaosConfig,
    exp: Expected,
    client: aioredis.Redis,
    keys: Keys,
    exchange: PaperExchange,
    direct_url: str,
    env: dict[str, str],
    workdir: Path,
) -> list[Violation]:
    """Let the workers drain, sweep once, then check until clean or out of time (the last
    check's violations are the run's)."""
    deadline = time.monotonic() + config.quiesce_timeout
    pg = await asyncpg.connect(direct_url)
    try:
        checker = Checker(exp, client, keys, exchange, pg, MAXLEN)
        swept = False
        while True:
            violations = await checker.run()
            drained = not any(v.check.startswith("stream.") for v in violations)
            if drained and not swept:
                swept = True
                await asyncio.to_thread(processes.run_sweep_once, env, workdir / "final-sweep.log")
                await asyncio.sleep(2.0)
                continue
            if (swept and not violations) or time.monotonic() > deadline:
                return violations
            await asyncio.sleep(1.0)
    finally:
        await pg.close()


def _write_record(traffic: Traffic, path: Path) -> None:
    """The oracle's input, for a look at a failing run (removed with the run's directory)."""
    with path.open("wb") as out:
        for s in traffic.record.sent:
            fields = [[k.decode(errors="replace"), v.decode(errors="replace")] for k, v in s.fields]
            out.write(orjson.dumps([s.stream, s.entry_id, fields, s.invalid]) + b"\n")
        out.write(orjson.dumps({"tp_owner": traffic.record.tp_owner}) + b"\n")


async def _report(traffic: Traffic, injector: Injector, progress: Progress, t0: float) -> None:
    while True:
        await asyncio.sleep(5.0)
        faults = " ".join(f"{k}={v}" for k, v in sorted(injector.counts.items()))
        progress(f"{time.monotonic() - t0:6.0f}s  events {traffic.events}  faults: {faults or '-'}")
