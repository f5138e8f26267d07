"""A session's positions as a sweep pass sees them: derived figures, kept between passes.

A position's `Figures` are computed once per stored version (`vtag`), so an unchanged
position costs a dict lookup per pass; `SessionView` keeps indexes and sums over them
(positions to cover, live order id -> position, when a live TP turns stale, open
quantity and cost per pair); `FiguresCache` holds the views of the sessions a pass saw.
Read by the sweeper, the loss limit (risk.py), reconciliation and verify-coverage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from trading.positions import COVERING, MAY_SELL, Position, StepStatus, decode_position
from trading.pricing import MS_PER_HOUR

ZERO = Decimal(0)


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
    over_covered: bool  # TPs on the book offer more than is still held: needs a trim
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
    on_book = ZERO  # TP quantity that may still sell (Position.on_book, in the same walk)
    for s in pos.steps:
        if s.status in MAY_SELL:
            on_book += s.qty - s.cancelled - s.filled
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
        over_covered=on_book > open_qty,
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
        self.needs_trim: set[str] = set()  # over-covered: a TP offers more than is held
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
            (self.needs_trim, f.over_covered),
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
