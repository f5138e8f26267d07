"""The per-session sweep: under `lock:settlement:{sid}`, make every position of a session whole.

For each position that needs it: reconcile live TPs missing from the exchange's open book,
settle a pending step, trim TPs that offer more than is still held (a FIFO sell closed part
of the position and the coverage worker died before its own trim), reprice TPs whose
position aged into a cheaper tier and cover the uncovered quantity — all through the
take-profit engine, so the sweeper and the coverage worker share one duplicate guard.
Pairs run concurrently (bounded); one pair's failure is recorded and does not stop the
others. The pass's `Guard` is checked before every engine call: a lost lease or SIGTERM
stops the sweep between two actions.

The pass is cheap when there is nothing to do: the session's `SessionView` (figures per
position version, kept between passes) says which positions need an engine call, and only
those are read again, fresh, under the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from base import logs
from base.clock import iso
from base.logs import one_line
from storage.locks import FencedLock, TokenLock
from storage.scripts import Script, load, queue
from trading.exchange import ExchangeError
from trading.outcomes import Outcome, Result
from trading.positions import Position, Step, StepStatus, decode_position
from workers.lease import Guard, PassStopped, gather_settled
from workers.parts import TradingParts
from workers.reconcile import Finding, OpenBook, reconcile_step
from workers.risk import RiskReport
from workers.session_retention import RetentionReport
from workers.session_view import FiguresCache, SessionView, figures_of
from workers.stream_care import StreamReport

log = logs.get("mmops.sweeper")

ZERO = Decimal(0)
LOCK_TTL_MS = 300_000  # lock:settlement:{sid}: 5 min (docs/contract.md)
MAX_ERRORS_KEPT = 20

# KEYS: lock status last_run metrics   ARGV: status, last_run, uncovered, dust, positions
# A session with nothing to do is recorded as swept, unless a sweep holds its lock now.
_RECORD_IDLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], 'uncovered', ARGV[3], 'covered', 0, 'repriced', 0, 'trimmed', 0,
  'dust', ARGV[4], 'positions', ARGV[5], 'errors', 0, 'duration_ms', 0)
return 1
"""


class SweepStatus(enum.StrEnum):
    """A session's sweep; the first three are `settlement:status:{sid}` (docs/contract.md)."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    LOCKED = "LOCKED"  # another sweep holds the session's lock: skipped (report only)
    DEFERRED = "DEFERRED"  # has work, left to a later pass by SETTLEMENT_MAX_SESSIONS (report only)


@dataclass
class SessionReport:
    session_id: str
    status: SweepStatus = SweepStatus.COMPLETED
    pairs: int = 0
    positions: int = 0
    open_positions: int = 0
    uncovered_before: int = 0
    uncovered_after: int = 0
    covered: int = 0  # TPs placed for uncovered quantity
    repriced: int = 0  # TPs cancelled for a cheaper tier (and replaced)
    dust: int = 0
    reconciled: int = 0  # live TPs the exchange had cancelled or did not know
    trimmed: int = 0  # TPs cancelled because they offered more than the position still held
    filled_unreported: int = 0  # TPs filled on the exchange with no fill event yet
    pending: int = 0  # steps still waiting for the exchange's answer
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    duration_ms: int = 0
    actions: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)


@dataclass
class SweepReport:
    """What one pass found and did: per session, per phase, and its notes and errors."""

    started_at: int
    by: str
    duration_ms: int = 0
    sessions: list[SessionReport] = field(default_factory=list)
    discovered: int = 0
    positions: int = 0  # in every session looked at
    decoded: int = 0  # positions read and decoded by this pass (the others were unchanged)
    with_work: int = 0  # sessions that needed an engine call
    swept: int = 0  # of those, swept by this pass (at most SETTLEMENT_MAX_SESSIONS)
    stopped: str = ""  # why the pass stopped early (lease lost, SIGTERM); "" if it ran through
    stream: StreamReport = field(default_factory=StreamReport)
    open_orders: int | None = None  # None: the exchange could not be asked, or read changes only
    book: str = ""  # how the exchange's book was read: "whole", or "N changes"
    unknown_orders: list[str] = field(default_factory=list)
    risk: RiskReport | None = None
    migrations: list[str] = field(default_factory=list)
    retention: RetentionReport | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    phases_ms: dict[str, int] = field(default_factory=dict)

    def total(self, name: str) -> int:
        return sum(int(getattr(s, name)) for s in self.sessions)

    @property
    def deferred(self) -> int:
        return self.with_work - self.swept

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.status != SweepStatus.FAILED for s in self.sessions)


def figures_report(sid: str, view: SessionView, *, idle: bool) -> SessionReport:
    """A session's row when the pass did not sweep it: idle (nothing to do) or DEFERRED."""
    return SessionReport(
        sid,
        status=SweepStatus.COMPLETED if idle else SweepStatus.DEFERRED,
        pairs=len(view.symbols),
        positions=view.positions,
        open_positions=view.open,
        uncovered_before=view.uncovered,
        uncovered_after=view.uncovered,
        dust=view.dust,
    )


