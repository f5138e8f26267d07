"""Exact money for the paper exchange: integer units that Lua can compare and HINCRBY.

Balances and order amounts are integers of 1e-8 (8 decimals, Kraken's lot precision);
prices compared inside Lua (the post-only check) are integers of 1e-18. Where a value
must be rounded the caller names the direction; the exchange's rule is that credits
round DOWN and debits and fees round UP.
"""

from __future__ import annotations

from decimal import (
    ROUND_DOWN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

from trading.exchange import PermanentError

UNIT_EXP = 8  # balances and order amounts are integers of 1e-8
PRICE_EXP = 18  # prices compared inside Lua are integers of 1e-18
MAX_UNITS = 10**18  # 1e10 of an asset: far below HINCRBY's 64-bit limit

# The caller's context at 60 digits computes these; when no step is inexact at 60 digits
# (nearly always) no rounding mode was used, so this shared context gives the same result
# without copying the caller's (the hot path: a few per fill). An inexact step traps and
# is computed again in the caller's context. Emin/Emax are the defaults, as in every
# context mmops computes in (base/money.py).
_EXACT_60 = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def round_to_step(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    """value rounded to a multiple of step (any step, not only powers of ten)."""
    try:
        whole = _EXACT_60.divide(value, step).to_integral_value(rounding=rounding)
        return _EXACT_60.multiply(whole, step)
    except Inexact:
        pass
    with localcontext() as ctx:
        ctx.prec = 60
        return (value / step).to_integral_value(rounding=rounding) * step


def to_units(value: Decimal, rounding: str, exp: int = UNIT_EXP) -> int:
    """value as an integer count of 10**-exp, rounded as asked."""
    try:
        return int(value.scaleb(exp, context=_EXACT_60).to_integral_value(rounding=rounding))
    except Inexact:
        pass
    with localcontext() as ctx:
        ctx.prec = 60
        return int(value.scaleb(exp).to_integral_value(rounding=rounding))


def from_units(units: int | bytes | str) -> Decimal:
    return Decimal(int(units)).scaleb(-UNIT_EXP)


def price_from_units(units: int | bytes | str) -> Decimal:
    """A price stored in 1e-18 units (the bids hash), normalized for messages."""
    return Decimal(int(units)).scaleb(-PRICE_EXP).normalize()


def positive(name: str, value: Decimal) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise PermanentError(f"{name} must be a positive decimal, got {value!r}")
    return value


def exact_units(name: str, value: Decimal) -> int:
    """value in 1e-8 units; PermanentError if it has more decimals or is too large."""
    units = to_units(value, ROUND_DOWN)
    if from_units(units) != value:
        raise PermanentError(f"{name} {value} is not a multiple of 1e-8")
    return bounded(name, units)


def bounded(name: str, units: int) -> int:
    if units > MAX_UNITS:
        raise PermanentError(f"{name} is too large for the paper exchange")
    return units
