"""The per-session sweep: under `lock:settlement:{sid}`, make every position of a session whole.

For each position that needs it: reconcile live TPs missing from the exchange's open book,
settle a pending step, reprice TPs whose position aged into a cheaper tier and cover the
uncovered quantity — all through the take-profit engine, so the sweeper and the coverage
worker share one duplicate guard. Pairs run concurrently (bounded); one pair's failure is
recorded and does not stop the others.

The pass is cheap when there is nothing to do: one HGETALL per session, and a position's
derived figures (`Figures`) are computed once per stored version and kept between passes,
so an unchanged, covered position costs a dict lookup and no exchange call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from base import logs
from base.clock import iso
from base.logs import one_line
from mmops.app import App
from trading.exchange import ExchangeError
from trading.positions import COVERING, Position, Step, StepStatus, decode_position
from trading.pricing import MS_PER_HOUR
from trading.takeprofit import Outcome, Result
from workers.reconcile import Finding, OpenBook, reconcile_step

log = logs.get("mmops.sweeper")

ZERO = Decimal(0)
LOCK_TTL_S = 300
MAX_ERRORS_KEPT = 20

# KEYS: lock   ARGV: token — delete only our own lock
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Status:
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    LOCKED = "LOCKED"  # another sweep holds the session's lock: skipped (report only)


@dataclass(frozen=True, slots=True)
class Figures:
    """What the sweeper, the loss limit and verify-coverage need from one position version."""

    vtag: bytes  # b'{"v":N,': how the stored JSON of this version starts
    symbol: str
    opened_at: int
    last_buy_ms: int
    filled: Decimal
    uncovered: Decimal
    dust: bool  # the uncovered quantity is recorded as dust
    needs_cover: bool  # a pending step, or uncovered quantity that is not dust
    live_orders: tuple[str, ...]  # order ids of the live TPs
    min_live_tier: int  # lowest tier among the live TPs (-1: none)
    step_orders: tuple[str, ...]  # order ids of every covering step
    clients: tuple[str, ...]  # client ids of every covering step
    open_qty: Decimal
    open_cost: Decimal  # cost of the open quantity (buy fees included; exact while nothing sold)
    sells: tuple[tuple[int, Decimal], ...]  # (ts, realized P&L) of every sell

    @property
    def is_open(self) -> bool:
        return self.open_qty > 0


def vtag(version: int) -> bytes:
    return b'{"v":%d,' % version


def figures_of(pos: Position) -> Figures:
    """The figures of one position version: its quantities from Position.totals (one walk),
    plus the step bookkeeping a pass needs."""
    totals = pos.totals()
    filled, cost, uncovered, open_qty = (
        totals.filled,
        totals.cost,
        totals.uncovered,
        totals.open_quantity,
    )
    last_buy = max((b.ts for b in pos.buys), default=0)
    live: list[str] = []
    min_tier = -1
    step_orders: list[str] = []
    clients: list[str] = []
    pending = False
    for s in pos.steps:
        if s.status in COVERING:
            clients.append(s.client_id)
            if s.order_id:
                step_orders.append(s.order_id)
        if s.status == StepStatus.LIVE:
            live.append(s.order_id)
            min_tier = s.tier if min_tier < 0 else min(min_tier, s.tier)
        elif s.status == StepStatus.PENDING:
            pending = True
    sells = pos.realized(totals.unit_cost)
    dust = uncovered > 0 and pos.dust == uncovered
    return Figures(
        vtag=vtag(pos.v),
        symbol=pos.symbol,
        opened_at=pos.opened_at,
        last_buy_ms=last_buy,
        filled=filled,
        uncovered=uncovered,
        dust=dust,
        needs_cover=pending or (uncovered > 0 and not dust),
        live_orders=tuple(live),
        min_live_tier=min_tier,
        step_orders=tuple(step_orders),
        clients=tuple(clients),
        open_qty=open_qty,
        open_cost=cost if open_qty == filled else cost * open_qty / filled if filled > 0 else ZERO,
        sells=tuple(sells),
    )


class SessionView:
    """One session's positions as a pass needs them, kept up to date position by position.

    Indexes (positions to cover, live order id -> position, when a live TP turns stale) and
    sums (open quantity and its cost per pair) make an unchanged session cost a few set
    operations per pass; a changed position costs O(1) to update, not a walk of the session.
    """

    def __init__(self, stale_after: Sequence[int]) -> None:
        self.stale_after = stale_after
        self.figures: dict[str, Figures] = {}
        self.needs_cover: set[str] = set()
        self.dust_ids: set[str] = set()
        self.open_ids: set[str] = set()
        self.live: dict[str, str] = {}  # live order id -> position id
        self.step_orders: set[str] = set()
        self.clients: set[str] = set()
        self.symbols: dict[str, int] = {}  # symbol -> positions
        self.open_qty: dict[str, Decimal] = {}
        self.open_cost: dict[str, Decimal] = {}
        self.with_sells: set[str] = set()
        self._stale_at: dict[str, int] = {}  # position -> when its lowest live TP turns stale
        self._earliest: int | None = None
        self._earliest_known = True
        self._live_ids: frozenset[str] | None = None

    @property
    def uncovered(self) -> int:
        return len(self.needs_cover)

    @property
    def dust(self) -> int:
        return len(self.dust_ids)

    @property
    def open(self) -> int:
        return len(self.open_ids)

    @property
    def live_ids(self) -> frozenset[str]:
        if self._live_ids is None:
            self._live_ids = frozenset(self.live)
        return self._live_ids

    def sells(self) -> Iterable[tuple[int, Decimal]]:
        for pid in self.with_sells:
            yield from self.figures[pid].sells

    def put(self, pid: str, f: Figures | None) -> None:
        """Replace the position's figures (None: the position is gone)."""
        old = self.figures.pop(pid, None)
        if old is not None:
            self._account(pid, old, -1)
        if f is not None:
            self.figures[pid] = f
            self._account(pid, f, 1)

    def _account(self, pid: str, f: Figures, sign: int) -> None:
        add = sign > 0
        for ids, member in (
            (self.needs_cover, f.needs_cover),
            (self.dust_ids, f.dust and not f.needs_cover),
            (self.open_ids, f.open_qty > 0),
            (self.with_sells, bool(f.sells)),
        ):
            if member and add:
                ids.add(pid)
            elif member:
                ids.discard(pid)
        if f.live_orders:
            self._live_ids = None
            for order_id in f.live_orders:
                if add:
                    self.live[order_id] = pid
                else:
                    self.live.pop(order_id, None)
        if add:
            self.step_orders.update(f.step_orders)
            self.clients.update(f.clients)
        else:
            self.step_orders.difference_update(f.step_orders)
            self.clients.difference_update(f.clients)
        count = self.symbols.get(f.symbol, 0) + sign
        if count:
            self.symbols[f.symbol] = count
        else:
            self.symbols.pop(f.symbol, None)
        if f.open_qty > 0:
            self.open_qty[f.symbol] = self.open_qty.get(f.symbol, ZERO) + sign * f.open_qty
            self.open_cost[f.symbol] = self.open_cost.get(f.symbol, ZERO) + sign * f.open_cost
        if 0 <= f.min_live_tier < len(self.stale_after):
            if add:
                at = self._stale_at[pid] = f.opened_at + self.stale_after[f.min_live_tier]
                if self._earliest_known and (self._earliest is None or at < self._earliest):
                    self._earliest = at
            elif self._stale_at.pop(pid, None) == self._earliest:
                self._earliest_known = False

    def stale(self, now: int) -> list[str]:
        """Positions with a live TP priced for a younger tier than their age calls for."""
        if not self._earliest_known:
            self._earliest = min(self._stale_at.values(), default=None)
            self._earliest_known = True
        if self._earliest is None or now < self._earliest:
            return []
        return [pid for pid, at in self._stale_at.items() if now >= at]


