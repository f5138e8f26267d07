"""The Decimal contexts money is computed in: never the thread's default one.

Python's default context keeps 28 significant digits, so 1E+10 × 3 + 1E-18 silently
becomes 3E+10 there. Every computation on prices, quantities, fees and P&L runs in an
explicit context instead (`with localcontext(MONEY)`, or `@computed_in(MONEY)` on a
function), whatever context the calling thread or task has set.

MONEY: 160 significant digits, ROUND_HALF_EVEN. A number an event may carry
(events/codec.py: at most 38 significant digits, from 1E-18 to below 1E+15) has its
digits within 70 decimal places (1E+14 down to 1E-55); a product of two spans 140, and a
sum of up to 1E+20 such products 160. So sums, differences and products of event
numbers are exact in MONEY; only a division (a unit cost, a share of a fee) rounds, at
the 160th significant digit, half-even.

UP (ROUND_UP) and DOWN (ROUND_DOWN): MONEY with a direction, for a bound that must
hold whatever is rounded: trading/pricing.py computes a sell price's numerator in UP
and its denominator in DOWN, so a TP is never priced below its target by rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_UP,
    Context,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    getcontext,
    setcontext,
)
from typing import ParamSpec, TypeVar

from events.codec import LARGEST, MAX_SIGNIFICANT, SMALLEST

P = ParamSpec("P")
R = TypeVar("R")

# decimal places an event's number may occupy: from LARGEST's place down to the last
# significant digit of the smallest number (1E+14 .. 1E-55: 70)
NUMBER_PLACES = (LARGEST.adjusted() - 1) - (SMALLEST.adjusted() - MAX_SIGNIFICANT + 1) + 1
SUMMED_TERMS_DIGITS = 20  # sums of up to 1E+20 products stay exact
MONEY_DIGITS = 2 * NUMBER_PLACES + SUMMED_TERMS_DIGITS

_TRAPS = [InvalidOperation, DivisionByZero, Overflow]
MONEY = Context(prec=MONEY_DIGITS, rounding=ROUND_HALF_EVEN, traps=_TRAPS)
UP = Context(prec=MONEY_DIGITS, rounding=ROUND_UP, traps=_TRAPS)
DOWN = Context(prec=MONEY_DIGITS, rounding=ROUND_DOWN, traps=_TRAPS)


def computed_in(context: Context) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated (synchronous) function with `context` as the current Decimal
    context, and restore the caller's after.

    Cheaper than `localcontext`, which copies the context on every call: the shared
    context object is made current as it is (only its flags, which nothing reads, are
    shared), and a call made while it is current already switches nothing. The current
    context lives in a context variable, so concurrent asyncio tasks and threads each
    keep their own."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            caller = getcontext()
            if caller is context:
                return fn(*args, **kwargs)
            setcontext(context)
            try:
                return fn(*args, **kwargs)
            finally:
                setcontext(caller)

        return wrapper

    return decorate
