"""Sending limit sells to the exchange within its rate budget (Kraken's counter, issue 14).

Every order mmops places goes through `Placer.send`: the coverage batch, a single TP,
a re-send, a reprice. Without a budget (the paper exchange, other ccxt exchanges) it is
one `place_limit_sells` call. With one, each pair's orders are spent for before they
are sent, largest notional first; what does not fit waits while the counter decays, up
to EXCHANGE_RATE_MAX_WAIT_MS, and is then `Denied` (the caller records it `skipped`
with the reason and the sweeper covers it later). Orders over the pair's open-order cap
are `Denied` with `open_orders_limit` at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from base import logs
from trading.client_ids import is_ours
from trading.exchange import Exchange, ExchangeError, Order, SellRequest
from trading.kraken_limits import PLACE_COST, RateBudget, cancel_cost

log = logs.get("mmops.placing")

RATE_BUDGET = "rate_budget"
OPEN_ORDERS_LIMIT = "open_orders_limit"


@dataclass(frozen=True, slots=True)
class Denied:
    """Not sent: the rate budget refused it."""

    reason: str  # RATE_BUDGET | OPEN_ORDERS_LIMIT


Sent = Order | ExchangeError | Denied


class Placer:
    def __init__(
        self,
        exchange: Exchange,
        budget: RateBudget | None = None,
        *,
        max_wait_ms: int = 30_000,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.exchange = exchange
        self.budget = budget
        self.max_wait_ms = max_wait_ms
        self._sleep = sleep

    async def send(self, requests: Sequence[SellRequest]) -> list[Sent]:
        """Place the sells (one exchange call per round); per request, what came of it."""
        if not requests:
            return []
        if self.budget is None:
            return list(await self.exchange.place_limit_sells(requests))
        out: list[Sent | None] = [None] * len(requests)
        waiting = sorted(range(len(requests)), key=lambda i: -_notional(requests[i]))
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while waiting:
            granted, waiting, wait_ms = await self._spend(requests, waiting, out)
            if granted:
                placed = await self.exchange.place_limit_sells([requests[i] for i in granted])
                for i, result in zip(granted, placed, strict=True):
                    out[i] = result
            if not waiting:
                break
            pause = wait_ms / 1000
            if wait_ms < 0 or time.monotonic() + pause > deadline:
                for i in waiting:
                    out[i] = Denied(RATE_BUDGET)
                break
            await self._sleep(max(pause, 0.01))
        return [r if r is not None else Denied(RATE_BUDGET) for r in out]

    async def _spend(
        self, requests: Sequence[SellRequest], order: list[int], out: list[Sent | None]
    ) -> tuple[list[int], list[int], int]:
        """Spend for as many of `order` (largest notional first, per pair) as fit now:
        (granted, still waiting, shortest wait in ms)."""
        assert self.budget is not None
        granted: list[int] = []
        waiting: list[int] = []
        wait_ms = -1
        full: set[str] = set()  # pairs whose budget ran out this round
        for i in order:
            symbol = requests[i].symbol
            if symbol in full:
                waiting.append(i)
                continue
            grant = await self.budget.try_spend(symbol, PLACE_COST, new_orders=1)
            if grant.ok:
                granted.append(i)
            elif grant.reason == OPEN_ORDERS_LIMIT:
                out[i] = Denied(OPEN_ORDERS_LIMIT)
            else:
                full.add(symbol)
                waiting.append(i)
                if grant.wait_ms >= 0:
                    wait_ms = grant.wait_ms if wait_ms < 0 else min(wait_ms, grant.wait_ms)
        return granted, waiting, wait_ms

    async def may_cancel(self, symbol: str, age_ms: int) -> bool:
        """Spend what cancelling an order of this age costs; False when it does not fit now
        (a reprice then waits for a later pass)."""
        if self.budget is None:
            return True
        cost = cancel_cost(age_ms)
        return cost == 0 or (await self.budget.try_spend(symbol, cost)).ok

    async def closed(self, symbol: str) -> None:
        """One of our orders on the pair is no longer open (filled or cancelled)."""
        if self.budget is not None:
            await self.budget.release_open(symbol)

    async def open_counts(self) -> dict[str, int]:
        """mmops' open orders per pair as the budget counts them (none without a budget)."""
        if self.budget is None:
            return {}
        return {pair.symbol: pair.open_orders for pair in await self.budget.state()}

    async def sync_open(self, before: Mapping[str, int], orders: Iterable[Order]) -> None:
        """After a whole read of the exchange's open orders: bring each pair's count in line.

        The count is corrected by what the read found against what the budget counted when
        the read began (`open_counts`), not set: an order placed during the read is then
        counted twice until the next read corrects it, which errs on the safe side of the
        cap, where setting the count would forget it."""
        if self.budget is None:
            return
        found = Counter(order.symbol for order in orders if is_ours(order.client_id))
        for symbol in sorted(before.keys() | found.keys()):
            delta = found[symbol] - before.get(symbol, 0)
            if delta:
                log.info("open orders of %s: %+d to match the exchange", symbol, delta)
                await self.budget.record(symbol, 0, new_orders=delta)

    async def alert_due(self, symbol: str) -> bool:
        """Whether the open-order cap of the pair is to be alerted now (once per pair and hour)."""
        return self.budget is not None and await self.budget.alert_due(symbol, OPEN_ORDERS_LIMIT)


def _notional(request: SellRequest) -> Decimal:
    return request.amount * request.price
