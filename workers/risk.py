"""The portfolio's daily loss limit (docs/contract.md §3, Portfolio stop-loss).

Realized P&L of the current UTC day (every sell — TP fill or other — with its ts in the
day) plus unrealized P&L (open quantity x (last price - unit cost), each pair's quote
fetched once per pass; the exchange's last trade price, as the contract says, or the
best bid where the exchange gives no last price, noted in the report) across every
active session. Below -PORTFOLIO_DAILY_LOSS_LIMIT it sets `risk:halt` (JSON with the
figures; the trader stops opening positions) and alerts
`stop_loss`; a halt from an earlier UTC day is cleared. With EMERGENCY_EXIT the live TPs
are cancelled and the positions are sold at the best bid through a dedicated, claimed
coverage step (deterministic client id), so an exit can never be placed twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from base import logs
from base.clock import iso, utc_day
from base.logs import one_line
from trading.book import Committed, Conflict
from trading.exchange import (
    CircuitOpen,
    DuplicateClientId,
    ExchangeError,
    Order,
    Quote,
    TransientError,
)
from trading.outcomes import MAX_CAS_TRIES, Outcome, Result
from trading.positions import Position, Step
from trading.pricing import is_dust, tp_amount
from workers.lease import Guard
from workers.parts import TradingParts
from workers.session_view import SessionView, figures_of

log = logs.get("mmops.risk")

ZERO = Decimal(0)
EXIT_REASON = "emergency_exit"
QUOTE_CONCURRENCY = 16


@dataclass
class RiskReport:
    day: str
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    limit: Decimal | None = None
    halted: bool = False
    set_now: bool = False
    cleared: bool = False
    unpriced: list[str] = field(default_factory=list)  # pairs without a quote this pass
    at_bid: list[str] = field(default_factory=list)  # pairs without a last price: at the bid
    exits: int = 0
    cancelled: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized

    def figures(self) -> dict[str, str]:
        return {
            "day": self.day,
            "realized": str(self.realized),
            "unrealized": str(self.unrealized),
            "total": str(self.total),
            "limit": "" if self.limit is None else str(self.limit),
        }


def day_bounds(now_ms: int) -> tuple[int, int]:
    """[start, end) of the UTC day containing now_ms, epoch ms."""
    day = datetime.fromtimestamp(now_ms / 1000, tz=UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    start = int(day.timestamp() * 1000)
    return start, start + 86_400_000


def daily_pnl(
    sessions: Iterable[SessionView], prices: dict[str, Decimal], now_ms: int
) -> tuple[Decimal, Decimal]:
    """(realized today, unrealized at `prices`); open quantity of unpriced pairs is left out."""
    start, end = day_bounds(now_ms)
    realized = unrealized = ZERO
    for view in sessions:
        for ts, pnl in view.sells():
            if start <= ts < end:
                realized += pnl
        for symbol, qty in view.open_qty.items():
            price = prices.get(symbol)
            if price is not None:
                unrealized += qty * price - view.open_cost[symbol]
    return realized, unrealized


class RiskGuard:
    def __init__(self, app: TradingParts, guard: Guard | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.keys = app.keys
        self.redis = app.redis
        self.guard = guard if guard is not None else Guard(app.stop)

    async def check(self, sessions: dict[str, SessionView]) -> RiskReport:
        """Evaluate today's P&L over the sessions' views; set or clear the halt."""
        now = self.app.clock.now_ms()
        report = RiskReport(day=utc_day(now), limit=self.settings.portfolio_daily_loss_limit)
        halt = await self._current_halt()
        if halt is not None and str(halt.get("day", report.day)) < report.day:
            self.guard.check()
            await self.redis.delete(self.keys.risk_halt)
            report.cleared = True
            log.info("risk:halt of %s cleared on %s", halt.get("day"), report.day)
            halt = None
        if report.limit is None:
            return report
        quotes = await self._quotes(
            {symbol for view in sessions.values() for symbol in view.open_qty}, report
        )
        bids = {symbol: quote.bid for symbol, quote in quotes.items()}
        last = {
            symbol: quote.bid if quote.last is None else quote.last
            for symbol, quote in quotes.items()
        }
        report.at_bid = sorted(symbol for symbol, quote in quotes.items() if quote.last is None)
        report.realized, report.unrealized = daily_pnl(sessions.values(), last, now)
        figures: dict[Any, Any] = {**report.figures(), "updated_at": iso(now)}
        self.guard.check()
        await self.redis.hset(self.keys.daily_pnl, mapping=figures)
        if report.total < -report.limit:
            report.halted = True
            if halt is None:
                await self._set_halt(report, now)
            if self.settings.emergency_exit and not self.settings.dry_run:
                await self._exit_all(sessions, bids, report)
        else:
            report.halted = halt is not None
        return report

    async def _current_halt(self) -> dict[str, object] | None:
        raw = await self.redis.get(self.keys.risk_halt)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {"day": "9999-99-99"}  # set by hand, not ours to clear
        return value if isinstance(value, dict) else {"day": "9999-99-99"}

    async def _quotes(self, symbols: set[str], report: RiskReport) -> dict[str, Quote]:
        """Each pair's quote (bid, ask, last), one call per pair per pass."""
        limit = asyncio.Semaphore(QUOTE_CONCURRENCY)
        quotes: dict[str, Quote] = {}

        async def one(symbol: str) -> None:
            async with limit:
                try:
                    quotes[symbol] = await self.app.exchange.quote(symbol)
                except ExchangeError as exc:
                    report.unpriced.append(symbol)
                    report.errors.append(f"quote {symbol}: {one_line(exc)}")

        await asyncio.gather(*(one(s) for s in sorted(symbols)))
        if report.unpriced:
            log.warning(
                "no quote for %s: their unrealized P&L is left out", ", ".join(report.unpriced)
            )
        return quotes

    async def _set_halt(self, report: RiskReport, now: int) -> None:
        figures = {**report.figures(), "set_at": iso(now)}
        self.guard.check()
        if await self.redis.set(self.keys.risk_halt, orjson.dumps(figures), nx=True):
            report.set_now = True
            await self.app.alert(
                "stop_loss",
                f"portfolio daily loss limit breached: P&L {report.total} < -{report.limit} on "
                f"{report.day}",
                **figures,
            )

    # --- emergency exit ---------------------------------------------------------------
    async def _exit_all(
        self, sessions: dict[str, SessionView], bids: dict[str, Decimal], report: RiskReport
    ) -> None:
        for sid, view in sessions.items():
            figures = view.figures
            if not view.complete:  # loaded from a snapshot: the positions themselves
                stored = await self.app.book.positions(sid)
                figures = {pid: figures_of(pos) for pid, pos in stored.items()}
            for pid, f in list(figures.items()):
                bid = bids.get(f.symbol)
                if not f.is_open or bid is None:
                    continue
                self.guard.check()
                try:
                    await self.exit_position(sid, pid, bid, report)
                except ExchangeError as exc:
                    report.errors.append(f"exit {sid} {pid}: {one_line(exc)}")

    async def exit_position(self, sid: str, pid: str, bid: Decimal, report: RiskReport) -> Outcome:
        """Cancel the position's live TPs, then sell what is uncovered at the best bid."""
        engine = self.app.engine
        pos = await self.app.book.position(sid, pid, fresh=True)
        if pos is None:
            return Outcome(Result.NOTHING)
        if pos.pending is not None:
            settled = await engine.resolve_pending(pos)
            if settled.result is not Result.NOTHING or settled.position is None:
                return settled  # still in flight: looked at again next pass
            pos = settled.position
        for step in pos.live:
            if step.reason == EXIT_REASON:
                continue
            outcome = await engine.cancel_step(pos, step)
            if outcome.result is Result.CANCELLED:
                report.cancelled += 1
            pos = outcome.position or pos
        outcome = await self._claim_and_place(pos, bid)
        if outcome.result is Result.CREATED:
            report.exits += 1
            log.warning("emergency exit of %s %s at %s", sid, pid, bid, extra={"session_id": sid})
        return outcome

    async def _claim_and_place(self, pos: Position, bid: Decimal) -> Outcome:
        """Claim a coverage step for the exit (CAS, deterministic client id), then place it."""
        engine = self.app.engine
        market = await self.app.exchange.market(pos.symbol)
        for _ in range(MAX_CAS_TRIES):
            amount = tp_amount(pos.uncovered, market.lot)
            if is_dust(amount, bid, market):
                return Outcome(Result.DUST, pos)
            step = engine.new_step(
                pos, qty=amount, price=bid, tier=len(self.settings.tier_hours), reason=EXIT_REASON
            )
            result = await engine.claim(pos, step)
            if isinstance(result, Conflict):
                if result.current is None:
                    return Outcome(Result.NOTHING)
                pos = result.current
                if pos.pending is not None:
                    return Outcome(Result.PENDING, pos, "another caller is placing a step")
                continue
            if not isinstance(result, Committed):
                return Outcome(Result.NOTHING)
            claimed = result.positions[0]
            order = await self._place(claimed, step)
            if order is None:
                return Outcome(Result.PENDING, claimed, "exit outcome unknown")
            if isinstance(order, str):
                return await engine.give_up(claimed, step, "failed", order)
            return await engine.confirm(claimed, step, order)
        return Outcome(Result.PENDING, pos, "position kept changing (CAS retries exhausted)")

    async def _place(self, pos: Position, step: Step) -> Order | str | None:
        """The exit order, the reason the exchange refused it, or None if the outcome is unknown."""
        exchange = self.app.exchange
        try:
            return await exchange.place_limit_sell(
                symbol=pos.symbol,
                amount=step.qty,
                price=step.price,
                client_id=step.client_id,
                post_only=False,
            )
        except DuplicateClientId:
            return await exchange.fetch_order_by_client_id(
                symbol=pos.symbol, client_id=step.client_id
            )
        except ExchangeError as exc:
            if isinstance(exc, TransientError) and not isinstance(exc, CircuitOpen):
                return None
            return f"emergency exit not placed: {one_line(exc)}"
