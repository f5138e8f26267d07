"""TP pricing against the worked examples of DESIGN §3 (tests/data/tp_prices.csv)."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from trading.exchange import Market
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
