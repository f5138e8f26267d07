"""The position model (docs/contract.md §3): one position per buy order, its closes and TP steps.

Pure data and arithmetic; storage/ledger.py persists it. The Structs are immutable
trees of numbers and strings — they cannot form reference cycles — so the cyclic garbage
collector does not track them (`gc=False`): the coverage hot path makes one per fill. A
position's quantities are derived from what happened to it (buy fills, closes, TP steps),
never stored twice.

Arithmetic runs in base/money.py's MONEY context, whatever the caller's: quantities,
costs and proceeds are exact; the unit cost (a division) and what is derived from it
(P&L) round half-even at MONEY's 160th significant digit.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from decimal import Decimal
from typing import NamedTuple

import msgspec

from base.money import MONEY, computed_in
from storage.redis import stream_id
from trading import pnl
from trading.pricing import cost_per_unit

ZERO = Decimal(0)


class Buy(msgspec.Struct, frozen=True, array_like=True, gc=False):
    fill_id: str
    price: Decimal
    qty: Decimal  # net of a fee charged in the base asset
    fee: Decimal  # in quote
    ts: int
    entry: str = ""  # stream id of the fill's entry ("" in positions stored before it was kept)


class Close(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A sell fill applied to this position (by a TP's fill or FIFO from another sell)."""

    fill_id: str
    qty: Decimal
    price: Decimal
    fee: Decimal  # in quote
    ts: int


class StepStatus(enum.StrEnum):
    PENDING = "pending"  # intent recorded, exchange outcome not known yet
    LIVE = "live"
    FILLED = "filled"
    CANCELLED = "cancelled"
    FAILED = "failed"  # the exchange refused or the call was not made: covers nothing


MAY_SELL = frozenset({StepStatus.PENDING, StepStatus.LIVE})
COVERING = frozenset({StepStatus.PENDING, StepStatus.LIVE, StepStatus.FILLED, StepStatus.CANCELLED})


