"""Take-profit pricing: aging tiers and fee-aware targets (DESIGN §3). Pure Decimal functions.

All rounding of TP orders happens here: amounts ROUND_DOWN to the lot, sell prices
ROUND_UP to the tick, so a TP never sells more than was bought nor below its target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from trading.exchange import Market
from trading.pnl import buy_cost, unit_cost

MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Tiers:
    """Tier boundaries in hours (ascending) and the net target of each tier as a fraction."""

    hours: tuple[Decimal, Decimal, Decimal]
    targets: tuple[Decimal, Decimal, Decimal, Decimal]

    def tier(self, age_ms: int) -> int:
        """0 for the youngest tier .. 3 for the oldest; a tier starts at its boundary."""
        age_hours = Decimal(max(age_ms, 0)) / MS_PER_HOUR
        return sum(1 for boundary in self.hours if age_hours >= boundary)

    def target(self, tier: int) -> Decimal:
        return self.targets[tier]


def cost_per_unit(buys: Iterable[tuple[Decimal, Decimal, Decimal]]) -> Decimal:
    """(Σ price × quantity + Σ fees) / Σ quantity over (price, quantity, fee_in_quote) buys."""
    cost = Decimal(0)
    quantity = Decimal(0)
    for price, qty, fee in buys:
        cost += buy_cost(price, qty, fee)
        quantity += qty
    if quantity <= 0:
        raise ValueError("cost_per_unit of an empty position")
    return unit_cost(cost, quantity)


def round_up(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_UP) * step


def round_down(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def tp_price(unit_cost: Decimal, target: Decimal, maker_fee: Decimal, tick: Decimal) -> Decimal:
    """cost_per_unit × (1 + target) / (1 − maker_fee), rounded up to the tick."""
    raw = unit_cost * (1 + target) / (1 - maker_fee)
    return round_up(raw, tick).quantize(tick)


def tp_amount(uncovered: Decimal, lot: Decimal) -> Decimal:
    """The uncovered quantity rounded down to the lot."""
    if uncovered <= 0:
        return Decimal(0)
    return round_down(uncovered, lot).quantize(lot)


def is_dust(amount: Decimal, price: Decimal, market: Market) -> bool:
    """Below the market's minimum order amount or cost: recorded, not placed."""
    return amount <= 0 or amount < market.min_amount or amount * price < market.min_cost


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeProfitQuote:
    amount: Decimal
    price: Decimal
    tier: int
    dust: bool


def quote_take_profit(
    *,
    buys: Sequence[tuple[Decimal, Decimal, Decimal]],
    uncovered: Decimal,
    age_ms: int,
    market: Market,
    tiers: Tiers,
    maker_fee: Decimal | None = None,
) -> TakeProfitQuote:
    """The TP to place for a position: rounded amount and price at its aging tier."""
    tier = tiers.tier(age_ms)
    fee = market.maker_fee if maker_fee is None else maker_fee
    price = tp_price(cost_per_unit(buys), tiers.target(tier), fee, market.tick)
    amount = tp_amount(uncovered, market.lot)
    return TakeProfitQuote(
        amount=amount, price=price, tier=tier, dust=is_dust(amount, price, market)
    )
