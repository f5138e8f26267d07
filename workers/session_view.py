"""A session's positions as a sweep pass sees them: derived figures, kept between passes.

A position's `Figures` are computed once per stored version, so an unchanged position
costs nothing per pass; `SessionView` keeps indexes and sums over them (positions to
cover or trim, live order id -> position, when a live TP turns stale, open quantity and
cost per pair, sells) and the version of every position it reflects (`lines`,
`b"<position id> <version>"`); `FiguresCache` holds the views of the sessions a pass saw.
Read by the sweeper, the loss limit (risk.py), reconciliation and verify-coverage.

A view can be saved as a `Snapshot` (its indexes and sums as columns, cheap to encode
and to load) so that a new sweeper process starts from it instead of decoding every
position (workers/figures.py). A view loaded from a snapshot has no per-position
`Figures` for the positions it came with; a change to one of those makes the caller
rebuild the session (`Unmaterialized`); new positions are added as usual.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from trading.positions import COVERING, MAY_SELL, Position, StepStatus, decode_position
from trading.pricing import MS_PER_HOUR

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Figures:
    """What the sweeper, the loss limit and verify-coverage need from one position version."""

    vtag: bytes  # b'{"v":N,': how the stored JSON of this version starts
    v: int  # the version
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
        v=pos.v,
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


class Unmaterialized(LookupError):
    """A position the view knows only from a snapshot changed: rebuild the session's view."""


class Snapshot(msgspec.Struct, array_like=True):
    """A SessionView as columns: lists of strings encode and decode at C speed."""

    lines: bytes  # b"\n".join of b"<position id> <version>"
    needs_cover: list[str]
    needs_trim: list[str]
    dust_ids: list[str]
    open_ids: list[str]
    live_orders: list[str]
    live_pids: list[str]
    step_orders: list[str]
    clients: list[str]
    symbols: dict[str, int]
    open_qty: dict[str, str]
    open_cost: dict[str, str]
    stale_pids: list[str]
    stale_at: list[int]
    sells: list[tuple[int, str]]


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


class SessionView:
    """One session's positions as a pass needs them, kept up to date position by position.

    Indexes (positions to cover, live order id -> position, when a live TP turns stale) and
    sums (open quantity and its cost per pair) make an unchanged session cost a few set
    operations per pass; a changed position costs O(1) to update, not a walk of the session.
    """

    def __init__(self, stale_after: Sequence[int]) -> None:
        self.stale_after = stale_after
        self.figures: dict[str, Figures] = {}  # every position, unless loaded from a snapshot
        self.pids: set[str] = set()  # every position the view reflects
        self.lines: set[bytes] = set()  # b"<pid> <version>" of each of them
        self.digest: bytes | None = None  # the version list as last read, when it matched
        self.dirty = True  # changed since it was last saved as a snapshot
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
        self._base_sells: list[tuple[int, Decimal]] = []  # of the snapshot's positions
        self._stale_at: dict[str, int] = {}  # position -> when its lowest live TP turns stale
        self._earliest: int | None = None
        self._earliest_known = True
        self._live_ids: frozenset[str] | None = None

    @property
    def positions(self) -> int:
        return len(self.pids)

    @property
    def complete(self) -> bool:
        """Every position has its Figures here (not only the sums of a snapshot)."""
        return len(self.figures) == len(self.pids)

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
        yield from self._base_sells
        for pid in self.with_sells:
            yield from self.figures[pid].sells

    def put(self, pid: str, f: Figures | None) -> None:
        """Replace the position's figures (None: the position is gone).

        Unmaterialized if the view knows the position only from a snapshot."""
        old = self.figures.pop(pid, None)
        if old is None and pid in self.pids:
            raise Unmaterialized(pid)
        if old is not None:
            self._account(pid, old, -1)
            self.lines.discard(b"%s %d" % (pid.encode(), old.v))
            self.pids.discard(pid)
        if f is not None:
            self.figures[pid] = f
            self._account(pid, f, 1)
            self.lines.add(b"%s %d" % (pid.encode(), f.v))
            self.pids.add(pid)
        self.digest = None
        self.dirty = True

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

    # --- snapshots -------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The view as an encoded Snapshot (see the module's docstring)."""
        stale = self._stale_at
        sells = [(ts, str(pnl)) for ts, pnl in self.sells()]
        return _snapshot_encoder.encode(
            Snapshot(
                lines=b"\n".join(self.lines),
                needs_cover=list(self.needs_cover),
                needs_trim=list(self.needs_trim),
                dust_ids=list(self.dust_ids),
                open_ids=list(self.open_ids),
                live_orders=list(self.live),
                live_pids=list(self.live.values()),
                step_orders=list(self.step_orders),
                clients=list(self.clients),
                symbols=self.symbols,
                open_qty={k: str(v) for k, v in self.open_qty.items()},
                open_cost={k: str(v) for k, v in self.open_cost.items()},
                stale_pids=list(stale),
                stale_at=list(stale.values()),
                sells=sells,
            )
        )

    @classmethod
    def from_snapshot(cls, raw: bytes, stale_after: Sequence[int]) -> SessionView:
        """A view with the snapshot's indexes and sums and no per-position Figures."""
        snap = _snapshot_decoder.decode(raw)
        view = cls(stale_after)
        view.lines = set(snap.lines.split(b"\n")) if snap.lines else set()
        view.pids = {line.partition(b" ")[0].decode() for line in view.lines}
        view.needs_cover = set(snap.needs_cover)
        view.needs_trim = set(snap.needs_trim)
        view.dust_ids = set(snap.dust_ids)
        view.open_ids = set(snap.open_ids)
        view.live = dict(zip(snap.live_orders, snap.live_pids, strict=True))
        view.step_orders = set(snap.step_orders)
        view.clients = set(snap.clients)
        view.symbols = dict(snap.symbols)
        view.open_qty = {k: Decimal(v) for k, v in snap.open_qty.items()}
        view.open_cost = {k: Decimal(v) for k, v in snap.open_cost.items()}
        view._stale_at = dict(zip(snap.stale_pids, snap.stale_at, strict=True))
        view._earliest_known = False
        view._base_sells = [(ts, Decimal(pnl)) for ts, pnl in snap.sells]
        view.dirty = False
        return view


class FiguresCache:
    """sid -> the session's view as of the versions last seen. Only what a pass saw is kept."""

    def __init__(
        self, tier_hours: Iterable[Decimal] = (Decimal(1), Decimal(4), Decimal(12))
    ) -> None:
        # a live TP of tier t turns stale at the age where tier t + 1 starts
        self.stale_after = [math.ceil(h * MS_PER_HOUR) for h in tier_hours]
        self.sessions: dict[str, SessionView] = {}

    def refresh(self, sid: str, raw: dict[bytes, bytes]) -> tuple[SessionView, dict[str, Position]]:
        """The session's view from all its stored positions (decoding only those whose
        version moved) and what was decoded."""
        view = self.sessions.get(sid)
        if view is None or not view.complete:
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