class Step(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One coverage step: at most one exchange order, identified by its client id."""

    n: int
    client_id: str
    qty: Decimal
    price: Decimal
    tier: int
    status: StepStatus
    claimed_at: int
    order_id: str = ""
    cancelled: Decimal = ZERO  # the unfilled quantity a cancel took off the book
    fills: tuple[Close, ...] = ()
    reason: str = ""
    replaces: str = ""
    acked_at: int = 0
    trigger_ms: int = 0  # XADD time of the event that caused the step (latency_ms)

    @property
    @computed_in(MONEY)
    def covering(self) -> Decimal:
        return self.qty - self.cancelled if self.status in COVERING else ZERO

    @property
    def filled(self) -> Decimal:
        total = ZERO
        for f in self.fills:  # in MONEY by its methods: no switch of context (the hot path)
            total = MONEY.add(total, f.qty)
        return total


@computed_in(MONEY)
def uncovered_quantity(filled: Decimal, covered: Decimal, closed_other: Decimal) -> Decimal:
    """Bought and neither in a pending, live or filled TP nor sold by another sell."""
    return max(ZERO, filled - covered - closed_other)


@computed_in(MONEY)
def open_quantity(filled: Decimal, closed_other: Decimal, tp_filled: Decimal) -> Decimal:
    """Bought and not sold yet (by a TP fill or another sell)."""
    return max(ZERO, filled - closed_other - tp_filled)


class Totals(NamedTuple):
    filled: Decimal  # bought (net of a fee charged in the base asset)
    cost: Decimal  # Σ price × quantity + buy fees, in quote
    covered: Decimal  # in pending, live or filled TPs
    closed_other: Decimal  # sold by other sells (FIFO)
    tp_filled: Decimal  # sold by the TPs

    @property
    @computed_in(MONEY)
    def uncovered(self) -> Decimal:
        return uncovered_quantity(self.filled, self.covered, self.closed_other)

    @property
    @computed_in(MONEY)
    def open_quantity(self) -> Decimal:
        return open_quantity(self.filled, self.closed_other, self.tp_filled)

    @property
    @computed_in(MONEY)
    def unit_cost(self) -> Decimal:
        return pnl.unit_cost(self.cost, self.filled) if self.filled > 0 else ZERO


class Position(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    v: int  # version: must stay the first field (the ledger's CAS reads it by prefix)
    id: str
    session_id: str
    symbol: str
    opened_at: int
    buys: tuple[Buy, ...] = ()
    closes: tuple[Close, ...] = ()  # sells on other orders, allocated FIFO
    steps: tuple[Step, ...] = ()
    dust: Decimal = ZERO  # uncovered quantity last recorded as dust
    first_entry: str = ""  # stream id of the first buy: FIFO's "oldest" (docs/contract.md §3)

    # --- quantities ------------------------------------------------------------
    @computed_in(MONEY)
    def totals(self) -> Totals:
        """Every quantity of the position, summed in one walk (the one definition of each)."""
        filled = cost = ZERO
        for b in self.buys:
            filled += b.qty
            cost += pnl.buy_cost(b.price, b.qty, b.fee)
        covered = tp_filled = ZERO
        for s in self.steps:
            covered += s.covering
            for f in s.fills:
                tp_filled += f.qty
        closed = sum((c.qty for c in self.closes), ZERO)
        return Totals(
            filled=filled, cost=cost, covered=covered, closed_other=closed, tp_filled=tp_filled
        )

    @property
    def filled(self) -> Decimal:
        return self.totals().filled

    @property
    def covered(self) -> Decimal:
        """Quantity in pending, live or filled TPs."""
        return self.totals().covered

    @property
    def closed_other(self) -> Decimal:
        return self.totals().closed_other

    @property
    def tp_filled(self) -> Decimal:
        return self.totals().tp_filled

    @property
    @computed_in(MONEY)  # one switch for the totals and their uncovered (each in MONEY)
    def uncovered(self) -> Decimal:
        return self.totals().uncovered

    @property
    def open_quantity(self) -> Decimal:
        """Still held: bought and not sold (by a TP fill or another sell)."""
        return self.totals().open_quantity

    @property
    def is_open(self) -> bool:
        return self.open_quantity > 0

    @property
    @computed_in(MONEY)
    def on_book(self) -> Decimal:
        """TP quantity that may still sell: the unfilled rest of live and pending steps."""
        return sum(
            (s.qty - s.cancelled - s.filled for s in self.steps if s.status in MAY_SELL), ZERO
        )

    @property
    @computed_in(MONEY)
    def over_covered(self) -> Decimal:
        """TP quantity on the book beyond what is still held (after a FIFO sell closed some)."""
        return max(ZERO, self.on_book - self.open_quantity)

    @property
    def unit_cost(self) -> Decimal:
        return cost_per_unit((b.price, b.qty, b.fee) for b in self.buys)

    def sells(self) -> Iterable[Close]:
        yield from self.closes
        for step in self.steps:
            yield from step.fills

    @computed_in(MONEY)
    def realized(self, unit_cost: Decimal | None = None) -> list[tuple[int, Decimal]]:
        """(ts, P&L) of every sell: proceeds − the sold quantity's cost (buy fees in) − sell fee."""
        if not self.buys:
            return []
        unit = self.unit_cost if unit_cost is None else unit_cost
        return [(c.ts, pnl.round_trip_pnl(c.price, c.qty, c.fee, unit)) for c in self.sells()]

    @property
    @computed_in(MONEY)
    def realized_pnl(self) -> Decimal:
        """Sell proceeds − buy cost − both fees, over the quantity sold so far (quote)."""
        return sum((value for _, value in self.realized()), ZERO)

    @computed_in(MONEY)
    def unrealized_pnl(self, bid: Decimal) -> Decimal:
        """Value of the open quantity at `bid` minus its cost (buy fees included)."""
        if not self.buys:
            return ZERO
        return self.open_quantity * (bid - self.unit_cost)

    # --- steps -----------------------------------------------------------------
    @property
    def pending(self) -> Step | None:
        for step in self.steps:
            if step.status == StepStatus.PENDING:
                return step
        return None

    @property
    def live(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.status == StepStatus.LIVE)

    @property
    def next_step(self) -> int:
        return len(self.steps) + 1

    def step(self, n: int) -> Step:
        return self.steps[n - 1]

    def step_for_order(self, order_id: str) -> Step | None:
        for step in self.steps:
            if step.order_id == order_id:
                return step
        return None

    # --- changes (each returns a new position with the version bumped) ---------
    def bump(self, **changes: object) -> Position:
        return msgspec.structs.replace(self, v=self.v + 1, **changes)

    def with_buy(self, buy: Buy) -> Position:
        first = self.first_entry
        if buy.entry and (not first or stream_id(buy.entry) < stream_id(first)):
            first = buy.entry
        return self.bump(
            buys=(*self.buys, buy), opened_at=min(self.opened_at, buy.ts), first_entry=first
        )

    def with_earlier_entry(self, fill_id: str, entry: str) -> Position | None:
        """The buy `fill_id` was also delivered at `entry` (a replay XADDed it again): if
        that is earlier in the stream than the entry it was recorded with (the replay was
        handled first, the original waited at a killed consumer), the buy precedes what
        follows `entry` after all, for FIFO. None when nothing changes."""
        at = stream_id(entry)
        buys = list(self.buys)
        for i, buy in enumerate(buys):
            if buy.fill_id == fill_id and buy.entry and at < stream_id(buy.entry):
                buys[i] = msgspec.structs.replace(buy, entry=entry)
                first = self.first_entry
                if not first or at < stream_id(first):
                    first = entry
                return self.bump(buys=tuple(buys), first_entry=first)
        return None

    def with_close(self, close: Close) -> Position:
        return self.bump(closes=(*self.closes, close))

    def with_step(self, step: Step) -> Position:
        """Add step `step.n` (must be the next one) or replace an existing step n."""
        if step.n == self.next_step:
            return self.bump(steps=(*self.steps, step), dust=ZERO)
        steps = list(self.steps)
        steps[step.n - 1] = step
        return self.bump(steps=tuple(steps))


def new_position(*, session_id: str, position_id: str, symbol: str, opened_at: int) -> Position:
    return Position(v=0, id=position_id, session_id=session_id, symbol=symbol, opened_at=opened_at)


@computed_in(MONEY)
def held_before(position: Position, entry_id: str) -> Decimal:
    """Quantity still held by `position` counting only buys that precede entry `entry_id`
    in the stream (buys recorded without their entry id count as earlier)."""
    limit = stream_id(entry_id)
    bought = sum((b.qty for b in position.buys if not b.entry or stream_id(b.entry) < limit), ZERO)
    totals = position.totals()
    return max(ZERO, bought - totals.closed_other - totals.tp_filled)


def fifo_order(position: Position) -> tuple[int, int, int, str]:
    """Oldest first: by the stream id of the first buy (positions stored before it was kept
    sort by their opening time, ahead of those with an id)."""
    if position.first_entry:
        return (1, *stream_id(position.first_entry), position.id)
    return (0, position.opened_at, 0, position.id)


@computed_in(MONEY)
def fifo_allocate(
    positions: Iterable[Position], symbol: str, quantity: Decimal, *, before: str = ""
) -> list[tuple[Position, Decimal]]:
    """Split a sell of `quantity` over the pair's open positions, oldest first. With
    `before` (the sell's stream id) only what buys preceding it brought counts."""
    out: list[tuple[Position, Decimal]] = []
    left = quantity
    for position in sorted((p for p in positions if p.symbol == symbol), key=fifo_order):
        if left <= 0:
            break
        held = held_before(position, before) if before else position.open_quantity
        if held <= 0:
            continue
        take = min(left, held)
        out.append((position, take))
        left -= take
    return out


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Position)


def encode_position(position: Position) -> bytes:
    return _encoder.encode(position)


def decode_position(raw: bytes | str) -> Position:
    return _decoder.decode(raw)