class FiguresCache:
    """sid -> the session's view as of the versions last seen. Only what a pass saw is kept."""

    def __init__(
        self, tier_hours: Iterable[Decimal] = (Decimal(1), Decimal(4), Decimal(12))
    ) -> None:
        # a live TP of tier t turns stale at the age where tier t + 1 starts
        self.stale_after = [math.ceil(h * MS_PER_HOUR) for h in tier_hours]
        self.sessions: dict[str, SessionView] = {}

    def refresh(self, sid: str, raw: dict[bytes, bytes]) -> tuple[SessionView, dict[str, Position]]:
        """The session's view (decoding only positions whose version moved) and what was decoded."""
        view = self.sessions.get(sid)
        if view is None:
            view = self.sessions[sid] = SessionView(self.stale_after)
        figures = view.figures
        decoded: dict[str, Position] = {}
        for key, value in raw.items():
            pid = key.decode()
            cached = figures.get(pid)
            if cached is None or not value.startswith(cached.vtag):
                pos = decoded[pid] = decode_position(value)
                view.put(pid, figures_of(pos))
        if len(figures) != len(raw):  # positions deleted since the last pass
            for pid in [p for p in figures if p.encode() not in raw]:
                view.put(pid, None)
        return view, decoded

    def keep_only(self, sids: Iterable[str]) -> None:
        keep = set(sids)
        for sid in [s for s in self.sessions if s not in keep]:
            del self.sessions[sid]


@dataclass
class SessionReport:
    session_id: str
    status: str = Status.COMPLETED
    pairs: int = 0
    positions: int = 0
    open_positions: int = 0
    uncovered_before: int = 0
    uncovered_after: int = 0
    covered: int = 0  # TPs placed for uncovered quantity
    repriced: int = 0  # TPs cancelled for a cheaper tier (and replaced)
    dust: int = 0
    reconciled: int = 0  # live TPs the exchange had cancelled or did not know
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


