"""The sweeper: the safety net that replaces the 3-minute cron.

Every SETTLEMENT_INTERVAL_MINUTES exactly one sweeper across all processes — the holder of
the lease `keys.sweeper_lease` (SET NX PX with a token, renewed by compare-and-renew) —
runs one pass:

1. stream care: entries stuck in the `coverage`/`migrator` groups, dead consumers, growth
   of the dead-letter stream; with no live coverage consumer the sweeper drains the
   coverage group itself, through the coverage handler;
2. one `open_orders()` snapshot of the exchange (workers/reconcile.py);
3. session discovery: Redis indexes plus PostgreSQL's recent sessions (optional);
4. each session under its lock (workers/sweep_pass.py): reconcile, settle, reprice, cover;
5. open orders with our client-id prefix that no position knows -> alert `unknown_order`;
6. the portfolio's daily loss limit (workers/risk.py);
7. the migration safety net: sessions ended long ago and not migrated.

A crashed sweeper's lease expires and a standby takes over. SIGTERM finishes the pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from base import logs
from base.clock import iso
from base.logs import one_line
from storage import postgres
from storage.redis import TRANSIENT_REDIS_ERRORS, ServerUnreachable, as_text
from trading.exchange import ExchangeError
from workers import retention
from workers.groups import INPUT_GROUPS, runtime_for
from workers.parts import TradingParts
from workers.reconcile import OpenBook, open_book, unknown_orders
from workers.risk import RiskGuard, RiskReport
from workers.session_view import FiguresCache
from workers.sweep_pass import SessionReport, SessionSweep, Status

if TYPE_CHECKING:
    from workers.migration import Migrator

log = logs.get("mmops.sweeper")

SESSION_CONCURRENCY = 8
PAIR_CONCURRENCY = 32
HEARTBEAT_FRESH_MS = 10_000  # the runtime beats every 2 s
DEAD_CONSUMER_IDLE_FACTOR = 10  # x RECLAIM_IDLE_MS without activity and nothing pending
PG_TIMEOUT_S = 3.0
SWEEPER_CONSUMER_PREFIX = "sweeper-"

# KEYS: lease   ARGV: token, ttl ms — extend only our own lease
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: stream   ARGV: group, consumer — XGROUP DELCONSUMER only if nothing is pending
# (DELCONSUMER drops a consumer's pending entries; checked and done atomically)
_DELCONSUMER_IF_IDLE = """
local info = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(info) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) > 0 then return 0 end
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  end
end
return 0
"""


def lease_ttl_ms(interval_s: float) -> int:
    """A few intervals, between 1 s and 30 s: a crashed sweeper is replaced within that."""
    return int(min(30_000, max(1_000, 3 * interval_s * 1000)))


class Lease:
    """One holder across processes: SET NX PX to take it, compare-and-renew to keep it."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, ttl_ms: int) -> None:
        self.redis = redis
        self.key = key
        self.token = f"{holder}/{secrets.token_hex(6)}"
        self.ttl_ms = ttl_ms
        self.held = False
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def refresh(self) -> bool:
        """Renew the lease if it is ours, take it if it is free; whether we hold it now."""
        if self.held and await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        self.held = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        if not self.held:  # ours after all (a renewal whose reply was lost)?
            self.held = await self.redis.get(self.key) == self.token.encode()
        return self.held

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self._release(keys=[self.key], args=[self.token])


# --- reports -------------------------------------------------------------------------
@dataclass
class StreamReport:
    live: dict[str, int] = field(default_factory=dict)  # group -> live consumers
    taken_over: dict[str, int] = field(default_factory=dict)  # group -> entries the sweeper handled
    stuck: dict[str, int] = field(default_factory=dict)  # group -> idle pending entries left
    removed_consumers: list[str] = field(default_factory=list)
    dead_len: int = 0
    dead_growth: int = 0


@dataclass
class SweepReport:
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
        return not self.errors and all(s.status != Status.FAILED for s in self.sessions)


