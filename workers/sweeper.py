"""The sweeper: the safety net that replaces the 3-minute cron.

Every SETTLEMENT_INTERVAL_MINUTES exactly one sweeper across all processes, the holder of
the lease (workers/lease.py), runs one pass; each phase fails on its own and is recorded
in the SweepReport:

1. stream care (workers/stream_care.py): stuck entries, dead consumers, dead letters;
   a group with no live consumer is taken over;
2. one `open_orders()` snapshot of the exchange (workers/reconcile.py);
3. session discovery (workers/discovery.py): every session the Redis indexes and
   PostgreSQL's recent sessions name;
4. the figures of every discovered session (workers/session_view.py): what needs work;
5. sweeping (workers/sweep_pass.py): of the sessions with work, at most
   SETTLEMENT_MAX_SESSIONS, round-robin from where the last pass stopped (the cursor in
   `mm:sweeper:state`), each under its lock: reconcile, settle, trim, reprice, cover; the
   others are left for the next passes (DEFERRED), so every session is swept in turn;
6. open orders with our client-id prefix that no position knows -> alert `unknown_order`
   (over every session's figures);
7. the portfolio's daily loss limit (workers/risk.py), over every session's figures;
8. the migration safety net: sessions ended long ago and not migrated;
9. retention: the input stream (workers/retention.py), and the Redis state of sessions
   closed longer than SESSION_RETENTION_DAYS (workers/session_retention.py).

Fencing: a pass checks its Guard before every phase, session and position action and
stops early (PassStopped) once the lease is lost or SIGTERM arrived; after a lost lease
it writes nothing more.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Coroutine
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
from workers.figures import FiguresReader
from workers.lease import Guard, LeaseKeeper, PassStopped, gather_settled, lease_ttl_ms
from workers.parts import TradingParts
from workers.reconcile import OpenBook, book_since_last_pass, book_state, unknown_orders
from workers.risk import RiskGuard
from workers.session_retention import SessionRetention
from workers.session_view import FiguresCache, SessionView
from workers.stream_care import SWEEPER_CONSUMER_PREFIX, StreamCare
from workers.sweep_pass import (
    SessionReport,
    SessionSweep,
    SweepReport,
    SweepStatus,
    figures_report,
)

if TYPE_CHECKING:
    from workers.migration import Migrator

log = logs.get("mmops.sweeper")

SESSION_CONCURRENCY = 8
PAIR_CONCURRENCY = 32
READ_CHUNK = 20  # sessions whose positions one pipeline reads


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
        self.guard = Guard(app.stop)  # run() adds the lease: a pass then stops once it is lost
        self.cache = FiguresCache(app.settings.tier_hours)
        self.figures = FiguresReader(app.redis, app.keys, self.cache)
        self.sessions = SessionSweep(
            app, self.cache, pair_concurrency=PAIR_CONCURRENCY, guard=self.guard
        )
        self.streams = StreamCare(app, self.consumer, self.guard)
        self.risk = RiskGuard(app, self.guard)
        self.expiry = SessionRetention(
            app, self.guard, resync=lambda sid: self._migrate(sid, force=True)
        )
        self.recent = RecentSessions(app.settings.database_url)
        self._reported: set[str] = set()  # unknown orders and overdue migrations already alerted
        self._book_read: OpenBook | None = None  # this pass's book, its cursor saved at the end
        self._migrator: Migrator | None = None  # the migration safety net's (its own pool)

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
        self.guard.keeper = self.keeper
        await self.keeper.refresh()
        keeper = asyncio.ensure_future(self.keeper.run())
        next_pass = loop.time()
        try:
            while not self.app.stop.is_set():
                held = self.keeper.valid()
                if held and loop.time() >= next_pass:
                    next_pass = loop.time() + interval
                    try:
                        await self.run_once()
                    except TRANSIENT_REDIS_ERRORS as exc:
                        log.warning("sweep interrupted, Redis unreachable: %s", one_line(exc))
                    continue
                wait = max(0.0, next_pass - loop.time()) if held else renew_every
                await _wait(self.app.stop, min(wait, renew_every))
        finally:
            self.guard.keeper = None
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
                await self.lease.release()

    # --- one pass --------------------------------------------------------------------
    async def run_once(self) -> SweepReport:
        """One full pass; phases fail independently and are recorded in the report.

        Stops early (report.stopped) when the guard says so: the lease is lost (then it
        writes nothing more) or the process is asked to stop."""
        started = time.perf_counter()
        report = SweepReport(started_at=self.app.clock.now_ms(), by=self.name)
        self._book_read = None
        try:
            await self._pass(report)
        except PassStopped as stop:
            report.stopped = stop.reason
            report.notes.append(f"pass stopped early: {stop.reason}")
            log.warning("sweep pass stopped early: %s", stop.reason)
        if self.guard.lease_valid() and not report.stopped:
            await self._phase(report, "snapshots", self.figures.save(), check=False)
        report.duration_ms = int((time.perf_counter() - started) * 1000)
        if self.guard.lease_valid():
            await self._phase(report, "state", self._record(report), check=False)
        log.info(
            "sweep: %d sessions (%d with work, %d swept), uncovered %d -> %d, covered %d, "
            "repriced %d, trimmed %d, errors %d, %d ms%s",
            report.discovered,
            report.with_work,
            report.swept,
            report.total("uncovered_before"),
            report.total("uncovered_after"),
            report.total("covered"),
            report.total("repriced"),
            report.total("trimmed"),
            report.total("error_count") + len(report.errors),
            report.duration_ms,
            f", stopped early: {report.stopped}" if report.stopped else "",
        )
        return report

    async def _pass(self, report: SweepReport) -> None:
        await self._phase(report, "stream", self.streams.check(report.stream))
        book = await self._phase(report, "open orders", self._book(report))
        found = await self._phase(report, "discovery", discover(self.app, self.recent))
        if found is not None:
            report.discovered = len(found.sessions)
            report.notes += found.notes
            views = await self._phase(report, "figures", self._figures(found.sessions, report))
            if views is not None:
                await self._phase(report, "sessions", self._sweep_sessions(views, book, report))
                if book is not None:
                    await self._phase(report, "unknown orders", self._unknown_orders(book, report))
                await self._phase(report, "open index", self._index_open(views))
                report.risk = await self._phase(report, "risk", self.risk.check(views))
                if report.risk is not None:
                    report.errors += report.risk.errors
        await self._phase(report, "migrations", self._overdue_migrations(report))
        await self._phase(report, "retention", self._retention(report))
        await self._phase(report, "session retention", self._session_retention(report))

    async def _retention(self, report: SweepReport) -> None:
        """MM_STREAM_RETENTION_HOURS: trim each shard of the input stream, never past what
        every group of that shard acked; and the output streams to their caps."""
        for result in await retention.trim_all(self.app):
            if result.removed:
                where = f" of {result.stream}" if self.keys.shards > 1 else ""
                report.notes.append(
                    f"retention: trimmed {result.removed} entries{where} below {result.min_id} "
                    f"({result.reason})"
                )
        for stream, removed in (await retention.trim_outputs(self.app)).items():
            report.notes.append(f"retention: trimmed {removed} entries of {stream} to its cap")

    async def _session_retention(self, report: SweepReport) -> None:
        """SESSION_RETENTION_DAYS: remove the Redis state of sessions closed that long."""
        if self.settings.dry_run:
            return
        found = await self.expiry.run()
        report.retention = found
        for sid in found.removed:  # no snapshot of it is saved again
            self.cache.sessions.pop(sid, None)
        if found.looked_at:
            report.notes.append(found.note())

    async def _phase(
        self,
        report: SweepReport,
        name: str,
        work: Coroutine[Any, Any, Any],
        *,
        check: bool = True,
    ) -> Any:
        started = time.perf_counter()
        try:
            if check:
                try:
                    self.guard.check()
                except PassStopped:
                    work.close()
                    raise
            return await work
        except PassStopped:
            raise
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
        """The exchange's book: what changed since the last pass where the exchange can say."""
        placer = self.app.engine.placer
        try:
            counted = await placer.open_counts()
            book = await book_since_last_pass(self.app)
        except ExchangeError as exc:
            report.notes.append(
                f"exchange open orders unavailable, no reconciliation: {one_line(exc)}"
            )
            log.warning(report.notes[-1])
            return None
        if book.complete:  # the whole book: the budget's open-order counts follow it
            await placer.sync_open(counted, book.orders.values())
        report.open_orders = len(book.orders) if book.complete else None
        report.book = "whole" if book.complete else f"{len(book.orders) + len(book.closed)} changes"
        self._book_read = book
        return book

    async def _figures(self, sids: list[str], report: SweepReport) -> dict[str, SessionView]:
        """Every session's view, reading only positions whose version moved since the last
        pass (a new process starts from the snapshots the last one saved)."""
        views = await self.figures.views(sids)
        report.positions = sum(view.positions for view in views.values())
        report.decoded = self.figures.read
        return views

    async def _sweep_sessions(
        self, views: dict[str, SessionView], book: OpenBook | None, report: SweepReport
    ) -> None:
        """Sweep at most SETTLEMENT_MAX_SESSIONS of the sessions with work, round-robin."""
        work = {sid: self.sessions.work(view, book) for sid, view in views.items()}
        with_work = sorted(sid for sid, pids in work.items() if pids)
        cursor = as_text(await self.redis.hget(self.keys.sweeper_state, "cursor") or b"")
        chosen = round_robin(with_work, cursor, self.settings.settlement_max_sessions)
        partial = [sid for sid in chosen if not views[sid].figures.keys() >= set(work[sid])]
        if partial:  # loaded from a snapshot: read whole before acting on known positions
            await self.figures.materialize(partial)
            report.decoded = self.figures.read
            views.update((sid, self.cache.sessions[sid]) for sid in partial)
        report.with_work, report.swept = len(with_work), len(chosen)
        if len(chosen) < len(with_work):
            report.notes.append(
                f"{len(with_work)} sessions with work, swept {len(chosen)} from {chosen[0]!r} on "
                "(SETTLEMENT_MAX_SESSIONS); the others in the next passes"
            )
            log.info(report.notes[-1])
        limit = asyncio.Semaphore(SESSION_CONCURRENCY)

        async def one(sid: str) -> SessionReport:
            async with limit:
                try:
                    return await self.sessions.run(sid, book, views[sid])
                except PassStopped:
                    raise
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

        swept = {r.session_id: r for r in await gather_settled(*(one(sid) for sid in chosen))}
        if chosen:
            self.guard.check()
            await self.redis.hset(self.keys.sweeper_state, "cursor", chosen[-1])
        idle = [sid for sid in views if sid not in swept and sid not in with_work]
        await self.sessions.record_idle(idle, views)
        report.sessions = [
            swept.get(sid) or figures_report(sid, view, idle=sid not in with_work)
            for sid, view in views.items()
        ]

    async def _unknown_orders(self, book: OpenBook, report: SweepReport) -> None:
        views = self.cache.sessions.values()
        for order in unknown_orders(book, views):
            report.unknown_orders.append(order.id)
            if order.id in self._reported:
                continue
            self.guard.check()
            self._reported.add(order.id)
            await self.app.alert(
                "unknown_order",
                f"open order {order.id} ({order.symbol}, {order.remaining} @ {order.price}) "
                "carries our client id prefix but no position knows it",
                order_id=order.id,
                client_order_id=order.client_id or "",
                symbol=order.symbol,
            )

    async def _index_open(self, views: dict[str, SessionView]) -> None:
        """Remember sessions with open positions, so they are swept after the lookback too."""
        now = self.app.clock.now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, view in views.items():
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
            self.guard.check()
            reason = await self._migrate(sid)
            if reason is None:
                report.migrations.append(f"{sid}: migrated")
                continue
            report.migrations.append(f"{sid}: {reason}")
            if f"migration:{sid}:{reason}" not in self._reported:
                self._reported.add(f"migration:{sid}:{reason}")
                await self.app.alert(
                    "migration_overdue",
                    f"session {sid} ended {_age(now - ended_at[sid])} ago and is not migrated: "
                    f"{reason}",
                    session_id=sid,
                    reason=reason,
                )

    async def _migrate(self, sid: str, *, force: bool = False) -> str | None:
        """Migrate through the migrator's own function; the reason it could not, or None."""
        if self.settings.dry_run:
            return "not migrated: DRY_RUN"
        try:
            from workers import migration
        except ImportError as exc:
            return f"the migrator is not available ({one_line(exc)})"
        try:
            if self._migrator is None:
                self._migrator = await migration.Migrator.open(self.app)
            result = await self._migrator.migrate(sid, force=force)
        except Exception as exc:
            log.warning(
                "migration of %s by the sweeper failed: %s",
                sid,
                one_line(exc),
                extra={"session_id": sid},
            )
            if self._migrator is not None and isinstance(exc, migration.TRANSIENT_PG_ERRORS):
                await self._migrator.close()
                self._migrator = None
            return f"migration failed: {type(exc).__name__}: {one_line(exc)}"
        if not result.ok:
            return f"{result.status}: {result.reason}"
        log.info("overdue session %s: %s", sid, result.status, extra={"session_id": sid})
        return None

    async def _record(self, report: SweepReport) -> None:
        state: dict[str, str | int] = {
            "last_pass_at": iso(report.started_at),
            "last_pass_ms": report.duration_ms,
            "last_pass_by": self.lease.token if self.lease.held else self.name,
            "sessions": len(report.sessions),
            "with_work": report.with_work,
            "swept": report.swept,
            "uncovered": report.total("uncovered_after"),
            "stopped": report.stopped,
        }
        if self._book_read is not None and not report.stopped:
            state.update(book_state(self._book_read, self.cache.sessions.values()))
        await self.redis.hset(self.keys.sweeper_state, mapping=state)  # type: ignore[arg-type]


def round_robin(sids: list[str], cursor: str, limit: int) -> list[str]:
    """At most `limit` of the sorted `sids`, starting after `cursor` and wrapping around."""
    start = bisect.bisect_right(sids, cursor)
    return (sids[start:] + sids[:start])[:limit]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _age(ms: int) -> str:
    return str(timedelta(seconds=max(0, ms) // 1000))