class SessionSweep:
    """Sweeps one session at a time; shared by every session of a pass (cache, limits)."""

    def __init__(
        self, app: App, cache: FiguresCache | None = None, *, pair_concurrency: int = 32
    ) -> None:
        self.app = app
        self.engine = app.engine
        self.keys = app.keys
        self.redis = app.redis
        self.cache = cache if cache is not None else FiguresCache(app.settings.tier_hours)
        self.pairs_limit = asyncio.Semaphore(pair_concurrency)
        self._release = self.redis.register_script(_RELEASE)

    async def run(self, sid: str, book: OpenBook | None) -> SessionReport:
        """One sweep of the session; LOCKED (figures only, no action) if another sweep holds it."""
        started = time.perf_counter()
        report = SessionReport(sid)
        token = secrets.token_hex(8)
        lock = self.keys.settlement_lock(sid)
        locked = bool(await self.redis.set(lock, token, nx=True, ex=LOCK_TTL_S))
        try:
            await self._sweep(sid, book, report, locked=locked)
        except BaseException:
            if locked:
                report.status = Status.FAILED
                with contextlib.suppress(Exception):
                    await self.redis.set(self.keys.settlement_status(sid), Status.FAILED)
            raise
        finally:
            report.duration_ms = int((time.perf_counter() - started) * 1000)
            if locked:
                await self._release(keys=[lock], args=[token])
        if locked:
            await self._record(sid, report)
        return report

    async def _sweep(
        self, sid: str, book: OpenBook | None, report: SessionReport, *, locked: bool
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            if locked:
                pipe.set(self.keys.settlement_status(sid), Status.IN_PROGRESS)
            pipe.hgetall(self.keys.positions(sid))
            pipe.smembers(self.keys.pairs(sid))
            pipe.hget(self.keys.session(sid), "pairs")
            *_, raw, pair_set, listed = await pipe.execute()
        view, decoded = self.cache.refresh(sid, raw)
        pairs = {p.decode() for p in pair_set} | view.symbols.keys()
        pairs |= {p for p in (listed or b"").decode().split(",") if p}
        report.pairs, report.positions = len(pairs), len(view.figures)
        report.uncovered_before = view.uncovered
        if locked:
            by_pair: dict[str, list[Position]] = {}
            for pid in self._select(view, book):
                pos = decoded.get(pid) or decode_position(raw[pid.encode()])
                by_pair.setdefault(pos.symbol, []).append(pos)
            await asyncio.gather(
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
            report.status = Status.FAILED if report.error_count else Status.COMPLETED
        else:
            report.status = Status.LOCKED
        report.uncovered_after, report.dust, report.open_positions = (
            view.uncovered,
            view.dust,
            view.open,
        )

    # --- choosing the work ---------------------------------------------------------
    def _select(self, view: SessionView, book: OpenBook | None) -> list[str]:
        """Positions that need an engine call: everything else costs nothing."""
        work = dict.fromkeys(sorted(view.needs_cover))
        if not self.app.settings.dry_run:
            work.update(dict.fromkeys(view.stale(self.app.clock.now_ms())))
        if book is not None:
            # frozenset.difference walks the smaller side: O(the session's live TPs), not O(the book)
            work.update(
                dict.fromkeys(
                    view.live[order_id] for order_id in view.live_ids.difference(book.orders)
                )
            )
        return list(work)

    # --- one pair, one position ------------------------------------------------------
    async def _pair(
        self, symbol: str, positions: list[Position], book: OpenBook | None, report: SessionReport
    ) -> None:
        async with self.pairs_limit:
            for pos in positions:
                try:
                    await self._position(pos, book, report)
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
        """Reconcile, settle, reprice, cover: each step sees the position the previous one left."""
        engine = self.engine
        if book is not None:
            for step in pos.live:
                if step.order_id in book or step.acked_at > book.taken_at:
                    continue
                found = await reconcile_step(engine, pos, step)
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
            after = self._note(
                report, pos, await engine.cover(pos.session_id, pos.id, position=pos), "covered"
            )
            if after is None:
                return
            pos = after
        if not self.app.settings.dry_run and engine.stale_steps(pos):
            for outcome in await engine.reprice(pos):
                pos = self._note(report, pos, outcome, "repriced") or pos
        if pos.uncovered > 0 and pos.dust != pos.uncovered:
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
                        f"{'repriced' if replaced else why} {where} step {step.n} order {step.order_id} "
                        f"{step.qty} @ {step.price} tier {step.tier}"
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
                f"repriced {report.repriced}, dust {report.dust}, errors {report.error_count}, "
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