# --- discovery -----------------------------------------------------------------------
class RecentSessions:
    """Sessions started within the lookback, from PostgreSQL; one lazily (re)opened connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None

    async def fetch(self, since: datetime, limit: int) -> list[str]:
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = await asyncio.wait_for(postgres.connect(self.url), PG_TIMEOUT_S)
                self._conn = conn
            assert conn is not None
            rows = await conn.fetch(
                "SELECT id FROM sessions WHERE started_at >= $1 ORDER BY started_at DESC LIMIT $2",
                since,
                limit,
                timeout=PG_TIMEOUT_S,
            )
        except BaseException:
            await self.close()
            raise
        return [str(row["id"]) for row in rows]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)


PG_ERRORS = (
    ServerUnreachable,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@dataclass
class Discovery:
    sessions: list[str]
    truncated: bool
    notes: list[str]


async def discover(app: TradingParts, recent: RecentSessions | None) -> Discovery:
    """Active sessions, most recent activity first, at most SETTLEMENT_MAX_SESSIONS.

    Redis: recent activity (`keys.sessions` within the lookback), ended but not migrated
    (`keys.sessions_ended`), open positions at the last pass (`keys.sweeper_open_sessions`).
    PostgreSQL (when reachable): sessions started within the lookback.
    """
    settings, keys = app.settings, app.keys
    now = app.clock.now_ms()
    since = now - int(settings.settlement_lookback_hours * 3_600_000)
    async with app.redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.sessions, since, "+inf", withscores=True)
        pipe.zrange(keys.sessions_ended, 0, -1, withscores=True)
        pipe.zrange(keys.sweeper_open_sessions, 0, -1, withscores=True)
        recent_rows, ended_rows, open_rows = await pipe.execute()
    score: dict[str, float] = {}
    for rows in (open_rows, ended_rows, recent_rows):
        for member, value in rows:
            sid = member.decode()
            score[sid] = max(score.get(sid, value), value)
    notes: list[str] = []
    if recent is not None:
        started = datetime.fromtimestamp(since / 1000, tz=UTC)
        try:
            for rank, sid in enumerate(
                await recent.fetch(started, settings.settlement_max_sessions)
            ):
                score.setdefault(sid, since - rank)
        except PG_ERRORS as exc:
            note = f"sessions from Redis only, PostgreSQL not read: {one_line(exc)}"
            notes.append(note)
            log.warning(note)
    ordered = sorted(score, key=lambda sid: (-score[sid], sid))
    limit = settings.settlement_max_sessions
    if len(ordered) > limit:
        notes.append(
            f"{len(ordered)} active sessions, swept the {limit} most recent (SETTLEMENT_MAX_SESSIONS)"
        )
        log.warning(notes[-1])
    return Discovery(ordered[:limit], len(ordered) > limit, notes)


# --- stream care ---------------------------------------------------------------------
class StreamCare:
    """Stuck entries, dead consumers and dead letters of the input stream's groups."""

    groups: tuple[str, ...] = INPUT_GROUPS

    def __init__(self, app: TradingParts, consumer: str) -> None:
        self.app = app
        self.redis = app.redis
        self.keys = app.keys
        self.settings = app.settings
        self.consumer = consumer
        self._alerted: set[str] = set()
        self._delconsumer = app.redis.register_script(_DELCONSUMER_IF_IDLE)

    async def check(self, report: StreamReport) -> None:
        now = time.time_ns() // 1_000_000  # stream ids and heartbeats are wall-clock times
        stream = self.keys.stream
        try:
            infos = {as_text(g["name"]): g for g in await self.redis.xinfo_groups(stream)}
            exists = True
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            infos, exists = {}, False
        for group in self.groups:
            live = await self._live(group, now)
            report.live[group] = len(live)
            info = infos.get(group)
            if info is not None:
                await self._forget_dead(group, live, report)
            if live or not exists:
                continue
            idle = await self._idle_pending(group) if info is not None else 0
            # the migrator's undelivered backlog is the migration safety net's: reclaim only
            if idle > 0 or (group == "coverage" and await self._behind(info, now)):
                await self._take_over(group, report)
                if (left := await self._idle_pending(group)) > 0:
                    report.stuck[group] = left
                    await self._alert_once(
                        f"stuck:{group}",
                        "stuck_entries",
                        f"{left} entries of group {group} pending longer than {self.settings.reclaim_idle_ms} ms "
                        "and no live consumer",
                        group=group,
                        entries=left,
                    )
        await self._dead_letters(report)

    async def _live(self, group: str, now: int) -> list[str]:
        members = await self.redis.zrangebyscore(
            self.keys.heartbeats(group), now - HEARTBEAT_FRESH_MS, "+inf"
        )
        names = [as_text(m) for m in members]
        return [n for n in names if not n.startswith(SWEEPER_CONSUMER_PREFIX)]

    async def _forget_dead(self, group: str, live: list[str], report: StreamReport) -> None:
        """XGROUP DELCONSUMER consumers long idle with nothing pending."""
        idle_limit = DEAD_CONSUMER_IDLE_FACTOR * self.settings.reclaim_idle_ms
        for consumer in await self.redis.xinfo_consumers(self.keys.stream, group):
            name = as_text(consumer["name"])
            if name in live or int(consumer["pending"]) or int(consumer["idle"]) < idle_limit:
                continue
            await self._delconsumer(keys=[self.keys.stream], args=[group, name])
            await self.redis.zrem(self.keys.heartbeats(group), name)
            report.removed_consumers.append(f"{group}/{name}")
            log.info("removed consumer %s of %s: idle, nothing pending", name, group)

    async def _idle_pending(self, group: str) -> int:
        rows = await self.redis.xpending_range(
            self.keys.stream,
            group,
            min="-",
            max="+",
            count=1000,
            idle=self.settings.reclaim_idle_ms,
        )
        return len(rows)

    async def _behind(self, info: dict[Any, Any] | None, now: int) -> bool:
        """The group is missing, or its oldest undelivered entry is older than one interval."""
        if info is None:
            return bool(await self.redis.xlen(self.keys.stream))
        if info.get("lag") == 0:
            return False
        after = as_text(info.get("last-delivered-id") or b"0-0")
        first = await self.redis.xrange(self.keys.stream, min="(" + after, max="+", count=1)
        if not first:
            return False
        entry_id = first[0][0]
        return now - _ms(as_text(entry_id)) > self.settings.interval_seconds * 1000

    async def _take_over(self, group: str, report: StreamReport) -> None:
        """Handle the group's entries as one of its consumers, within a time budget."""
        stop = asyncio.Event()
        try:
            runtime, close = await runtime_for(group, self.app, self.consumer, stop=stop)
        except Exception as exc:  # e.g. the migrator is not installed, PostgreSQL is down
            report.stuck[group] = await self._idle_pending(group)
            await self._alert_once(
                f"nohandler:{group}",
                "stuck_entries",
                f"group {group} has entries waiting and no live consumer; the sweeper cannot take "
                f"them: {one_line(exc)}",
                group=group,
            )
            return
        loop = asyncio.get_running_loop()
        budget = min(60.0, max(5.0, self.settings.interval_seconds / 2))
        timer = loop.call_later(budget, stop.set)
        mirror = asyncio.ensure_future(_mirror(self.app.stop, stop))
        try:
            stats = await runtime.run(until_drained=True)
        finally:
            timer.cancel()
            mirror.cancel()
            if close is not None:
                await close()
        report.taken_over[group] = stats.processed + stats.dead
        log.info(
            "no live %s consumer: the sweeper handled %d entries (%d dead-lettered)",
            group,
            stats.processed,
            stats.dead,
            extra={"group": group},
        )
        await self._delconsumer(keys=[self.keys.stream], args=[group, self.consumer])

    async def _dead_letters(self, report: StreamReport) -> None:
        """Alert when mm:dead grew since the last pass."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.dead)
            pipe.hget(self.keys.sweeper_state, "dead_len")
            length, before = await pipe.execute()
        report.dead_len = int(length)
        if before is not None and int(length) > int(before):
            report.dead_growth = int(length) - int(before)
            await self.app.alert(
                "dead_letters",
                f"{report.dead_growth} new dead letters in {self.keys.dead} ({length} in all)",
                new=report.dead_growth,
                total=length,
            )
        await self.redis.hset(self.keys.sweeper_state, "dead_len", int(length))

    async def _alert_once(self, key: str, kind: str, message: str, **figures: object) -> None:
        if key not in self._alerted:
            self._alerted.add(key)
            await self.app.alert(kind, message, **figures)


async def _mirror(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


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
        self.cache = FiguresCache(app.settings.tier_hours)
        self.sessions = SessionSweep(app, self.cache, pair_concurrency=PAIR_CONCURRENCY)
        self.streams = StreamCare(app, self.consumer)
        self.risk = RiskGuard(app)
        self.recent = RecentSessions(app.settings.database_url)
        self._reported: set[str] = set()  # unknown orders and overdue migrations already alerted
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
        renew_every = self.lease.ttl_ms / 3000
        await self._refresh_lease()
        keeper = asyncio.ensure_future(self._keep_lease(renew_every))
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

    async def _keep_lease(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            await self._refresh_lease()

    async def _refresh_lease(self) -> None:
        was = self.lease.held
        try:
            held = await self.lease.refresh()
        except TRANSIENT_REDIS_ERRORS as exc:
            held = self.lease.held = False
            log.warning("cannot reach Redis to keep the sweeper lease: %s", one_line(exc))
        if held and not was:
            log.info("sweeper lease taken by %s", self.lease.token)
        elif was and not held:
            log.warning("sweeper lease lost; standing by")

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
        """MM_STREAM_RETENTION_HOURS: trim the input stream, never past what every group acked."""
        result = await retention.trim(self.app)
        if result.removed:
            report.notes.append(
                f"retention: trimmed {result.removed} entries below {result.min_id} ({result.reason})"
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
                    failed = SessionReport(sid, status=Status.FAILED)
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
            from workers import migration
        except ImportError as exc:
            return f"the migrator is not available ({one_line(exc)})"
        try:
            if self._migrator is None:
                self._migrator = await migration.Migrator.open(self.app)
            result = await self._migrator.migrate(sid)
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


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


__all__ = [
    "Discovery",
    "Lease",
    "RecentSessions",
    "StreamCare",
    "SweepReport",
    "Sweeper",
    "discover",
    "lease_ttl_ms",
]