class SessionSweep:
    """Sweeps one session at a time; shared by every session of a pass (cache, limits)."""

    def __init__(
        self,
        app: TradingParts,
        cache: FiguresCache | None = None,
        *,
        pair_concurrency: int = 32,
        guard: Guard | None = None,
    ) -> None:
        self.app = app
        self.engine = app.engine
        self.keys = app.keys
        self.redis = app.redis
        self.cache = cache if cache is not None else FiguresCache(app.settings.tier_hours)
        self.pairs_limit = asyncio.Semaphore(pair_concurrency)
        self.guard = guard if guard is not None else Guard(app.stop)
        self._idle = Script(_RECORD_IDLE)

    async def run(
        self, sid: str, book: OpenBook | None, view: SessionView | None = None
    ) -> SessionReport:
        """One sweep of the session; LOCKED (figures only, no action) if another sweep holds it.

        `view`: the session's figures as the pass read them moments ago (else read here).
        PassStopped (lease lost, SIGTERM) ends it between two actions, writing nothing more.
        """
        started = time.perf_counter()
        report = SessionReport(sid)
        self.guard.check()
        key, lease = self.keys.settlement_lock(sid), self.guard.lease
        lock = (
            FencedLock(self.redis, key, LOCK_TTL_MS, lease=lease)
            if lease is not None
            else TokenLock(self.redis, key, LOCK_TTL_MS)
        )
        locked = await lock.acquire()
        try:
            await self._sweep(sid, book, report, view, locked=locked)
        except PassStopped:
            raise
        except BaseException:
            if locked and self.guard.lease_valid():
                report.status = SweepStatus.FAILED
                with contextlib.suppress(Exception):
                    await self.redis.set(self.keys.settlement_status(sid), SweepStatus.FAILED)
            raise
        finally:
            report.duration_ms = int((time.perf_counter() - started) * 1000)
            await lock.release()  # only if still ours
        if locked:
            self.guard.check()
            await self._record(sid, report)
        return report

    async def _sweep(
        self,
        sid: str,
        book: OpenBook | None,
        report: SessionReport,
        view: SessionView | None,
        *,
        locked: bool,
    ) -> None:
        if view is None:
            raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.positions(sid))  # type: ignore[assignment]
            view, _ = self.cache.refresh(sid, raw)
        if locked and self.app.book.ledger.cluster:  # writes a crash left in the outbox
            await self.app.book.ledger.outbox.drain(sid)
        work = self.work(view, book) if locked else []
        async with self.redis.pipeline(transaction=False) as pipe:
            if locked:
                pipe.set(self.keys.settlement_status(sid), SweepStatus.IN_PROGRESS)
            pipe.smembers(self.keys.pairs(sid))
            pipe.hget(self.keys.session(sid), "pairs")
            if work:
                pipe.hmget(self.keys.positions(sid), work)  # fresh, under the lock
            replies = await pipe.execute()
        pair_set, listed = replies[1:3] if locked else replies[0:2]
        pairs = {p.decode() for p in pair_set} | view.symbols.keys()
        pairs |= {p for p in (listed or b"").decode().split(",") if p}
        report.pairs, report.positions = len(pairs), view.positions
        report.uncovered_before = view.uncovered
        if locked:
            by_pair: dict[str, list[Position]] = {}
            for value in replies[-1] if work else ():
                if value is not None:
                    pos = decode_position(value)
                    by_pair.setdefault(pos.symbol, []).append(pos)
            await gather_settled(
                *(
                    self._pair(symbol, positions, book, report)
                    for symbol, positions in by_pair.items()
                )
            )
            touched = [pos.id for positions in by_pair.values() for pos in positions]
            if touched:
                after = await self.redis.hmget(self.keys.positions(sid), touched)
                for pid, value in zip(touched, after, strict=True):
                    view.put(pid, figures_of(decode_position(value)) if value else None)
            report.status = SweepStatus.FAILED if report.error_count else SweepStatus.COMPLETED
        else:
            report.status = SweepStatus.LOCKED
        report.uncovered_after, report.dust, report.open_positions = (
            view.uncovered,
            view.dust,
            view.open,
        )

    # --- choosing the work ---------------------------------------------------------
    def work(self, view: SessionView, book: OpenBook | None) -> list[str]:
        """Positions that need an engine call: everything else costs nothing."""
        work = dict.fromkeys(sorted(view.needs_cover))
        work.update(dict.fromkeys(sorted(view.needs_trim)))
        if not self.app.settings.dry_run:
            work.update(dict.fromkeys(view.stale(self.app.clock.now_ms())))
        if book is not None:
            work.update(dict.fromkeys(view.live[order_id] for order_id in book.gone(view.live_ids)))
        return list(work)

    # --- one pair, one position ------------------------------------------------------
    async def _pair(
        self, symbol: str, positions: list[Position], book: OpenBook | None, report: SessionReport
    ) -> None:
        async with self.pairs_limit:
            for pos in cheapest_first(positions):
                try:
                    await self._position(pos, book, report)
                except PassStopped:
                    raise
                except ExchangeError as exc:
                    report.error(f"{symbol} {pos.id}: {one_line(exc)}")
                    report.actions.append(f"error {symbol} {pos.id}: {one_line(exc)}")
                except (
                    Exception
                ) as exc:  # a bug or Redis trouble: this pair stops, the others go on
                    log.warning("sweep of %s %s failed", pos.session_id, symbol, exc_info=exc)
                    report.error(f"{symbol}: {type(exc).__name__}: {one_line(exc)}")
                    report.actions.append(f"error {symbol}: {type(exc).__name__}: {one_line(exc)}")
                    return

    async def _position(self, pos: Position, book: OpenBook | None, report: SessionReport) -> None:
        """Reconcile, settle, trim, reprice, cover: each step sees the position the previous
        one left, and each engine call comes after a check of the guard."""
        engine, check = self.engine, self.guard.check
        if book is not None:
            for step in pos.live:
                if step.order_id in book or step.acked_at > book.taken_at:
                    continue
                check()
                found = await reconcile_step(self.app.exchange, engine, pos, step)
                if found is None:
                    continue
                pos = found.outcome.position or pos
                if found.finding is Finding.FILLED:
                    report.filled_unreported += 1
                else:
                    report.reconciled += 1
                report.actions.append(
                    f"reconciled {pos.symbol} {pos.id} TP {step.order_id}: {found.finding}"
                )
        if pos.pending is not None:
            check()
            after = self._note(
                report, pos, await engine.cover(pos.session_id, pos.id, position=pos), "covered"
            )
            if after is None:
                return
            pos = after
        if pos.over_covered > 0 and not self.app.settings.dry_run:
            check()
            for outcome in await engine.trim(pos):
                if outcome.result is Result.CANCELLED:
                    report.trimmed += 1
                    report.actions.append(
                        f"trimmed {pos.symbol} {pos.id}: a TP offered more than the "
                        f"{pos.open_quantity} still held"
                    )
                    pos = outcome.position or pos
                else:
                    pos = self._note(report, pos, outcome, "covered") or pos
        if not self.app.settings.dry_run and engine.stale_steps(pos):
            check()
            for outcome in await engine.reprice(pos):
                pos = self._note(report, pos, outcome, "repriced") or pos
        if pos.uncovered > 0 and pos.dust != pos.uncovered:
            check()
            self._note(
                report, pos, await engine.cover(pos.session_id, pos.id, position=pos), "covered"
            )

    def _note(
        self, report: SessionReport, pos: Position, outcome: Outcome, why: str
    ) -> Position | None:
        """Count an engine outcome and log it as a settlement action; the position after it."""
        after = outcome.position
        where = f"{pos.symbol} {pos.id}"
        match outcome.result:
            case Result.CREATED:
                step = _last_placed(after)
                replaced = bool(step and step.replaces)
                if replaced:
                    report.repriced += 1
                else:
                    report.covered += 1
                if step is not None:
                    report.actions.append(
                        f"{'repriced' if replaced else why} {where} step {step.n} order "
                        f"{step.order_id} {step.qty} @ {step.price} tier {step.tier}"
                        + (f" replaces {step.replaces}" if step.replaces else "")
                    )
            case Result.CANCELLED:
                report.actions.append(f"cancelled {where} for repricing")
            case Result.FILLED:
                report.filled_unreported += 1
                report.actions.append(f"filled {where}: the TP filled before it could be repriced")
            case Result.DUST:
                report.actions.append(
                    f"dust {where}: {outcome.reason or 'below the minimum order'}"
                )
            case Result.FAILED | Result.SKIPPED:
                report.error(f"{where}: {outcome.reason}")
                report.actions.append(f"{outcome.result} {where}: {outcome.reason}")
            case Result.PENDING | Result.BUSY:
                report.pending += 1
                report.actions.append(f"pending {where}: {outcome.reason}")
            case Result.NOTHING:
                pass
        return after

    # --- bookkeeping -----------------------------------------------------------------
    async def record_idle(self, sids: list[str], views: dict[str, SessionView]) -> None:
        """Sessions with nothing to do: COMPLETED now, unless a sweep holds their lock."""
        if not sids:
            return
        self.guard.check()
        now = iso(self.app.clock.now_ms())
        keys = self.keys
        await load(self.redis, self._idle)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                view = views[sid]
                queue(
                    pipe,
                    self._idle,
                    [
                        keys.settlement_lock(sid),
                        keys.settlement_status(sid),
                        keys.settlement_last_run(sid),
                        keys.metrics_settlement(sid),
                    ],
                    [
                        SweepStatus.COMPLETED.value,
                        now,
                        view.uncovered,
                        view.dust,
                        view.positions,
                    ],
                )
            await pipe.execute()

    async def _record(self, sid: str, report: SessionReport) -> None:
        now = self.app.clock.now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.settlement_status(sid), report.status)
            pipe.set(self.keys.settlement_last_run(sid), iso(now))
            pipe.hset(
                self.keys.metrics_settlement(sid),
                mapping={
                    "uncovered": report.uncovered_after,
                    "covered": report.covered,
                    "repriced": report.repriced,
                    "trimmed": report.trimmed,
                    "dust": report.dust,
                    "positions": report.positions,
                    "errors": report.error_count,
                    "duration_ms": report.duration_ms,
                },
            )
            await pipe.execute()
        directory = self.app.settings.session_log_dir
        if directory and report.actions:  # a pass with nothing to do leaves no line
            stamp = iso(now)
            lines = [f"{stamp} {line}\n" for line in report.actions]
            lines.append(
                f"{stamp} sweep {report.status}: positions {report.positions}, uncovered "
                f"{report.uncovered_before} -> {report.uncovered_after}, covered {report.covered}, "
                f"repriced {report.repriced}, trimmed {report.trimmed}, dust {report.dust}, "
                f"errors {report.error_count}, "
                f"{report.duration_ms} ms\n"
            )
            await asyncio.to_thread(
                _append, Path(directory) / _safe_name(sid) / "settlement.log", lines
            )


def _last_placed(pos: Position | None) -> Step | None:
    if pos is None:
        return None
    for step in reversed(pos.steps):
        if step.order_id and step.status in (StepStatus.LIVE, StepStatus.FILLED):
            return step
    return None


def _append(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.writelines(lines)


def _safe_name(sid: str) -> str:
    """A session id as a directory name ('.' and '..' are valid ids, not valid directories)."""
    return sid if sid.strip(".") else "_" + sid


def cheapest_first(positions: list[Position]) -> list[Position]:
    """A pair's positions in the order their work spends the rate budget best: those with
    no live TP first (covering them cancels nothing), then by their oldest live TP, oldest
    first (Kraken charges less for cancelling an older order: trading/kraken_limits.py)."""

    def oldest(pos: Position) -> tuple[int, int]:
        live = [step.acked_at or step.claimed_at for step in pos.live]
        return (1, min(live)) if live else (0, pos.opened_at)

    return sorted(positions, key=oldest)
