"""The sweeper: the safety net that replaces the 3-minute cron.

Every SETTLEMENT_INTERVAL_MINUTES exactly one sweeper across all processes, the holder of
the lease (workers/lease.py), runs one pass; each phase fails on its own and is recorded
in the SweepReport:

1. stream care (workers/stream_care.py): stuck entries, dead consumers, dead letters;
   a group with no live consumer is taken over;
2. one `open_orders()` snapshot of the exchange (workers/reconcile.py);
3. session discovery (workers/discovery.py): Redis indexes plus PostgreSQL's recent sessions;
4. each session under its lock (workers/sweep_pass.py): reconcile, settle, reprice, cover;
5. open orders with our client-id prefix that no position knows -> alert `unknown_order`;
6. the portfolio's daily loss limit (workers/risk.py);
7. the migration safety net: sessions ended long ago and not migrated;
8. stream retention (workers/retention.py).

SIGTERM finishes the pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from base import logs
from base.clock import iso
from base.logs import one_line
from storage.locks import Lease
from storage.redis import TRANSIENT_REDIS_ERRORS, as_text
from trading.exchange import ExchangeError
from workers import retention
from workers.discovery import RecentSessions, discover
from workers.lease import LeaseKeeper, lease_ttl_ms
from workers.parts import TradingParts
from workers.reconcile import OpenBook, open_book, unknown_orders
from workers.risk import RiskGuard, RiskReport
from workers.session_view import FiguresCache
from workers.stream_care import SWEEPER_CONSUMER_PREFIX, StreamCare, StreamReport
from workers.sweep_pass import SessionReport, SessionSweep, SweepStatus

if TYPE_CHECKING:
    from workers.migrator import MigratorHandler

log = logs.get("mmops.sweeper")

SESSION_CONCURRENCY = 8
PAIR_CONCURRENCY = 32


@dataclass
class SweepReport:
    """What one pass found and did: per session, per phase, and its notes and errors."""

    started_at: int
    by: str
    duration_ms: int = 0
    sessions: list[SessionReport] = field(default_factory=list)
    discovered: int = 0
    truncated: bool = False
    stream: StreamReport = field(default_factory=StreamReport)
    open_orders: int | None = None  # None: the exchange could not be asked
    unknown_orders: list[str] = field(default_factory=list)
    risk: RiskReport | None = None
    migrations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    phases_ms: dict[str, int] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.sessions)

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.status != SweepStatus.FAILED for s in self.sessions)


# --- the sweeper ---------------------------------------------------------------------
class Sweeper:
    """`run()` until app.stop (lease-guarded loop), `run_once()` for one pass, `close()`."""

    def __init__(self, app: TradingParts) -> None:
        self.app = app
        self.settings = app.settings
        self.keys = app.keys
        self.redis = app.redis
        self.name = app.settings.consumer
        self.consumer = SWEEPER_CONSUMER_PREFIX + self.name
        self.lease = Lease(
            app.redis,
            app.keys.sweeper_lease,
            self.name,
            lease_ttl_ms(app.settings.interval_seconds),
        )
        self.keeper = LeaseKeeper(self.lease)
        self.cache = FiguresCache(app.settings.tier_hours)
        self.sessions = SessionSweep(app, self.cache, pair_concurrency=PAIR_CONCURRENCY)
        self.streams = StreamCare(app, self.consumer)
        self.risk = RiskGuard(app)
        self.recent = RecentSessions(app.settings.database_url)
        self._reported: set[str] = set()  # unknown orders and overdue migrations already alerted
        self._migrator: MigratorHandler | None = None  # its pool serves the migration safety net

    @classmethod
    async def create(cls, app: TradingParts) -> Sweeper:
        return cls(app)

    async def close(self) -> None:
        await self.recent.close()
        if self._migrator is not None:
            await self._migrator.close()
            self._migrator = None
        with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
            await self.lease.release()

    # --- the loop --------------------------------------------------------------------
    async def run(self) -> None:
        """Hold (or wait for) the lease and sweep every interval until app.stop."""
        loop = asyncio.get_running_loop()
        interval = self.settings.interval_seconds
        renew_every = self.keeper.every
        await self.keeper.refresh()
        keeper = asyncio.ensure_future(self.keeper.run())
        next_pass = loop.time()
        try:
            while not self.app.stop.is_set():
                if self.lease.held and loop.time() >= next_pass:
                    next_pass = loop.time() + interval
                    try:
                        await self.run_once()
                    except TRANSIENT_REDIS_ERRORS as exc:
                        log.warning("sweep interrupted, Redis unreachable: %s", one_line(exc))
                    continue
                wait = max(0.0, next_pass - loop.time()) if self.lease.held else renew_every
                await _wait(self.app.stop, min(wait, renew_every))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
                await self.lease.release()

    # --- one pass --------------------------------------------------------------------
    async def run_once(self) -> SweepReport:
        """One full pass; phases fail independently and are recorded in the report."""
        started = time.perf_counter()
        report = SweepReport(started_at=self.app.clock.now_ms(), by=self.name)
        await self._phase(report, "stream", self.streams.check(report.stream))
        book = await self._phase(report, "open orders", self._book(report))
        found = await self._phase(report, "discovery", discover(self.app, self.recent))
        if found is not None:
            report.discovered, report.truncated = len(found.sessions), found.truncated
            report.notes += found.notes
            await self._phase(
                report, "sessions", self._sweep_sessions(found.sessions, book, report)
            )
            if book is not None and not found.truncated:
                await self._phase(report, "unknown orders", self._unknown_orders(book, report))
            await self._phase(report, "open index", self._index_open(found.sessions))
            report.risk = await self._phase(report, "risk", self.risk.check(self.cache.sessions))
            if report.risk is not None:
                report.errors += report.risk.errors
        await self._phase(report, "migrations", self._overdue_migrations(report))
        await self._phase(report, "retention", self._retention(report))
        report.duration_ms = int((time.perf_counter() - started) * 1000)
        await self._phase(report, "state", self._record(report))
        log.info(
            "sweep: %d sessions, uncovered %d -> %d, covered %d, repriced %d, errors %d, %d ms",
            len(report.sessions),
            report.total("uncovered_before"),
            report.total("uncovered_after"),
            report.total("covered"),
            report.total("repriced"),
            report.total("error_count") + len(report.errors),
            report.duration_ms,
        )
        return report

    async def _retention(self, report: SweepReport) -> None:
        """MM_STREAM_RETENTION_HOURS: trim each shard of the input stream, never past what
        every group of that shard acked."""
        for result in await retention.trim_all(self.app):
            if result.removed:
                where = f" of {result.stream}" if self.keys.shards > 1 else ""
                report.notes.append(
                    f"retention: trimmed {result.removed} entries{where} below {result.min_id} "
                    f"({result.reason})"
                )

    async def _phase(self, report: SweepReport, name: str, work: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await work
        except Exception as exc:  # the safety net keeps its other duties when one phase fails
            log.warning(
                "sweep phase %s failed: %s",
                name,
                one_line(exc),
                exc_info=not isinstance(exc, TRANSIENT_REDIS_ERRORS),
            )
            report.errors.append(f"{name}: {type(exc).__name__}: {one_line(exc)}")
            return None
        finally:
            report.phases_ms[name] = int((time.perf_counter() - started) * 1000)

    async def _book(self, report: SweepReport) -> OpenBook | None:
        try:
            book = await open_book(self.app.exchange, self.app.clock)
        except ExchangeError as exc:
            report.notes.append(
                f"exchange open orders unavailable, no reconciliation: {one_line(exc)}"
            )
            log.warning(report.notes[-1])
            return None
        report.open_orders = len(book.orders)
        return book

    async def _sweep_sessions(
        self, sids: list[str], book: OpenBook | None, report: SweepReport
    ) -> None:
        limit = asyncio.Semaphore(SESSION_CONCURRENCY)

        async def one(sid: str) -> SessionReport:
            async with limit:
                try:
                    return await self.sessions.run(sid, book)
                except Exception as exc:
                    log.warning(
                        "sweep of session %s failed: %s",
                        sid,
                        one_line(exc),
                        extra={"session_id": sid},
                    )
                    failed = SessionReport(sid, status=SweepStatus.FAILED)
                    failed.error(f"{type(exc).__name__}: {one_line(exc)}")
                    return failed

        report.sessions = list(await asyncio.gather(*(one(sid) for sid in sids)))
        self.cache.keep_only(sids)

    async def _unknown_orders(self, book: OpenBook, report: SweepReport) -> None:
        views = self.cache.sessions.values()
        for order in unknown_orders(book, views):
            report.unknown_orders.append(order.id)
            if order.id in self._reported:
                continue
            self._reported.add(order.id)
            await self.app.alert(
                "unknown_order",
                f"open order {order.id} ({order.symbol}, {order.remaining} @ {order.price}) carries our "
                "client id prefix but no position knows it",
                order_id=order.id,
                client_order_id=order.client_id or "",
                symbol=order.symbol,
            )

    async def _index_open(self, sids: list[str]) -> None:
        """Remember sessions with open positions, so they are swept after the lookback too."""
        now = self.app.clock.now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                view = self.cache.sessions.get(sid)
                if view is None:
                    continue
                if view.open or view.uncovered:
                    pipe.zadd(self.keys.sweeper_open_sessions, {sid: now})
                else:
                    pipe.zrem(self.keys.sweeper_open_sessions, sid)
            await pipe.execute()

    async def _overdue_migrations(self, report: SweepReport) -> None:
        """Sessions ended more than MIGRATION_OVERDUE_MINUTES ago and not in PostgreSQL."""
        now = self.app.clock.now_ms()
        cutoff = now - int(self.settings.migration_overdue_minutes * 60_000)
        rows = await self.redis.zrangebyscore(
            self.keys.sessions_ended, "-inf", cutoff, withscores=True
        )
        ended_at = {
            as_text(sid): int(score) for sid, score in cast(list[tuple[bytes, float]], rows)
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ended_at:
                pipe.exists(self.keys.migration_completed(sid))
            completed = await pipe.execute()
        finished = [sid for sid, done in zip(ended_at, completed, strict=True) if done]
        if finished:  # migrated; the index entry outlived a crash between the two writes
            await self.redis.zrem(self.keys.sessions_ended, *finished)
        for sid, done in zip(ended_at, completed, strict=True):
            if done:
                continue
            reason = await self._migrate(sid)
            if reason is None:
                report.migrations.append(f"{sid}: migrated")
                continue
            report.migrations.append(f"{sid}: {reason}")
            if f"migration:{sid}:{reason}" not in self._reported:
                self._reported.add(f"migration:{sid}:{reason}")
                await self.app.alert(
                    "migration_overdue",
                    f"session {sid} ended {_age(now - ended_at[sid])} ago and is not migrated: {reason}",
                    session_id=sid,
                    reason=reason,
                )

    async def _migrate(self, sid: str) -> str | None:
        """Migrate through the migrator's own function; the reason it could not, or None."""
        if self.settings.dry_run:
            return "not migrated: DRY_RUN"
        try:
            from workers import migrator
        except ImportError as exc:
            return f"the migrator is not available ({one_line(exc)})"
        try:
            if self._migrator is None:
                self._migrator = await migrator.MigratorHandler.create(self.app)
            result = await migrator.migrate_session(self.app, self._migrator.pool, sid)
        except Exception as exc:
            log.warning(
                "migration of %s by the sweeper failed: %s",
                sid,
                one_line(exc),
                extra={"session_id": sid},
            )
            if self._migrator is not None and isinstance(exc, migrator.TRANSIENT_PG_ERRORS):
                await self._migrator.close()
                self._migrator = None
            return f"migration failed: {type(exc).__name__}: {one_line(exc)}"
        if not result.ok:
            return f"{result.status}: {result.reason}"
        log.info("overdue session %s: %s", sid, result.status, extra={"session_id": sid})
        return None

    async def _record(self, report: SweepReport) -> None:
        await self.redis.hset(
            self.keys.sweeper_state,
            mapping={
                "last_pass_at": iso(report.started_at),
                "last_pass_ms": report.duration_ms,
                "last_pass_by": self.lease.token if self.lease.held else self.name,
                "sessions": len(report.sessions),
                "uncovered": report.total("uncovered_after"),
            },
        )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _age(ms: int) -> str:
    return str(timedelta(seconds=max(0, ms) // 1000))
