"""Kraken's trading-rate counter and open-order cap, as a budget shared by mmops' processes.

Kraken keeps, per account and pair, a counter that every order placed raises by 1 and
every cancel raises by a penalty that is larger the younger the order is; it decays
linearly; above the tier's threshold orders are refused (`EOrder:Rate limit exceeded`).
Each pair also has a cap on open orders (`EOrder:Orders limit exceeded`).

| tier | threshold | decay per s | open orders per pair |
|---|---|---|---|
| starter | 60 | 1 | 60 |
| intermediate | 125 | 2.34 | 80 |
| pro | 180 | 3.75 | 225 |

The trader spends the same counter and holds orders under the same cap, unseen by
mmops. So mmops models only its own share: with `EXCHANGE_RATE_RESERVE_PERCENT` = R,
mmops may hold (100 − R) % of the threshold, its share decays at (100 − R) % of the
tier's rate, and it may keep (100 − R) % of the cap open. If the trader stays within
the rest, the real counter (ours + the trader's, decaying at the full rate) never goes
above the threshold: one counter decaying at rate d is never above two that each decay
at their share of d. Starter with R = 50: a burst of 30 orders, then one every 2 s;
at most 30 open TPs per pair.

How callers use it (the adapter itself never spends):
- coverage, before placing n TPs of a pair: `try_spend(symbol, n * PLACE_COST,
  new_orders=n)`; refused with reason `rate_budget` → wait `wait_ms` (or queue), with
  `open_orders_limit` → skip the TP with that reason, and alert if `alert_due(symbol)`;
- the sweeper, before repricing a TP (cancel + place): `try_spend(symbol,
  reprice_cost(age_ms))`, oldest TPs first (they cost less);
- when a TP is cancelled or fills: `release_open(symbol)`; after reading the
  exchange's open orders: `sync_open(symbol, count_of_ours)`;
- when the exchange answers "rate limit" anyway: `saturate(symbol)`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from storage.rate_budget import SCALE, RateCounters, SpendResult
from storage.redis import AnyRedis


@dataclass(frozen=True, slots=True, kw_only=True)
class Tier:
    name: str
    threshold: int  # counter value above which orders are refused
    decay_per_s: Decimal  # counter units per second
    max_open: int  # open orders per pair


TIERS: dict[str, Tier] = {
    "starter": Tier(name="starter", threshold=60, decay_per_s=Decimal(1), max_open=60),
    "intermediate": Tier(
        name="intermediate", threshold=125, decay_per_s=Decimal("2.34"), max_open=80
    ),
    "pro": Tier(name="pro", threshold=180, decay_per_s=Decimal("3.75"), max_open=225),
}

PLACE_COST = 1

# (order younger than ms, penalty of cancelling it); 0 from 300 s on
_CANCEL_PENALTIES = (
    (5_000, 8),
    (10_000, 6),
    (15_000, 5),
    (45_000, 4),
    (90_000, 2),
    (300_000, 1),
)


def cancel_cost(age_ms: int) -> int:
    """What cancelling an order of this age adds to Kraken's counter."""
    for younger_than, penalty in _CANCEL_PENALTIES:
        if age_ms < younger_than:
            return penalty
    return 0


def reprice_cost(age_ms: int) -> int:
    """Cancelling an order of this age and placing its replacement."""
    return cancel_cost(age_ms) + PLACE_COST


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer of `RateBudget.try_spend`."""

    ok: bool
    wait_ms: int  # when refused for rate_budget: until the cost fits (-1: it never will)
    reason: str  # "" | "rate_budget" | "open_orders_limit"
    used: Decimal  # mmops' counter after the call
    open_orders: int  # mmops' open orders on the pair after the call


@dataclass(frozen=True, slots=True)
class PairBudget:
    """One pair's budget as `mmops status` shows it."""

    symbol: str
    used: Decimal  # mmops' counter now
    limit: Decimal  # mmops' share of the threshold
    free: Decimal  # limit - used
    refill_ms: int  # until the counter is back to zero
    open_orders: int
    open_cap: int


Sleep = Callable[[float], Awaitable[None]]


