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

from collections.abc import Sequence
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
    Exchange,
    Market,
    Order,
    OrderStatus,
    TransientError,
)
from trading.factory import check_pending_settle
from trading.outcomes import MAX_CAS_TRIES, Outcome, Result
from trading.placing import RATE_BUDGET, Placer
from trading.positions import Position, Step, StepStatus
from trading.pricing import Tiers, quote_take_profit
from trading.settling import StepSettler
from trading.tp_records import Refusal, TpRecords

log = logs.get("mmops.takeprofit")


class Plan(msgspec.Struct, frozen=True):  # 2 per fill: a struct is built in C
    """What covering a position takes: the position to commit, its claimed step, side effects."""

    position: Position
    step: Step | None
    ops: list[Op]
    outcome: Outcome | None  # the result when no order is to be placed


def tiers_from(settings: Settings) -> Tiers:
    return Tiers(hours=settings.tier_hours, targets=settings.tier_targets)


DEFAULT_SETTLE_MS = 5_000
SETTLE_MARGIN_MS = 1_000


def settle_window(settings: Settings, exchange: Exchange) -> int:
    """How long a claimed step is left to its claimer before anyone re-sends it: longer than
    one place call of the exchange adapter can last (issue 10 #11). TP_PENDING_SETTLE_MS,
    when set, must be at least that (SettingsError naming it otherwise)."""
    worst = int(getattr(exchange, "worst_call_ms", 0))
    if settings.tp_pending_settle_ms is None:
        return max(DEFAULT_SETTLE_MS, worst + SETTLE_MARGIN_MS)
    check_pending_settle(settings.tp_pending_settle_ms, worst)
    return settings.tp_pending_settle_ms


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
        placer: Placer | None = None,
    ) -> None:
        self.book = book
        self.exchange = exchange
        self.placer = placer or Placer(exchange)
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.records = TpRecords(keys, clock, settings.takeprofits_maxlen)
        self.settler = StepSettler(
            book=book,
            exchange=exchange,
            placer=self.placer,
            records=self.records,
            keys=keys,
            settings=settings,
            clock=clock,
        )
        self.tiers = tiers_from(settings)
        fee = settings.tp_maker_fee_percent
        self.maker_fee = None if fee is None else fee / 100
        self.pending_settle_ms = (
            settle_window(settings, exchange) if pending_settle_ms is None else pending_settle_ms
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

    # --- the exchange's answers: trading/settling.py ------------------------------
    async def place(self, pos: Position, step: Step, market: Market) -> Outcome:
        """Send a claimed step to the exchange and record what came of it."""
        return await self.settler.place(pos, step, market)

    async def place_many(self, claims: Sequence[tuple[Position, Step, Market]]) -> list[Outcome]:
        return await self.settler.place_many(claims)

    async def confirm(self, pos: Position, step: Step, order: Order) -> Outcome:
        return await self.settler.confirm(pos, step, order)

    async def confirm_many(self, placed: Sequence[tuple[Position, Step, Order]]) -> list[Outcome]:
        return await self.settler.confirm_many(placed)

    async def give_up(self, pos: Position, step: Step, kind: Refusal, reason: str) -> Outcome:
        return await self.settler.give_up(pos, step, kind, reason)

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
        # Re-claim the step (CAS) before re-sending it: of the callers that found no order,
        # one re-sends. Without it a caller whose look-up predates another's re-send could
        # send the client id again after that order had filled, when the exchange no longer
        # refuses the id: two orders for one step (chaos run, docs/chaos.md finding 1).
        again = msgspec.structs.replace(step, claimed_at=self.clock.now_ms())
        result = await self.book.commit(pos.session_id, [pos.with_step(again)])
        if not isinstance(result, Committed):
            current = result.current if isinstance(result, Conflict) else pos
            return Outcome(Result.BUSY, current, "another caller is re-sending this step")
        pos = result.positions[0]
        market = await self.exchange.market(pos.symbol)
        return await self.place(pos, again, market)

    # --- repricing -----------------------------------------------------------------
    def stale_steps(self, pos: Position) -> list[Step]:
        """Live TPs priced for a younger tier than the position's age now calls for."""
        tier = self.tiers.tier(self.clock.now_ms() - pos.opened_at)
        return [s for s in pos.live if s.tier < tier]

    async def cancel_step(self, pos: Position, step: Step, *, reason: str = "") -> Outcome:
        """Cancel a live TP; a TP the exchange reports filled is recorded as filled instead."""
        if self.settings.dry_run:
            return Outcome(Result.NOTHING, pos, "dry_run: not cancelled")
        age_ms = self.clock.now_ms() - (step.acked_at or step.claimed_at)
        if not await self.placer.may_cancel(pos.symbol, age_ms):
            return Outcome(Result.NOTHING, pos, f"{RATE_BUDGET}: cancel waits for the counter")
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
                await self.placer.closed(pos.symbol)
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
