"""The take-profit engine: cover a position's uncovered quantity with one post-only sell.

Shared by the coverage worker (on each fill) and the sweeper (safety net, repricing).
The duplicate guard is layered:
1. a step is *claimed* (status pending, deterministic client id) by a compare-and-set
   on the position before the exchange is called — two callers cannot claim one step;
2. a pending step found later (crash, timeout, redelivery) is first looked up on the
   exchange by its client id; only if the exchange has no such order is it re-sent,
   with the same client id, which the exchange refuses while the first is open;
3. `tp_attempt:{sid}:<position>` (1 h TTL) marks the attempt for dashboards and tools.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from base import logs
from base.clock import Clock, iso
from base.faults import crash_point
from base.metrics import TAKEPROFITS
from base.settings import Settings
from storage.keys import Keys
from storage.ledger import Committed, Conflict, Ledger, Op
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
    TransientError,
)
from trading.positions import Position, Step, StepStatus
from trading.pricing import Tiers, quote_take_profit, round_up

log = logs.get("mmops.takeprofit")

ATTEMPT_TTL_S = 3600
MAX_CAS_TRIES = 16


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


def value_e8(value: Decimal) -> int:
    """A quote amount in integer 1e-8 units (explicit rounding) for Redis counters."""
    return int((value * 100_000_000).to_integral_value(rounding=ROUND_HALF_EVEN))


class TakeProfitEngine:
    def __init__(
        self,
        *,
        ledger: Ledger,
        exchange: Exchange,
        keys: Keys,
        settings: Settings,
        clock: Clock,
        pending_settle_ms: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.exchange = exchange
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.tiers = tiers_from(settings)
        self.maker_fee = (
            None if settings.tp_maker_fee_percent is None else settings.tp_maker_fee_percent / 100
        )
        self.pending_settle_ms = (
            settings.tp_pending_settle_ms if pending_settle_ms is None else pending_settle_ms
        )

    # --- covering ----------------------------------------------------------------
    def plan(
        self, pos: Position, market: Market, *, trigger_ms: int = 0, replaces: str = ""
    ) -> Plan:
        """Decide, without I/O, what covering `pos` takes: a claimed step, a dust mark, or nothing.

        The returned position (with its ops) is what to commit; a claimed step is then
        placed with `place`. Pure, so the coverage worker can commit a fill and the claim
        of its TP in one compare-and-set.
        """
        sid = pos.session_id
        if pos.pending is not None:
            return Plan(pos, None, [], Outcome(Result.BUSY, pos, "a step is pending"))
        uncovered = pos.uncovered
        if uncovered <= 0:
            return Plan(pos, None, [], Outcome(Result.NOTHING, pos))
        now = self.clock.now_ms()
        quote = quote_take_profit(
            buys=[(b.price, b.qty, b.fee) for b in pos.buys],
            uncovered=uncovered,
            age_ms=now - pos.opened_at,
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
            return Plan(
                changed,
                None,
                [
                    self._tp_event(
                        "skipped",
                        changed,
                        order_id="",
                        client="",
                        qty=uncovered,
                        price=quote.price,
                        tier=quote.tier,
                        reason=reason,
                    ),
                    ("HINCRBY", self.keys.metrics_takeprofit(sid), "skipped", 1),
                ],
                Outcome(Result.DUST, changed, reason),
            )
        if self.settings.dry_run:
            return Plan(
                pos,
                None,
                [
                    self._tp_event(
                        "skipped",
                        pos,
                        order_id="",
                        client="",
                        qty=quote.amount,
                        price=quote.price,
                        tier=quote.tier,
                        reason="dry_run",
                    ),
                ],
                Outcome(Result.SKIPPED, pos, "dry_run"),
            )
        last = pos.steps[-1] if pos.steps else None
        n = last.n if last is not None and last.status == StepStatus.FAILED else pos.next_step
        step = Step(
            n=n,
            client_id=client_id(sid, pos.id, n),
            qty=quote.amount,
            price=quote.price,
            tier=quote.tier,
            status=StepStatus.PENDING,
            claimed_at=now,
            trigger_ms=trigger_ms,
            replaces=replaces,
        )
        claimed = pos.with_step(step)
        return Plan(
            claimed,
            step,
            [("SET", self.keys.tp_attempt(sid, pos.id), step.client_id, "EX", ATTEMPT_TTL_S)],
            None,
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
        """Place or top up the TP for the position's uncovered quantity (at most one step)."""
        for _ in range(MAX_CAS_TRIES):
            pos = (
                position
                if position is not None
                else await self.ledger.position(sid, pid, fresh=True)
            )
            position = None
            if pos is None:
                return Outcome(Result.NOTHING)
            if pos.pending is not None:
                resolved = await self.resolve_pending(pos)
                if resolved.result is not Result.NOTHING:
                    return resolved
                position = resolved.position
                continue
            if pos.uncovered <= 0:
                return Outcome(Result.NOTHING, pos)
            market = await self.exchange.market(pos.symbol)
            plan = self.plan(pos, market, trigger_ms=trigger_ms, replaces=replaces)
            if plan.position is pos and not plan.ops:
                assert plan.outcome is not None
                return plan.outcome
            writes = [] if plan.position is pos else [plan.position]
            result = await self.ledger.commit(sid, writes, ops=plan.ops)
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
        return await self._place(plan.position, plan.step, market)

    async def _place(self, pos: Position, step: Step, market: Market) -> Outcome:
        price = step.price
        for attempt in (1, 2):
            try:
                order = await self.exchange.place_limit_sell(
                    symbol=pos.symbol, amount=step.qty, price=price, client_id=step.client_id
                )
                crash_point("order_placed")
                if price != step.price:
                    step = _replace(step, price=price)
                return await self._confirm(pos, step, order)
            except PostOnlyRejected as exc:
                if attempt == 2:
                    return await self._give_up(
                        pos, step, "failed", f"post-only rejected twice: {exc}"
                    )
                quote = await self._quote_or_none(pos.symbol)
                if quote is None:
                    return await self._give_up(pos, step, "failed", f"post-only rejected: {exc}")
                price = max(quote.ask, round_up(quote.bid + market.tick, market.tick))
            except DuplicateClientId:
                found = await self.exchange.fetch_order_by_client_id(
                    symbol=pos.symbol, client_id=step.client_id
                )
                if found is None:
                    return Outcome(
                        Result.PENDING, pos, "exchange reports the client id in use but no order"
                    )
                return await self._confirm(pos, step, found)
            except InsufficientFunds as exc:
                return await self._give_up(pos, step, "skipped", f"insufficient balance: {exc}")
            except CircuitOpen as exc:
                return await self._give_up(pos, step, "failed", f"exchange unavailable: {exc}")
            except PermanentError as exc:
                return await self._give_up(pos, step, "failed", str(exc))
            except TransientError as exc:
                log.warning("TP %s outcome unknown, left pending: %s", step.client_id, exc)
                return Outcome(Result.PENDING, pos, str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _quote_or_none(self, symbol: str):  # type: ignore[no-untyped-def]
        try:
            return await self.exchange.quote(symbol)
        except (TransientError, PermanentError):
            return None

    async def resolve_pending(self, pos: Position) -> Outcome:
        """Settle a pending step: adopt the exchange's order, or re-send it if there is none.

        Returns NOTHING with the updated position when the caller may go on covering.
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
            outcome = await self._confirm(pos, step, order)
            if outcome.result is Result.CREATED:
                return Outcome(Result.NOTHING, outcome.position)
            return outcome
        if self.clock.now_ms() - step.claimed_at < self.pending_settle_ms:
            return Outcome(Result.BUSY, pos, "another caller is placing this step")
        market = await self.exchange.market(pos.symbol)
        outcome = await self._place(pos, step, market)
        if outcome.result is Result.CREATED:
            return Outcome(Result.NOTHING, outcome.position)
        return outcome

    async def _confirm(self, pos: Position, step: Step, order: Order) -> Outcome:
        """Record the exchange's acknowledgement of a step, with its TP record and events."""
        sid = pos.session_id
        now = self.clock.now_ms()
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.PENDING or current.client_id != step.client_id:
                return Outcome(Result.NOTHING, pos)  # someone confirmed it first
            status = StepStatus.FILLED if order.status == OrderStatus.CLOSED else StepStatus.LIVE
            if order.status == OrderStatus.CANCELED:
                status = StepStatus.CANCELLED
            done = _replace(
                step,
                status=status,
                order_id=order.id,
                price=order.price,
                qty=order.amount,
                acked_at=now,
                cancelled=order.amount - order.filled
                if status == StepStatus.CANCELLED
                else Decimal(0),
            )
            changed = pos.with_step(done)
            latency = str(now - step.trigger_ms) if step.trigger_ms else ""
            ops: list[Op] = [
                (
                    "HSET",
                    self.keys.tp_order(sid, order.id),
                    "session_id",
                    sid,
                    "position",
                    pos.id,
                    "symbol",
                    pos.symbol,
                    "price",
                    str(order.price),
                    "quantity",
                    str(order.amount),
                    "tier",
                    done.tier,
                    "client_id",
                    done.client_id,
                    "created_at",
                    iso(now),
                    "status",
                    status,
                    "step",
                    done.n,
                    "replaces",
                    done.replaces,
                ),
                ("SADD", self.keys.tp_orders(sid), order.id),
                self._tp_event(
                    "created",
                    changed,
                    order_id=order.id,
                    client=done.client_id,
                    qty=order.amount,
                    price=order.price,
                    tier=done.tier,
                    reason="",
                    latency=latency,
                    replaces=done.replaces,
                ),
                ("HINCRBY", self.keys.metrics_takeprofit(sid), "created", 1),
                (
                    "DECIMAL_INCRBY",
                    self.keys.metrics_takeprofit(sid),
                    "total_value",
                    value_e8(order.amount * order.price),
                ),
            ]
            result = await self.ledger.commit(sid, [changed], ops=ops)
            if isinstance(result, Committed):
                log.debug(
                    "TP %s placed", order.id, extra={"session_id": sid, "position_id": pos.id}
                )
                TAKEPROFITS.labels("created").inc()
                return Outcome(Result.CREATED, changed)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "could not record the TP (CAS retries exhausted)")

    async def _give_up(self, pos: Position, step: Step, kind: str, reason: str) -> Outcome:
        """The exchange placed nothing for this step: record why; the step covers nothing."""
        sid = pos.session_id
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.PENDING or current.client_id != step.client_id:
                return Outcome(Result.NOTHING, pos)
            changed = pos.with_step(
                _replace(current, status=StepStatus.FAILED, reason=reason[:300])
            )
            result = await self.ledger.commit(
                sid,
                [changed],
                ops=[
                    self._tp_event(
                        kind,
                        changed,
                        order_id="",
                        client=step.client_id,
                        qty=step.qty,
                        price=step.price,
                        tier=step.tier,
                        reason=reason[:300],
                    ),
                    (
                        "HINCRBY",
                        self.keys.metrics_takeprofit(sid),
                        "failed" if kind == "failed" else "skipped",
                        1,
                    ),
                ],
            )
            if isinstance(result, Committed):
                log.info(
                    "TP %s %s: %s",
                    step.client_id,
                    kind,
                    reason,
                    extra={"session_id": sid, "position_id": pos.id},
                )
                TAKEPROFITS.labels(kind).inc()
                return Outcome(
                    Result.SKIPPED if kind == "skipped" else Result.FAILED, changed, reason
                )
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

    async def cancel_step(self, pos: Position, step: Step) -> Outcome:
        """Cancel a live TP; a TP the exchange reports filled is recorded as filled instead."""
        order = await self.exchange.cancel_order(symbol=pos.symbol, order_id=step.order_id)
        return await self.record_order_state(pos, step, order)

    async def record_order_state(self, pos: Position, step: Step, order: Order) -> Outcome:
        """Bring a live step in line with the exchange's final state of its order."""
        sid = pos.session_id
        for _ in range(MAX_CAS_TRIES):
            current = pos.step(step.n)
            if current.status != StepStatus.LIVE or current.order_id != step.order_id:
                return Outcome(Result.NOTHING, pos)
            if order.status == OrderStatus.CLOSED:
                done = _replace(current, status=StepStatus.FILLED)
                kind, qty = "", Decimal(0)
            elif order.status in (OrderStatus.CANCELED, OrderStatus.REJECTED):
                qty = order.amount - order.filled
                done = _replace(current, status=StepStatus.CANCELLED, cancelled=qty)
                kind = "cancelled"
            else:
                return Outcome(Result.NOTHING, pos)
            changed = pos.with_step(done)
            ops: list[Op] = [
                ("HSET", self.keys.tp_order(sid, step.order_id), "status", done.status)
            ]
            if kind:
                ops.append(
                    self._tp_event(
                        kind,
                        changed,
                        order_id=step.order_id,
                        client=step.client_id,
                        qty=qty,
                        price=step.price,
                        tier=step.tier,
                        reason="repriced or reconciled",
                    )
                )
            result = await self.ledger.commit(sid, [changed], ops=ops)
            if isinstance(result, Committed):
                if kind:
                    TAKEPROFITS.labels(kind).inc()
                return Outcome(Result.CANCELLED if kind else Result.FILLED, changed)
            assert isinstance(result, Conflict)
            if result.current is None:
                return Outcome(Result.NOTHING)
            pos = result.current
        return Outcome(Result.PENDING, pos, "CAS retries exhausted")

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

    # --- stream records ------------------------------------------------------------
    def _fields(
        self,
        kind: str,
        pos: Position,
        *,
        order_id: str,
        client: str,
        qty: Decimal,
        price: Decimal,
        tier: int,
        reason: str,
        latency: str = "",
        replaces: str = "",
    ) -> dict[str, str]:
        fields = {
            "type": kind,
            "session_id": pos.session_id,
            "position_id": pos.id,
            "symbol": pos.symbol,
            "order_id": order_id,
            "client_order_id": client,
            "price": str(price),
            "quantity": str(qty),
            "tier": str(tier),
            "reason": reason,
            "latency_ms": latency,
            "ts": str(self.clock.now_ms()),
        }
        if replaces:
            fields["replaces"] = replaces
        return fields

    def _tp_event(self, kind: str, pos: Position, **kw: object) -> Op:
        fields = self._fields(kind, pos, **kw)  # type: ignore[arg-type]
        op: list[str | int] = ["XADD", self.keys.takeprofits, "*"]
        for key, value in fields.items():
            op += [key, value]
        return op


def _replace(step: Step, **changes: object) -> Step:
    import msgspec

    return msgspec.structs.replace(step, **changes)
