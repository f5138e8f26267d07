"""Round-trip P&L (docs/contract.md §3): one definition for the position model and the migration.

A position's unit cost counts its buy fees: (Σ price × quantity + Σ buy fees) / Σ
quantity. A sell of `qty` at `price` realizes its proceeds minus its fee minus the
sold quantity's cost, in quote. Pure functions, computed in the caller's Decimal
context (the position model: MONEY, base/money.py; the migration: an exact 60-digit one).
"""

from __future__ import annotations

from decimal import Decimal


def buy_cost(price: Decimal, qty: Decimal, fee: Decimal) -> Decimal:
    """What a buy fill cost, its fee (in quote) included."""
    return price * qty + fee


def unit_cost(cost: Decimal, quantity: Decimal) -> Decimal:
    """Cost per unit held (`quantity` > 0): buy fees included, so a sale at it loses its own fee."""
    return cost / quantity


def round_trip_pnl(price: Decimal, qty: Decimal, fee: Decimal, unit: Decimal) -> Decimal:
    """P&L of selling `qty` at `price` with `fee` (quote), against a unit cost `unit`."""
    return price * qty - fee - qty * unit
