"""Fees (docs/contract.md §1, §3): a fee charged in the base asset, one rule for all.

A fill's fee is in quote unless `fee_currency` names the pair's base asset. A base fee
reduces the quantity a buy leaves held, and is valued at the fill's price in quote
wherever fees are summed (P&L, per-pair figures). Exact: computed in base/money.py's
MONEY context (a product and a difference of event numbers do not round there).
"""

from __future__ import annotations

from decimal import Decimal

from base.money import MONEY
from events.schema import Fill


def charged_in_base(symbol: str, fee_currency: str | None) -> bool:
    return fee_currency is not None and fee_currency == symbol.partition("/")[0]


def fee_in_quote(fee: Decimal, price: Decimal, *, in_base: bool) -> Decimal:
    return MONEY.multiply(fee, price) if in_base else fee


def held_and_fee(fill: Fill) -> tuple[Decimal, Decimal]:
    """(quantity the fill leaves held or sold, fee in quote)."""
    if charged_in_base(fill.symbol, fill.fee_currency):
        held = MONEY.subtract(fill.quantity, fill.fee) if fill.side == "buy" else fill.quantity
        return held, fee_in_quote(fill.fee, fill.price, in_base=True)
    return fill.quantity, fill.fee