class RateBudget:
    """mmops' share of one exchange's per-pair counters (see the module docstring)."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        tier: Tier,
        reserve_percent: Decimal,
        prefix: str = "",
        exchange: str = "kraken",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not Decimal(0) <= reserve_percent < 100:
            raise ValueError("reserve_percent must be at least 0 and below 100")
        share = (100 - reserve_percent) / 100
        self.tier = tier
        self.reserve_percent = reserve_percent
        self.limit = Decimal(tier.threshold) * share
        self.decay_per_s = tier.decay_per_s * share
        # integers for the script: millionths, rounded so that mmops errs on the safe side
        self._limit_u = int((self.limit * SCALE).to_integral_value(ROUND_FLOOR))
        self._decay_u = max(
            1, int((self.decay_per_s * SCALE / 1000).to_integral_value(ROUND_FLOOR))
        )
        self.open_cap = int((tier.max_open * share).to_integral_value(ROUND_FLOOR))
        self._counters = RateCounters(redis, prefix=prefix, exchange=exchange)
        self._sleep = sleep

    async def try_spend(self, symbol: str, cost: int, *, new_orders: int = 0) -> Grant:
        """Reserve `cost` of `symbol`'s counter (and `new_orders` open orders) if both fit."""
        if cost < 0 or new_orders < 0:
            raise ValueError("cost and new_orders must not be negative")
        return self._grant(
            await self._counters.spend(
                symbol,
                cost=cost * SCALE,
                limit=self._limit_u,
                decay_per_ms=self._decay_u,
                open_delta=new_orders,
                open_cap=self.open_cap,
            )
        )

    async def spend(
        self, symbol: str, cost: int, *, max_wait_ms: int, new_orders: int = 0
    ) -> Grant:
        """`try_spend`, waiting up to `max_wait_ms` while the counter decays."""
        deadline = time.monotonic() + max_wait_ms / 1000
        while True:
            grant = await self.try_spend(symbol, cost, new_orders=new_orders)
            if grant.ok or grant.reason != "rate_budget" or grant.wait_ms < 0:
                return grant
            left = deadline - time.monotonic()
            if left <= 0:
                return grant
            await self._sleep(min(max(grant.wait_ms, 1) / 1000, left))

    async def record(self, symbol: str, cost: int, *, new_orders: int = 0) -> Grant:
        """Count what was spent without asking (e.g. a cancel that could not wait)."""
        return self._grant(
            await self._counters.spend(
                symbol,
                cost=cost * SCALE,
                limit=self._limit_u,
                decay_per_ms=self._decay_u,
                open_delta=new_orders,
                mode="record",
            )
        )

    async def release_open(self, symbol: str, count: int = 1) -> None:
        """`count` of mmops' orders on the pair are no longer open (cancelled or filled)."""
        await self._counters.spend(
            symbol,
            cost=0,
            limit=self._limit_u,
            decay_per_ms=self._decay_u,
            open_delta=-count,
            mode="record",
        )

    async def sync_open(self, symbol: str, count: int) -> None:
        """Set mmops' open-order count of the pair from the exchange's open orders."""
        await self._counters.spend(
            symbol,
            cost=0,
            limit=self._limit_u,
            decay_per_ms=self._decay_u,
            open_delta=count,
            mode="sync",
        )

    async def saturate(self, symbol: str) -> None:
        """The exchange refused for the rate: treat mmops' share as fully spent."""
        await self._counters.spend(
            symbol,
            cost=self._limit_u,
            limit=self._limit_u,
            decay_per_ms=self._decay_u,
            mode="saturate",
        )

    async def alert_due(
        self, symbol: str, kind: str = "open_orders_limit", every_ms: int = 3_600_000
    ) -> bool:
        """Whether this caller should raise the pair's `kind` alert now: true once per
        `every_ms` across every process (the open-order cap alerts once per pair and hour)."""
        return await self._counters.first_in(symbol, kind, every_ms)

    async def state(self, symbols: Iterable[str] | None = None) -> list[PairBudget]:
        """Each pair's used / free / refill time (every pair seen, when `symbols` is None)."""
        names = list(symbols) if symbols is not None else await self._counters.symbols()
        states = await self._counters.read(names, decay_per_ms=self._decay_u)
        out = []
        for symbol in names:
            st = states[symbol]
            used = Decimal(st.counter) / SCALE
            out.append(
                PairBudget(
                    symbol=symbol,
                    used=used,
                    limit=self.limit,
                    free=self.limit - used,
                    refill_ms=math.ceil(st.counter / self._decay_u),
                    open_orders=st.open_orders,
                    open_cap=self.open_cap,
                )
            )
        return out

    @staticmethod
    def _grant(result: SpendResult) -> Grant:
        return Grant(
            ok=result.granted,
            wait_ms=result.wait_ms,
            reason=result.reason,
            used=Decimal(result.counter) / SCALE,
            open_orders=result.open_orders,
        )
