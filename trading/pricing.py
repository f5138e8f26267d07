"""Take-profit pricing: aging tiers and fee-aware targets (docs/contract.md §3).
Pure Decimal functions.

All rounding of TP orders happens here: amounts ROUND_DOWN to the lot, sell prices
ROUND_UP to the tick, so a TP never sells more than was bought nor below its target.

Contexts (base/money.py), never the caller's: a position's cost and quantity are exact
(MONEY: sums and products of event numbers do not round). A TP price is
cost × (1 + target) / (quantity × (1 − maker fee)) with one division: its numerator is
computed rounding UP, its denominator rounding DOWN and the quotient UP, so whatever
rounds only raises the raw price, and the tick it is rounded up to is never below the
exact target (tests/test_pricing.py holds this against exact fractions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal

import msgspec

from base.money import DOWN, MONEY, UP, computed_in
from trading.exchange import Market
from trading.pnl import buy_cost, unit_cost

MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Tiers:
    """Tier boundaries in hours (ascending) and the net target of each tier as a fraction."""

    hours: tuple[Decimal, Decimal, Decimal]
    targets: tuple[Decimal, Decimal, Decimal, Decimal]

    @computed_in(MONEY)
    def tier(self, age_ms: int) -> int:
        """0 for the youngest tier .. 3 for the oldest; a tier starts at its boundary."""
        age = max(age_ms, 0)  # compared in ms: exact, no division
        return sum(1 for boundary in self.hours if age >= boundary * MS_PER_HOUR)

    def target(self, tier: int) -> Decimal:
        return self.targets[tier]


@computed_in(MONEY)
def position_cost(buys: Iterable[tuple[Decimal, Decimal, Decimal]]) -> tuple[Decimal, Decimal]:
    """(Σ price × quantity + Σ fees, Σ quantity) over (price, quantity, fee_in_quote) buys:
    exact."""
    cost = Decimal(0)
    quantity = Decimal(0)
    for price, qty, fee in buys:
        cost += buy_cost(price, qty, fee)
        quantity += qty
    return cost, quantity


@computed_in(MONEY)
def cost_per_unit(buys: Iterable[tuple[Decimal, Decimal, Decimal]]) -> Decimal:
    """(Σ price × quantity + Σ fees) / Σ quantity (rounded half-even at MONEY's digits)."""
    cost, quantity = position_cost(buys)
    if quantity <= 0:
        raise ValueError("cost_per_unit of an empty position")
    return unit_cost(cost, quantity)


def round_up(value: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of `step` >= value (value, step > 0), computed in UP (its
    methods, not a switch of the current context: the hot path)."""
    whole = UP.divide(value, step).to_integral_value(rounding=ROUND_UP, context=UP)
    return UP.multiply(whole, step)


def round_down(value: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of `step` <= value (value, step > 0), computed in DOWN."""
    whole = DOWN.divide(value, step).to_integral_value(rounding=ROUND_DOWN, context=DOWN)
    return DOWN.multiply(whole, step)


def tp_price(unit_cost: Decimal, target: Decimal, maker_fee: Decimal, tick: Decimal) -> Decimal:
    """unit_cost × (1 + target) / (1 − maker_fee), rounded up to the tick."""
    return tp_price_of(unit_cost, Decimal(1), target, maker_fee, tick)


def tp_price_of(
    cost: Decimal, quantity: Decimal, target: Decimal, maker_fee: Decimal, tick: Decimal
) -> Decimal:
    """cost × (1 + target) / (quantity × (1 − maker_fee)), rounded up to the tick: never
    below the exact value (numerator rounded up, denominator down; module docstring)."""
    numerator = UP.multiply(cost, UP.add(1, target))  # the contexts' own methods: no copy
    denominator = DOWN.multiply(quantity, DOWN.subtract(1, maker_fee))
    raw = UP.divide(numerator, denominator)
    return round_up(raw, tick).quantize(tick, context=MONEY)


def tp_amount(uncovered: Decimal, lot: Decimal) -> Decimal:
    """The uncovered quantity rounded down to the lot."""
    if uncovered <= 0:
        return Decimal(0)
    return round_down(uncovered, lot).quantize(lot, context=MONEY)


def is_dust(amount: Decimal, price: Decimal, market: Market) -> bool:
    """Below the market's minimum order amount or cost: recorded, not placed."""
    return (
        amount <= 0 or amount < market.min_amount or MONEY.multiply(amount, price) < market.min_cost
    )


class TakeProfitQuote(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # one per fill
    amount: Decimal
    price: Decimal
    tier: int
    dust: bool


@computed_in(MONEY)  # one switch for the tier and the cost (each computed in MONEY)
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
    cost, quantity = position_cost(buys)
    if quantity <= 0:
        raise ValueError("a take-profit for an empty position")
    price = tp_price_of(cost, quantity, tiers.target(tier), fee, market.tick)
    amount = tp_amount(uncovered, market.lot)
    return TakeProfitQuote(
        amount=amount, price=price, tier=tier, dust=is_dust(amount, price, market)
    )
