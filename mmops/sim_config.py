"""What a simulation is asked for (SimConfig), the pairs it trades and what it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from trading.paper import KRAKEN_USD_PAIRS, PairRules

# Reference prices (USD) for the listed pairs; the walk starts from these.
START_PRICES: dict[str, Decimal] = {
    "BTC/USD": Decimal("95000"),
    "ETH/USD": Decimal("3300"),
    "SOL/USD": Decimal("190"),
    "XRP/USD": Decimal("2.3"),
    "ADA/USD": Decimal("0.9"),
    "DOGE/USD": Decimal("0.32"),
    "DOT/USD": Decimal("6.5"),
    "LINK/USD": Decimal("20"),
    "LTC/USD": Decimal("100"),
    "AVAX/USD": Decimal("35"),
}


class SimulationError(ValueError):
    """A bad simulation parameter; str() is the one-line message."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    sessions: int = 3
    pairs: int = 10
    rate: float = 20.0  # buy fills per second
    duration: float = 30.0  # seconds
    seed: int = 0
    volatility: float = 0.3  # std. dev. of the log price, percent per sqrt(second)
    tag: str = ""  # part of every id; "" = the seed and the start time (ids never collide)
    after_end: float = 0.0  # seconds prices keep moving once the last session ended
    rolling: bool = False  # `sessions` live at once, each session_seconds long (mmops/rolling.py)
    session_seconds: float = 60.0
    close_within: float = 30.0  # rolling: an ended session's TPs all fill within this

    def validate(self) -> None:
        if self.sessions < 1:
            raise SimulationError(f"--sessions: expected >= 1, got {self.sessions}")
        if not 1 <= self.pairs <= 500:
            raise SimulationError(f"--pairs: expected 1 to 500, got {self.pairs}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise SimulationError(f"--rate: expected a number > 0, got {self.rate}")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise SimulationError(f"--duration: expected a number > 0, got {self.duration}")
        if not (math.isfinite(self.volatility) and self.volatility >= 0):
            raise SimulationError(f"--volatility: expected a number >= 0, got {self.volatility}")
        if not (math.isfinite(self.after_end) and self.after_end >= 0):
            raise SimulationError(f"--after-end: expected a number >= 0, got {self.after_end}")
        if self.rolling and not (self.session_seconds > 0 and self.close_within >= 0):
            raise SimulationError("--session-seconds: expected > 0; --close-within: >= 0")
        if len(self.tag) > 24 or not all(c.isalnum() or c in "._-" for c in self.tag):
            raise SimulationError("--tag: expected up to 24 characters of [A-Za-z0-9._-]")

    @property
    def total_buys(self) -> int:
        return max(1, round(self.rate * self.duration))


@dataclass(frozen=True, slots=True)
class Pair:
    symbol: str
    rules: PairRules
    start: Decimal

    @property
    def qty_step(self) -> Decimal:
        """Quantities are multiples of this (two digits finer than the minimum, >= 1e-8)."""
        return max(Decimal(1).scaleb(self.rules.min_amount.adjusted() - 2), self.rules.lot)


def pairs_for(count: int) -> list[Pair]:
    """The first `count` Kraken USD pairs, then synthetic SIMnnn/USD pairs (generic rules)."""
    out = [Pair(s, r, START_PRICES[s]) for s, r in KRAKEN_USD_PAIRS.items()][:count]
    for n in range(len(out), count):
        start = Decimal(10 + (n * 37) % 290)
        out.append(
            Pair(
                f"SIM{n:03d}/USD",
                PairRules(tick=Decimal("0.001"), min_amount=Decimal("0.01")),
                start,
            )
        )
    return out


@dataclass
class PairStats:
    start: Decimal
    last: Decimal
    buys: int = 0
    sells: int = 0


@dataclass
class SimStats:
    """What was sent so far (read by progress lines and the summary)."""

    elapsed: float = 0.0
    events: int = 0
    buys: int = 0
    buy_orders: int = 0
    partial_orders: int = 0
    sells: int = 0
    sells_after_end: int = 0  # TP fills of sessions that had ended
    sessions_started: int = 0
    sessions_ended: int = 0
    session_ids: list[str] = field(default_factory=list)
    pairs: dict[str, PairStats] = field(default_factory=dict)
    planned_buys: int = 0
    tag: str = ""
