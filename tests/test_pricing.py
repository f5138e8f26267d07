"""TP pricing against the worked examples of docs/contract.md §3 (tests/data/tp_prices.csv)."""

from __future__ import annotations

import csv
import math
from decimal import ROUND_FLOOR, Context, Decimal, Inexact, getcontext, localcontext
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from base.money import MONEY
from trading.exchange import Market
from trading.positions import Buy, Close, new_position
from trading.pricing import (
    Tiers,
    cost_per_unit,
    is_dust,
    quote_take_profit,
    round_down,
    round_up,
    tp_amount,
    tp_price,
)

VECTORS = Path(__file__).parent / "data" / "tp_prices.csv"
TIERS = Tiers(
    hours=(Decimal(1), Decimal(4), Decimal(12)),
    targets=(Decimal("0.005"), Decimal("0.003"), Decimal(0), Decimal("-0.001")),
)


def _rows() -> list[dict[str, str]]:
    lines = [line for line in VECTORS.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def _buys(spec: str) -> list[tuple[Decimal, Decimal, Decimal]]:
    out = []
    for part in spec.split(";"):
        price, rest = part.split("@")
        qty, fee = rest.split("+")
        out.append((Decimal(price), Decimal(qty), Decimal(fee)))
    return out


@pytest.mark.parametrize(
    "row", _rows(), ids=lambda r: f"{r['symbol']}-{r['fills'][:18]}-{r['age_hours']}h"
)
def test_vector(row: dict[str, str]) -> None:
    buys = _buys(row["fills"])
    tick = Decimal(row["tick"])
    market = Market(
        symbol=row["symbol"],
        base=row["symbol"].split("/")[0],
        quote="USD",
        tick=tick,
        lot=Decimal("0.00000001"),
        min_amount=Decimal(0),
        min_cost=Decimal(0),
        maker_fee=Decimal(row["maker"]),
    )
    age_ms = int(Decimal(row["age_hours"]) * 3_600_000)
    quote = quote_take_profit(
        buys=buys, uncovered=sum(q for _, q, _ in buys), age_ms=age_ms, market=market, tiers=TIERS
    )
    assert TIERS.target(quote.tier) == Decimal(row["target"])
    assert quote.price == Decimal(row["price"])
    assert quote.amount == Decimal(row["amount"])
    assert str(quote.price) == str(Decimal(row["price"]).quantize(tick))


def test_vectors_cover_every_tier_boundary() -> None:
    ages = {Decimal(r["age_hours"]) for r in _rows()}
    assert {Decimal(1), Decimal(4), Decimal(12)} <= ages
    assert len(_rows()) >= 60


@pytest.mark.parametrize(
    ("age_ms", "tier"),
    [
        (0, 0),
        (3_599_999, 0),
        (3_600_000, 1),
        (14_399_999, 1),
        (14_400_000, 2),
        (43_199_999, 2),
        (43_200_000, 3),
        (-5, 0),
    ],
)
def test_tier_boundaries_in_ms(age_ms: int, tier: int) -> None:
    assert TIERS.tier(age_ms) == tier


def test_rounding_directions() -> None:
    assert round_up(Decimal("64584.81"), Decimal("0.1")) == Decimal("64584.9")
    assert round_up(Decimal("64584.9"), Decimal("0.1")) == Decimal("64584.9")
    assert round_down(Decimal("0.0123456789"), Decimal("0.00000001")) == Decimal("0.01234567")
    assert tp_amount(Decimal("0.999999999"), Decimal("0.00000001")) == Decimal("0.99999999")
    assert tp_amount(Decimal("-1"), Decimal("0.1")) == 0
    assert tp_price(Decimal(100), Decimal(0), Decimal(0), Decimal("0.01")) == Decimal("100.00")


def test_breakeven_tier_covers_both_fees() -> None:
    unit = cost_per_unit([(Decimal("100"), Decimal("1"), Decimal("0.25"))])
    price = tp_price(unit, Decimal(0), Decimal("0.0025"), Decimal("0.01"))
    proceeds = price * (1 - Decimal("0.0025"))
    assert proceeds >= Decimal("100.25")  # sells at or above cost including both fees


def test_dust_rules() -> None:
    market = Market(
        symbol="BTC/USD",
        base="BTC",
        quote="USD",
        tick=Decimal("0.1"),
        lot=Decimal("0.00000001"),
        min_amount=Decimal("0.00005"),
        min_cost=Decimal("0.5"),
        maker_fee=Decimal("0.0025"),
    )
    assert is_dust(Decimal("0.00004"), Decimal("64000"), market)
    assert not is_dust(Decimal("0.00005"), Decimal("64000"), market)
    assert is_dust(Decimal("0.00005"), Decimal("1"), market)  # below min cost
    assert is_dust(Decimal(0), Decimal("64000"), market)


def test_empty_position_has_no_cost() -> None:
    with pytest.raises(ValueError):
        cost_per_unit([])


# --- contexts (issue 11): exact, directed, independent of the caller's context ----------
HOSTILE = Context(prec=5, rounding=ROUND_FLOOR)  # what a careless caller might have set


def market_with(tick: Decimal, maker_fee: Decimal = Decimal(0)) -> Market:
    return Market(
        symbol="BTC/USD",
        base="BTC",
        quote="USD",
        tick=tick,
        lot=Decimal("1E-18"),
        min_amount=Decimal(0),
        min_cost=Decimal(0),
        maker_fee=maker_fee,
    )


FLAT = Tiers(hours=TIERS.hours, targets=(Decimal(0), Decimal(0), Decimal(0), Decimal(0)))


def test_the_28_digit_example_prices_one_tick_above() -> None:
    """Price 1e10, qty 3, fee 1e-18, tick 0.01, maker fee 0: the unit cost is
    10000000000.000000000000000000333..., so the TP is 10000000000.01 (28 digits said
    10000000000.00, below the cost)."""
    buys = [(Decimal("1e10"), Decimal(3), Decimal("1e-18"))]
    for context in (None, HOSTILE):
        with localcontext(context or getcontext()):
            quote = quote_take_profit(
                buys=buys,
                uncovered=Decimal(3),
                age_ms=0,
                market=market_with(Decimal("0.01")),
                tiers=FLAT,
                maker_fee=Decimal(0),
            )
        assert quote.price == Decimal("10000000000.01")
        assert str(quote.price) == "10000000000.01"
    assert tp_price(cost_per_unit(buys), Decimal(0), Decimal(0), Decimal("0.01")) == Decimal(
        "10000000000.01"
    )


def test_money_digits_follow_the_event_bounds() -> None:
    # 38 significant digits within [1E-18, 1E+15): 70 places; a product 140; sums of 1E+20
    assert MONEY.prec == 160
    widest = Decimal("9" * 38).scaleb(-55)  # the smallest places an event number reaches
    largest = Decimal("9" * 38).scaleb(15 - 38)  # just below 1E+15
    exact = MONEY.copy()
    exact.traps[Inexact] = True  # a product and a sum of such numbers must not round
    with localcontext(exact):
        assert largest * largest + widest * widest > 0


# an event's number: 1 to 38 significant digits, from 1E-18 up to below 1E+15
@st.composite
def event_numbers(draw: st.DrawFn, max_digits: int = 38) -> Decimal:
    digits = draw(st.integers(1, max_digits))
    coefficient = draw(st.integers(10 ** (digits - 1), 10**digits - 1))
    adjusted = draw(st.integers(-18, 14))
    return Decimal(coefficient).scaleb(adjusted - digits + 1)


TICKS = st.sampled_from(
    [Decimal(t) for t in ("1E-18", "1E-8", "0.00001", "0.01", "0.1", "0.5", "0.25", "1", "5")]
)
TARGETS = st.integers(-999, 2000).map(lambda n: Decimal(n).scaleb(-3) / 100)  # -9.99 % .. 20 %
MAKER_FEES = st.integers(0, 500).map(lambda n: Decimal(n).scaleb(-4))  # 0 .. 5 %
BUYS = st.lists(
    st.tuples(event_numbers(), event_numbers(), st.one_of(st.just(Decimal(0)), event_numbers())),
    min_size=1,
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(buys=BUYS, target=TARGETS, maker_fee=MAKER_FEES, tick=TICKS, hostile=st.booleans())
def test_a_tp_price_is_the_first_tick_at_or_above_its_exact_target(
    buys: list[tuple[Decimal, Decimal, Decimal]],
    target: Decimal,
    maker_fee: Decimal,
    tick: Decimal,
    hostile: bool,
) -> None:
    """Against exact fractions: never below the target because of rounding, and not a
    tick above the first tick that reaches it; whatever the caller's context."""
    cost = sum((Fraction(p) * Fraction(q) + Fraction(f) for p, q, f in buys), Fraction(0))
    quantity = sum((Fraction(q) for _, q, _ in buys), Fraction(0))
    exact = cost * (1 + Fraction(target)) / (quantity * (1 - Fraction(maker_fee)))
    tiers = Tiers(hours=TIERS.hours, targets=(target, target, target, target))
    with localcontext(HOSTILE if hostile else getcontext()):
        quote = quote_take_profit(
            buys=buys,
            uncovered=Decimal(1),
            age_ms=0,
            market=market_with(tick),
            tiers=tiers,
            maker_fee=maker_fee,
        )
    price = Fraction(quote.price)
    assert price >= exact
    assert price - Fraction(tick) < exact
    assert price / Fraction(tick) == int(price / Fraction(tick))


@settings(max_examples=200, deadline=None)
@given(value=event_numbers(), tick=TICKS)
def test_rounding_to_a_step_is_exact_in_any_context(value: Decimal, tick: Decimal) -> None:
    with localcontext(HOSTILE):
        up, down = round_up(value, tick), round_down(value, tick)
    steps = Fraction(value) / Fraction(tick)
    assert Fraction(up) == math.ceil(steps) * Fraction(tick)
    assert Fraction(down) == math.floor(steps) * Fraction(tick)


@settings(max_examples=200, deadline=None)
@given(
    buys=st.lists(
        st.tuples(event_numbers(20), event_numbers(20), event_numbers(20)), min_size=1, max_size=4
    ),
    sells=st.lists(st.tuples(event_numbers(20), event_numbers(20)), max_size=3),
    bid=event_numbers(20),
)
def test_position_figures_do_not_depend_on_the_callers_context(
    buys: list[tuple[Decimal, Decimal, Decimal]],
    sells: list[tuple[Decimal, Decimal]],
    bid: Decimal,
) -> None:
    """Quantities, cost, realized and unrealized P&L: the same under a 5-digit context as
    under the default one; quantities and cost exactly the fractions'."""
    position = new_position(session_id="s", position_id="p", symbol="BTC/USD", opened_at=0)
    for n, (price, qty, fee) in enumerate(buys):
        position = position.with_buy(Buy(f"b{n}", price, qty, fee, n))
    for n, (price, qty) in enumerate(sells):
        position = position.with_close(Close(f"s{n}", qty, price, Decimal(0), n))

    def figures() -> tuple[object, ...]:
        totals = position.totals()
        return (
            totals,
            totals.uncovered,
            totals.open_quantity,
            totals.unit_cost,
            position.realized_pnl,
            position.unrealized_pnl(bid),
            position.on_book,
        )

    plain = figures()
    with localcontext(HOSTILE):
        assert figures() == plain
    totals = position.totals()
    assert Fraction(totals.filled) == sum(Fraction(q) for _, q, _ in buys)
    assert Fraction(totals.cost) == sum(Fraction(p) * Fraction(q) + Fraction(f) for p, q, f in buys)
    assert Fraction(totals.closed_other) == sum(Fraction(q) for _, q in sells)
