"""The migration's arithmetic: per-pair figures, round trips, and Decimal from stored text.

Figures (docs/queries.sql documents them for analysts):
* realized P&L: per sell applied to a position, trading.pnl.round_trip_pnl against the
  position's unit cost (buy fees included) — the position model's own definition;
* a *round trip* is one sell applied to one position (a TP fill, or a FIFO share of
  another sell); a *win* is one with P&L > 0; `avg_spread` is the mean over round trips
  of (sell price − unit cost) / unit cost;
* a position's figures (`PositionFigures`, the `positions` table) are summed per pair,
  the pairs' per session: so a sync after the end rewrites only the touched positions;
* fees are in quote (trading.fees: a fee charged in the base asset is valued at the
  fill's price).
Arithmetic is exact: the passes compute in localcontext(EXACT), a 60-digit context. Money
figures and ratios are stored rounded half-even to 1e-10 (`money`), an order's average
price half-up to 1e-18 (`average_price`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

from storage.session_reader import FillRow
from trading.pnl import round_trip_pnl

MONEY = Decimal("1e-10")  # stored money figures and ratios: rounded half-even to this
PRICE = Decimal("1e-18")  # an order's average fill price: the events' own precision
ZERO = Decimal(0)
EXACT = Context(prec=60)


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_EVEN, context=EXACT)


def average_price(notional: Decimal, quantity: Decimal) -> str:
    """Volume-weighted average price as stored: 18 decimals half up, no trailing zeros
    (SQL: trim_scale(round(..., 18)))."""
    return plain((notional / quantity).quantize(PRICE, rounding=ROUND_HALF_UP))


def plain(value: Decimal) -> str:
    """Decimal text without exponent or trailing zeros (matches SQL trim_scale)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class DecimalCache(dict[str, Decimal]):
    """Decimal(text), remembered (`cache[text]`): a session's prices, quantities and fees
    repeat, and building a Decimal costs several times a dict lookup."""

    def __init__(self, limit: int = 100_000) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, text: str) -> Decimal:
        if len(self) >= self.limit:
            self.clear()
        value = self[text] = Decimal(text)
        return value


@dataclass(slots=True)
class PositionFigures:
    """One position's figures (a row of the `positions` table), exact: the pair and session
    figures are sums of these, in memory at a migration and in SQL after a sync."""

    quantity: Decimal = ZERO  # bought
    open_quantity: Decimal = ZERO  # bought and not sold yet
    on_book: Decimal = ZERO  # unfilled quantity of its live and pending TPs
    uncovered: bool = False  # quantity neither sold nor under a TP, beyond dust
    pnl: Decimal = ZERO
    round_trips: int = 0
    wins: int = 0
    spread_sum: Decimal = ZERO
    trade_fees: Decimal = ZERO  # fees inside pnl: the sells' and the sold quantity's buy fees

    def round_trip(
        self, price: Decimal, qty: Decimal, fee: Decimal, unit: Decimal, fee_per_unit: Decimal
    ) -> Decimal:
        """Count one sell of `qty` applied to the position of unit cost `unit`; its P&L."""
        pnl = round_trip_pnl(price, qty, fee, unit)
        self.pnl += pnl
        self.trade_fees += fee + qty * fee_per_unit
        self.round_trips += 1
        if pnl > 0:
            self.wins += 1
        self.spread_sum += (price - unit) / unit
        return pnl


@dataclass
class PairFigures:
    """One pair's counts and sums over a session (quote currency)."""

    orders: int = 0
    fills: int = 0
    fees: Decimal = ZERO
    volume: Decimal = ZERO
    pnl: Decimal = ZERO
    round_trips: int = 0
    wins: int = 0
    spread_sum: Decimal = ZERO
    trade_fees: Decimal = ZERO  # fees inside pnl: the sells' and the sold quantity's buy fees
    open_positions: int = 0
    uncovered_positions: int = 0
    live_positions: int = 0  # with a TP on the book

    def add(self, p: PositionFigures) -> None:
        """Count one position in."""
        self.pnl += p.pnl
        self.trade_fees += p.trade_fees
        self.round_trips += p.round_trips
        self.wins += p.wins
        self.spread_sum += p.spread_sum
        if p.open_quantity > 0:
            self.open_positions += 1
        if p.uncovered:
            self.uncovered_positions += 1
        if p.on_book > 0:
            self.live_positions += 1

    def avg_spread(self) -> Decimal | None:
        return average_spread(self.spread_sum, self.round_trips)


def average_spread(spread_sum: Decimal, round_trips: int) -> Decimal | None:
    """Mean spread over round trips, as stored (None without round trips)."""
    return money(EXACT.divide(spread_sum, round_trips)) if round_trips else None


class OrderFills:
    """A trader order as its fills tell it: quantity filled, notional, first fill."""

    __slots__ = ("first", "kind", "notional", "quantity", "side", "symbol")

    def __init__(self, fill: FillRow, quantity: Decimal, notional: Decimal) -> None:
        self.symbol = fill.symbol
        self.side = fill.side
        self.kind = fill.order_type or "unknown"
        self.quantity = quantity
        self.notional = notional
        self.first = fill.ts
