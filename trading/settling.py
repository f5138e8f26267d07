"""What the exchange did with a claimed step, recorded: created, refused, re-priced once.

`StepSettler` sends claimed steps (through trading/placing.py, within the rate budget),
confirms the placed ones — one round trip for a batch — and settles each refusal as
its reason says: `skipped` (no balance, the budget, the open-order cap), `failed` (a
permanent refusal; post-only twice), pending (outcome unknown: resolved later by client
id). The take-profit engine (trading/takeprofit.py) exposes these as its public steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec

from base import logs
from base.clock import Clock
from base.faults import crash_point
from base.metrics import TAKEPROFITS
from base.settings import Settings
from storage.alerts import write_alert
from storage.keys import Keys
from storage.ledger import Group
from trading.book import Committed, Conflict, PositionBook
from trading.exchange import (
    CircuitOpen,
    DuplicateClientId,
    Exchange,
    ExchangeError,
    InsufficientFunds,
    Market,
    OpenOrdersLimit,
    Order,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    Quote,
    RateLimited,
    SellRequest,
    TransientError,
)
from trading.outcomes import MAX_CAS_TRIES, MAX_REASON, Outcome, Result
from trading.placing import OPEN_ORDERS_LIMIT, RATE_BUDGET, Denied, Placer
from trading.positions import Position, Step, StepStatus
from trading.pricing import round_up
from trading.tp_records import Refusal, TpRecords

log = logs.get("mmops.takeprofit")
_CREATED = TAKEPROFITS.labels("created")  # the child, looked up once (the hot path)


class StepSettler:
    def __init__(
        self,
        *,
        book: PositionBook,
        exchange: Exchange,
        placer: Placer,
        records: TpRecords,
        keys: Keys,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.book = book
        self.exchange = exchange
        self.placer = placer
        self.records = records
        self.keys = keys
        self.settings = settings
        self.clock = clock

    async def place(self, pos: Position, step: Step, market: Market) -> Outcome:
        """Send a claimed step to the exchange and record what came of it."""
        [outcome] = await self.place_many([(pos, step, market)])
        return outcome

    async def place_many(self, claims: Sequence[tuple[Position, Step, Market]]) -> list[Outcome]:
        """Send claimed steps (one exchange call per round of the rate budget), record the
        placed ones in one round trip, settle each refusal."""
        if not claims:
            return []
        if self.settings.dry_run:  # DRY_RUN holds on every path, re-sends included
            return [await self.give_up(pos, step, "skipped", "dry_run") for pos, step, _ in claims]
        sent = await self.placer.send(
            [
                SellRequest(
                    symbol=pos.symbol, amount=step.qty, price=step.price, client_id=step.client_id
                )
                for pos, step, _ in claims
            ]
        )
        placed = [
            (pos, step, r)
            for (pos, step, _), r in zip(claims, sent, strict=True)
            if isinstance(r, Order)
        ]
        if placed:
            crash_point("order_placed")
        confirmed = iter(await self.confirm_many(placed))
        outcomes: list[Outcome] = []
        for (pos, step, market), result in zip(claims, sent, strict=True):
            if isinstance(result, Order):
                outcomes.append(next(confirmed))
            else:
                outcomes.append(await self.refused(pos, step, market, result))
        return outcomes

    async def refused(
        self, pos: Position, step: Step, market: Market, why: ExchangeError | Denied
    ) -> Outcome:
        """A step the exchange (or the rate budget) did not take: settle it as its reason says."""
        if not isinstance(why, TransientError | Denied | DuplicateClientId):
            await self.placer.closed(pos.symbol)  # spent for an order that does not exist
        if isinstance(why, Denied | OpenOrdersLimit):
            reason = why.reason if isinstance(why, Denied) else OPEN_ORDERS_LIMIT
            if reason == OPEN_ORDERS_LIMIT and await self.placer.alert_due(pos.symbol):
                await self._alert_open_orders(pos)
            detail = "" if isinstance(why, Denied) else f": {why}"
            return await self.give_up(pos, step, "skipped", f"{reason}{detail}")
        match why:
            case RateLimited():
                return await self.give_up(pos, step, "skipped", f"{RATE_BUDGET}: {why}")
            case PostOnlyRejected():
                return await self._reprice_once(pos, step, market, why)
            case DuplicateClientId():
                found = await self.exchange.fetch_order_by_client_id(
                    symbol=pos.symbol, client_id=step.client_id
                )
                if found is None:
                    why_pending = "exchange reports the client id in use but no order"
                    return Outcome(Result.PENDING, pos, why_pending)
                return await self.confirm(pos, step, found)
            case InsufficientFunds():
                return await self.give_up(pos, step, "skipped", f"insufficient balance: {why}")
            case CircuitOpen():
                return await self.give_up(pos, step, "failed", f"exchange unavailable: {why}")
            case TransientError():
                log.warning("TP %s outcome unknown, left pending: %s", step.client_id, why)
                return Outcome(Result.PENDING, pos, str(why))
            case _:
                return await self.give_up(pos, step, "failed", str(why))

    async def _reprice_once(
        self, pos: Position, step: Step, market: Market, why: PostOnlyRejected
    ) -> Outcome:
        """Post-only refused (the price crossed the book): once more at the best ask plus
        one tick, then `failed` with the reason."""
        quote = await self._quote_or_none(pos.symbol)
        if quote is None:
            return await self.give_up(pos, step, "failed", f"post-only rejected: {why}")
        price = round_up(quote.ask + market.tick, market.tick).quantize(market.tick)
        [result] = await self.placer.send(
            [SellRequest(symbol=pos.symbol, amount=step.qty, price=price, client_id=step.client_id)]
        )
        if isinstance(result, Order):
            crash_point("order_placed")
            return await self.confirm(pos, _replace(step, price=price), result)
        if isinstance(result, PostOnlyRejected):
            await self.placer.closed(pos.symbol)
            return await self.give_up(pos, step, "failed", f"post-only rejected twice: {result}")
        return await self.refused(pos, step, market, result)

    async def _alert_open_orders(self, pos: Position) -> None:
        await write_alert(
            self.book.redis,
            self.keys,
            self.clock.now_ms(),
            OPEN_ORDERS_LIMIT,
            f"{pos.symbol}: our open orders reached the pair's cap; new TPs are skipped and "
            "covered by the sweeper when room frees up",
            symbol=pos.symbol,
        )

    async def confirm(self, pos: Position, step: Step, order: Order) -> Outcome:
        """Record the exchange's acknowledgement of a step, with its TP record and events."""
        for _ in range(MAX_CAS_TRIES):
            done = self._acknowledged(pos, step, order)
            if done is None:
                return Outcome(Result.NOTHING, pos)  # someone confirmed it first
            changed = pos.with_step(done)
            result = await self.book.commit(
                pos.session_id, [changed], ops=self.records.created(changed, done, order)
            )
            if isinstance(result, Committed):
                await self._confirmed(changed, done, order)
                return Outcome(Result.CREATED, changed)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "could not record the TP (CAS retries exhausted)")

    async def confirm_many(self, placed: Sequence[tuple[Position, Step, Order]]) -> list[Outcome]:
        """`confirm` for many steps (at most one per position) in one round trip; a step
        whose position moved meanwhile is confirmed on its own."""
        groups: dict[str, list[Group]] = {}
        planned: list[tuple[Position, Step, Order, Step | None]] = []
        for pos, step, order in placed:
            done = self._acknowledged(pos, step, order)
            planned.append((pos, step, order, done))
            if done is not None:
                changed = pos.with_step(done)
                write = self.book.write(changed)
                ops = self.records.created(changed, done, order)
                groups.setdefault(pos.session_id, []).append(Group((), [write], ops))
        statuses = {sid: iter(s) for sid, s in (await self.book.commit_many(groups)).items()}
        outcomes: list[Outcome] = []
        for pos, step, order, done in planned:
            if done is None:
                outcomes.append(Outcome(Result.NOTHING, pos))
            elif next(statuses[pos.session_id]) == "ok":
                changed = pos.with_step(done)
                self.book.remember(changed)
                await self._confirmed(changed, done, order)
                outcomes.append(Outcome(Result.CREATED, changed))
            else:
                outcomes.append(await self.confirm(pos, step, order))
        return outcomes

    def _acknowledged(self, pos: Position, step: Step, order: Order) -> Step | None:
        """The step as the exchange's answer makes it; None if it is no longer pending."""
        current = pos.step(step.n)
        if current.status != StepStatus.PENDING or current.client_id != step.client_id:
            return None
        status = StepStatus.FILLED if order.status == OrderStatus.CLOSED else StepStatus.LIVE
        if order.status == OrderStatus.CANCELED:
            status = StepStatus.CANCELLED
        if status == StepStatus.LIVE and current.filled >= order.amount:
            status = StepStatus.FILLED  # its fills arrived before its confirmation
        return _replace(
            current,  # not `step`: fills recorded meanwhile are kept
            status=status,
            order_id=order.id,
            price=order.price,
            qty=order.amount,
            acked_at=self.clock.now_ms(),
            cancelled=order.remaining if status == StepStatus.CANCELLED else Decimal(0),
        )

    async def _confirmed(self, pos: Position, done: Step, order: Order) -> None:
        log.debug(
            "TP %s placed", order.id, extra={"session_id": pos.session_id, "position_id": pos.id}
        )
        _CREATED.inc()
        if done.status != StepStatus.LIVE:
            await self.placer.closed(pos.symbol)

    async def give_up(self, pos: Position, step: Step, kind: Refusal, reason: str) -> Outcome:
        """The exchange placed nothing for this step: record why; the step covers nothing."""
        reason = reason[:MAX_REASON]
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.PENDING or current.client_id != step.client_id:
                return Outcome(Result.NOTHING, pos)
            changed = pos.with_step(_replace(current, status=StepStatus.FAILED, reason=reason))
            ops = self.records.refused(kind, changed, step, reason)
            result = await self.book.commit(pos.session_id, [changed], ops=ops)
            if isinstance(result, Committed):
                log.info(
                    "TP %s %s: %s",
                    step.client_id,
                    kind,
                    reason,
                    extra={"session_id": pos.session_id, "position_id": pos.id},
                )
                TAKEPROFITS.labels(kind).inc()
                result_kind = Result.SKIPPED if kind == "skipped" else Result.FAILED
                return Outcome(result_kind, changed, reason)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "could not record the failure (CAS retries exhausted)")

    async def _quote_or_none(self, symbol: str) -> Quote | None:
        try:
            return await self.exchange.quote(symbol)
        except (TransientError, PermanentError):
            return None


def _replace(step: Step, **changes: object) -> Step:
    return msgspec.structs.replace(step, **changes)
