"""The take-profit engine: cover a position's uncovered quantity with one post-only sell.

Shared by the coverage worker (on each fill), the sweeper (safety net, repricing) and
the loss limit's emergency exit. The duplicate guard is layered:
1. a step is *claimed* (status pending, deterministic client id) by a compare-and-set
   on the position before the exchange is called — two callers cannot claim one step;
2. a pending step found later (crash, timeout, redelivery) is first looked up on the
   exchange by its client id; only if the exchange has no such order is it re-sent,
   with the same client id, which the exchange refuses while the first is open;
3. `tp_attempt:{sid}:<position>` (1 h TTL) marks the attempt for dashboards and tools.

The public steps — `claim`, `place`, `confirm`, `give_up` — are the only way a step
changes; `cover` and `resolve_pending` compose them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from base import logs
from base.clock import Clock
from base.faults import crash_point
from base.metrics import TAKEPROFITS
from base.settings import Settings
from storage.keys import Keys
from storage.ops import Op
from trading.book import CommitResult, Committed, Conflict, PositionBook
from trading.client_ids import client_id
from trading.exchange import (
    CircuitOpen,
    DuplicateClientId,
    Exchange,
    InsufficientFunds,
    Market,
    Order,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    Quote,
    TransientError,
)
from trading.positions import Position, Step, StepStatus
from trading.pricing import Tiers, quote_take_profit, round_up
from trading.tp_records import Refusal, TpRecords

log = logs.get("mmops.takeprofit")

MAX_CAS_TRIES = 16
MAX_REASON = 300


class Result(enum.StrEnum):
    CREATED = "created"
    NOTHING = "nothing"  # fully covered already
    DUST = "dust"
    SKIPPED = "skipped"
    FAILED = "failed"
    PENDING = "pending"  # outcome unknown (exchange unreachable): the sweeper settles it
    BUSY = "busy"  # another caller claimed this step moments ago: look again shortly
    CANCELLED = "cancelled"
    FILLED = "filled"


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    position: Position | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """What covering a position takes: the position to commit, its claimed step, side effects."""

    position: Position
    step: Step | None
    ops: list[Op]
    outcome: Outcome | None  # the result when no order is to be placed


def tiers_from(settings: Settings) -> Tiers:
    return Tiers(hours=settings.tier_hours, targets=settings.tier_targets)


class TakeProfitEngine:
    def __init__(
        self,
        *,
        book: PositionBook,
        exchange: Exchange,
        keys: Keys,
        settings: Settings,
        clock: Clock,
        pending_settle_ms: int | None = None,
    ) -> None:
        self.book = book
        self.exchange = exchange
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.records = TpRecords(keys, clock)
        self.tiers = tiers_from(settings)
        fee = settings.tp_maker_fee_percent
        self.maker_fee = None if fee is None else fee / 100
        self.pending_settle_ms = (
            settings.tp_pending_settle_ms if pending_settle_ms is None else pending_settle_ms
        )

    # --- covering ----------------------------------------------------------------
    def plan(
        self, pos: Position, market: Market, *, trigger_ms: int = 0, replaces: str = ""
    ) -> Plan:
        """Decide, without I/O, what covering `pos` takes: a claimed step, a dust mark, or nothing.

        The returned position (with its ops) is what to commit; a claimed step is then
        placed with `execute`. Pure, so the coverage worker can commit a fill and the
        claim of its TP in one compare-and-set.
        """
        if pos.pending is not None:
            return Plan(pos, None, [], Outcome(Result.BUSY, pos, "a step is pending"))
        uncovered = pos.uncovered
        if uncovered <= 0:
            return Plan(pos, None, [], Outcome(Result.NOTHING, pos))
        quote = quote_take_profit(
            buys=[(b.price, b.qty, b.fee) for b in pos.buys],
            uncovered=uncovered,
            age_ms=self.clock.now_ms() - pos.opened_at,
            market=market,
            tiers=self.tiers,
            maker_fee=self.maker_fee,
        )
        if quote.dust:
            if pos.dust == uncovered:
                return Plan(pos, None, [], Outcome(Result.DUST, pos))
            changed = pos.bump(dust=uncovered)
            reason = (
                f"dust: {uncovered} below the minimum order "
                f"({market.min_amount} {market.base}, {market.min_cost} {market.quote})"
            )
            dust_ops = self.records.dust(
                changed, qty=uncovered, price=quote.price, tier=quote.tier, reason=reason
            )
            return Plan(changed, None, dust_ops, Outcome(Result.DUST, changed, reason))
        if self.settings.dry_run:
            dry_ops = self.records.dry_run(
                pos, qty=quote.amount, price=quote.price, tier=quote.tier
            )
            return Plan(pos, None, dry_ops, Outcome(Result.SKIPPED, pos, "dry_run"))
        step = self.new_step(
            pos,
            qty=quote.amount,
            price=quote.price,
            tier=quote.tier,
            trigger_ms=trigger_ms,
            replaces=replaces,
        )
        return Plan(pos.with_step(step), step, self.records.attempt(pos, step), None)

    def new_step(
        self,
        pos: Position,
        *,
        qty: Decimal,
        price: Decimal,
        tier: int,
        trigger_ms: int = 0,
        replaces: str = "",
        reason: str = "",
    ) -> Step:
        """The position's next step, pending. A refused last step's number (and client id)
        is reused: the exchange holds no order for it."""
        last = pos.steps[-1] if pos.steps else None
        n = last.n if last is not None and last.status == StepStatus.FAILED else pos.next_step
        return Step(
            n=n,
            client_id=client_id(pos.session_id, pos.id, n),
            qty=qty,
            price=price,
            tier=tier,
            status=StepStatus.PENDING,
            claimed_at=self.clock.now_ms(),
            trigger_ms=trigger_ms,
            replaces=replaces,
            reason=reason,
        )

    async def claim(self, pos: Position, step: Step) -> CommitResult:
        """Record `step` as pending on `pos` (CAS): whoever commits it owns its placement."""
        return await self.book.commit(
            pos.session_id, [pos.with_step(step)], ops=self.records.attempt(pos, step)
        )

    async def cover(
        self,
        sid: str,
        pid: str,
        *,
        position: Position | None = None,
        trigger_ms: int = 0,
        replaces: str = "",
    ) -> Outcome:
        """Place or top up the TP for the position's uncovered quantity (at most one step).
        CREATED when this call recorded an order: its own, or a pending one it adopted."""
        settled = Result.NOTHING  # CREATED once a pending step was confirmed by this call
        for _ in range(MAX_CAS_TRIES):
            pos = (
                position if position is not None else await self.book.position(sid, pid, fresh=True)
            )
            position = None
            if pos is None:
                return Outcome(settled)
            if pos.pending is not None:
                resolved = await self.resolve_pending(pos)
                if resolved.result not in (Result.NOTHING, Result.CREATED):
                    return resolved
                if resolved.result is Result.CREATED:
                    settled = Result.CREATED
                position = resolved.position
                continue
            if pos.uncovered <= 0:
                return Outcome(settled, pos)
            market = await self.exchange.market(pos.symbol)
            plan = self.plan(pos, market, trigger_ms=trigger_ms, replaces=replaces)
            if plan.position is pos and not plan.ops:
                assert plan.outcome is not None
                return plan.outcome
            writes = [] if plan.position is pos else [plan.position]
            result = await self.book.commit(sid, writes, ops=plan.ops)
            if isinstance(result, Conflict):
                position = result.current
                continue
            return await self.execute(plan, market)
        return Outcome(Result.PENDING, None, "position kept changing (CAS retries exhausted)")

    async def execute(self, plan: Plan, market: Market) -> Outcome:
        """After a plan was committed: place its claimed step, or report its outcome."""
        if plan.step is None:
            assert plan.outcome is not None
            if plan.ops:  # a dust or dry-run record was written with the plan
                TAKEPROFITS.labels("skipped").inc()
            return plan.outcome
        crash_point("step_claimed")
        return await self.place(plan.position, plan.step, market)

    async def place(self, pos: Position, step: Step, market: Market) -> Outcome:
        """Send a claimed step to the exchange and record what came of it."""
        if self.settings.dry_run:  # DRY_RUN holds on every path, re-sends included
            return await self.give_up(pos, step, "skipped", "dry_run")
        price = step.price
        for attempt in (1, 2):
            try:
                order = await self.exchange.place_limit_sell(
                    symbol=pos.symbol, amount=step.qty, price=price, client_id=step.client_id
                )
                crash_point("order_placed")
                if price != step.price:
                    step = _replace(step, price=price)
                return await self.confirm(pos, step, order)
            except PostOnlyRejected as exc:
                if attempt == 2:
                    return await self.give_up(
                        pos, step, "failed", f"post-only rejected twice: {exc}"
                    )
                quote = await self._quote_or_none(pos.symbol)
                if quote is None:
                    return await self.give_up(pos, step, "failed", f"post-only rejected: {exc}")
                price = max(quote.ask, round_up(quote.bid + market.tick, market.tick))
            except DuplicateClientId:
                found = await self.exchange.fetch_order_by_client_id(
                    symbol=pos.symbol, client_id=step.client_id
                )
                if found is None:
                    why = "exchange reports the client id in use but no order"
                    return Outcome(Result.PENDING, pos, why)
                return await self.confirm(pos, step, found)
            except InsufficientFunds as exc:
                return await self.give_up(pos, step, "skipped", f"insufficient balance: {exc}")
            except CircuitOpen as exc:
                return await self.give_up(pos, step, "failed", f"exchange unavailable: {exc}")
            except PermanentError as exc:
                return await self.give_up(pos, step, "failed", str(exc))
            except TransientError as exc:
                log.warning("TP %s outcome unknown, left pending: %s", step.client_id, exc)
                return Outcome(Result.PENDING, pos, str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _quote_or_none(self, symbol: str) -> Quote | None:
        try:
            return await self.exchange.quote(symbol)
        except (TransientError, PermanentError):
            return None

    async def resolve_pending(self, pos: Position) -> Outcome:
        """Settle a pending step: adopt the exchange's order, or re-send it if there is none.

        Returns CREATED (this call recorded the order) or NOTHING (someone else did) with the
        updated position when the caller may go on covering.
        """
        step = pos.pending
        assert step is not None
        try:
            order = await self.exchange.fetch_order_by_client_id(
                symbol=pos.symbol, client_id=step.client_id
            )
        except TransientError as exc:
            return Outcome(Result.PENDING, pos, f"exchange unreachable: {exc}")
        if order is not None:
            return await self.confirm(pos, step, order)
        if self.clock.now_ms() - step.claimed_at < self.pending_settle_ms:
            return Outcome(Result.BUSY, pos, "another caller is placing this step")
        market = await self.exchange.market(pos.symbol)
        return await self.place(pos, step, market)

    async def confirm(self, pos: Position, step: Step, order: Order) -> Outcome:
        """Record the exchange's acknowledgement of a step, with its TP record and events."""
        now = self.clock.now_ms()
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.PENDING or current.client_id != step.client_id:
                return Outcome(Result.NOTHING, pos)  # someone confirmed it first
            status = StepStatus.FILLED if order.status == OrderStatus.CLOSED else StepStatus.LIVE
            if order.status == OrderStatus.CANCELED:
                status = StepStatus.CANCELLED
            if status == StepStatus.LIVE and current.filled >= order.amount:
                status = StepStatus.FILLED  # its fills arrived before its confirmation
            done = _replace(
                current,  # not `step`: fills recorded meanwhile are kept
                status=status,
                order_id=order.id,
                price=order.price,
                qty=order.amount,
                acked_at=now,
                cancelled=order.remaining if status == StepStatus.CANCELLED else Decimal(0),
            )
            changed = pos.with_step(done)
            result = await self.book.commit(
                pos.session_id, [changed], ops=self.records.created(changed, done, order)
            )
            if isinstance(result, Committed):
                log.debug(
                    "TP %s placed",
                    order.id,
                    extra={"session_id": pos.session_id, "position_id": pos.id},
                )
                TAKEPROFITS.labels("created").inc()
                return Outcome(Result.CREATED, changed)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "could not record the TP (CAS retries exhausted)")

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

    # --- repricing -----------------------------------------------------------------
    def stale_steps(self, pos: Position) -> list[Step]:
        """Live TPs priced for a younger tier than the position's age now calls for."""
        tier = self.tiers.tier(self.clock.now_ms() - pos.opened_at)
        return [s for s in pos.live if s.tier < tier]

    async def cancel_step(self, pos: Position, step: Step, *, reason: str = "") -> Outcome:
        """Cancel a live TP; a TP the exchange reports filled is recorded as filled instead."""
        if self.settings.dry_run:
            return Outcome(Result.NOTHING, pos, "dry_run: not cancelled")
        order = await self.exchange.cancel_order(symbol=pos.symbol, order_id=step.order_id)
        return await self.record_order_state(pos, step, order, reason=reason)

    async def record_order_state(
        self, pos: Position, step: Step, order: Order, *, reason: str = ""
    ) -> Outcome:
        """Bring a live step in line with the exchange's final state of its order."""
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.LIVE or current.order_id != step.order_id:
                return Outcome(Result.NOTHING, pos)
            cancelled: Decimal | None
            if order.status == OrderStatus.CLOSED:
                done = _replace(current, status=StepStatus.FILLED)
                cancelled = None
            elif order.status in (OrderStatus.CANCELED, OrderStatus.REJECTED):
                cancelled = order.remaining
                done = _replace(current, status=StepStatus.CANCELLED, cancelled=cancelled)
            else:
                return Outcome(Result.NOTHING, pos)
            changed = pos.with_step(done)
            ops = self.records.final_state(
                changed, done, cancelled=cancelled, reason=reason or "repriced or reconciled"
            )
            result = await self.book.commit(pos.session_id, [changed], ops=ops)
            if isinstance(result, Committed):
                if cancelled is not None:
                    TAKEPROFITS.labels("cancelled").inc()
                    return Outcome(Result.CANCELLED, changed)
                return Outcome(Result.FILLED, changed)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "CAS retries exhausted")

    async def trim(self, pos: Position) -> list[Outcome]:
        """A FIFO sell closed quantity a TP still offers: cancel the TPs that offer more than
        is held, then cover what is still held (docs/contract.md §3 Closing)."""
        outcomes: list[Outcome] = []
        for step in sorted(pos.live, key=lambda s: s.n, reverse=True):
            if pos.over_covered <= 0:
                break
            outcome = await self.cancel_step(pos, step, reason="closed by another sell")
            outcomes.append(outcome)
            if outcome.result is Result.NOTHING and outcome.position is pos:
                return outcomes  # dry run, or the step changed meanwhile: nothing more now
            pos = outcome.position or pos
        if pos.uncovered > 0 and not self.settings.dry_run:
            outcomes.append(await self.cover(pos.session_id, pos.id, position=pos))
        return outcomes

    async def reprice(self, pos: Position) -> list[Outcome]:
        """Cancel stale-tier TPs and cover their quantity again at the current tier's price."""
        outcomes: list[Outcome] = []
        replaced = ""
        for step in self.stale_steps(pos):
            outcome = await self.cancel_step(pos, step)
            outcomes.append(outcome)
            if outcome.position is not None:
                pos = outcome.position
            if outcome.result is Result.CANCELLED:
                replaced = step.order_id
        if replaced:
            outcomes.append(
                await self.cover(pos.session_id, pos.id, position=pos, replaces=replaced)
            )
        return outcomes


def _replace(step: Step, **changes: object) -> Step:
    return msgspec.structs.replace(step, **changes)
