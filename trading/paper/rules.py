"""Pair rules of the paper exchange: Kraken's USD pairs, and the generic rules of others."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from trading.exchange import BadSymbol
from trading.paper.units import PRICE_EXP

GENERIC_LOT = Decimal("0.00000001")
GENERIC_MIN_COST = Decimal("0.5")
GENERIC_FALLBACK_TICK = Decimal("0.00000001")  # an unlisted symbol before any price
GENERIC_SIGNIFICANT_DIGITS = 5
MIN_TICK = Decimal(1).scaleb(-PRICE_EXP)

_SYMBOL = re.compile(r"([A-Za-z0-9.]{1,24})/([A-Za-z0-9.]{1,24})")  # as events/codec.py


@dataclass(frozen=True, slots=True)
class PairRules:
    tick: Decimal
    min_amount: Decimal
    min_cost: Decimal = Decimal("0.5")
    lot: Decimal = Decimal("0.00000001")  # Kraken lot_decimals = 8


# Kraken spot USD pairs (AssetPairs: tick_size, ordermin, costmin, lot_decimals=8).
# BTC, ETH, SOL and DOGE were read from AssetPairs answers recorded in 2026; the other
# ordermins from a 2026 AssetPairs-derived table and the other ticks from Kraken's
# pair_decimals. Kraken revises ordermin from time to time: treat them as a snapshot.
KRAKEN_USD_PAIRS: Mapping[str, PairRules] = {
    "BTC/USD": PairRules(tick=Decimal("0.1"), min_amount=Decimal("0.00005")),
    "ETH/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.002")),
    "SOL/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.06")),
    "XRP/USD": PairRules(tick=Decimal("0.00001"), min_amount=Decimal("1.65")),
    "ADA/USD": PairRules(tick=Decimal("0.000001"), min_amount=Decimal("20")),
    "DOGE/USD": PairRules(tick=Decimal("0.0000001"), min_amount=Decimal("50")),
    "DOT/USD": PairRules(tick=Decimal("0.0001"), min_amount=Decimal("3.9")),
    "LINK/USD": PairRules(tick=Decimal("0.00001"), min_amount=Decimal("0.55")),
    "LTC/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.1")),
    "AVAX/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.5")),  # tick approximate
}


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) of a BASE/QUOTE symbol; BadSymbol otherwise."""
    match = _SYMBOL.fullmatch(symbol) if isinstance(symbol, str) else None
    if match is None or match.group(1) == match.group(2):
        raise BadSymbol(f"not a BASE/QUOTE symbol: {str(symbol)[:60]!r}")
    return match.group(1), match.group(2)


def generic_tick(price: Decimal) -> Decimal:
    """Tick of an unlisted symbol: 5 significant digits at this price (>= 1e-18)."""
    return max(Decimal(1).scaleb(price.adjusted() - GENERIC_SIGNIFICANT_DIGITS + 1), MIN_TICK)


def generic_rules(tick: Decimal | None) -> PairRules:
    """Rules of an unlisted symbol: lot 1e-8, no ordermin, costmin 0.5, the tick given
    (the fallback tick while no price fixed it yet)."""
    return PairRules(
        tick=tick or GENERIC_FALLBACK_TICK,
        min_amount=Decimal(0),
        min_cost=GENERIC_MIN_COST,
        lot=GENERIC_LOT,
    )
