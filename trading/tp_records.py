"""What a take-profit step leaves in Redis besides the position: the contract's records.

Each method returns the `storage.ops` that go into the same compare-and-set as the
step's change (storage/ledger.py): the `mm:takeprofits` entry (docs/contract.md
§2, "Streams written by mmops"), the `tp_order:{sid}:<order_id>` hash, the
`tp_attempt` marker and the `metrics:takeprofit:{sid}` counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from base.clock import Clock, iso
from base.money import MONEY
from storage import ops
from storage.keys import Keys
from storage.ops import Op
from trading.exchange import Order
from trading.positions import Position, Step, StepStatus

ATTEMPT_TTL_S = 3600

TpEventKind = Literal["created", "cancelled", "failed", "skipped"]
Refusal = Literal["failed", "skipped"]


@dataclass(frozen=True, slots=True)
class TpRecords:
    keys: Keys
    clock: Clock
    maxlen: int = 100_000  # TAKEPROFITS_MAXLEN: the stream is capped as it is written

    def event(
        self,
        kind: TpEventKind,
        pos: Position,
        *,
        order_id: str = "",
        client: str = "",
        qty: Decimal,
        price: Decimal,
        tier: int,
        reason: str = "",
        latency: str = "",
        replaces: str = "",
    ) -> Op:
        """One `mm:takeprofits` entry."""
        fields: dict[str, str | int] = {
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
        return ops.xadd(self.keys.takeprofits, fields, maxlen=self.maxlen)

    def attempt(self, pos: Position, step: Step) -> list[Op]:
        """A claimed step: the fast duplicate marker, and the indexes that let a TP fill find
        its position before the placement is confirmed (by client id; by pair in flight)."""
        sid = pos.session_id
        return [
            ops.set_value(self.keys.tp_attempt(sid, pos.id), step.client_id, ttl_s=ATTEMPT_TTL_S),
            ops.hset(self.keys.tp_clients(sid), {step.client_id: pos.id}),
            ops.hset(
                self.keys.tp_inflight(sid),
                {step.client_id: f"{pos.symbol}|{pos.id}|{step.claimed_at}"},
            ),
        ]

    def settled(self, pos: Position, step: Step) -> Op:
        """The step is no longer in flight (confirmed or refused)."""
        return ops.hdel(self.keys.tp_inflight(pos.session_id), step.client_id)

    def dust(
        self, pos: Position, *, qty: Decimal, price: Decimal, tier: int, reason: str
    ) -> list[Op]:
        return [
            self.event("skipped", pos, qty=qty, price=price, tier=tier, reason=reason),
            ops.hincrby(self.keys.metrics_takeprofit(pos.session_id), "skipped", 1),
        ]

    def dry_run(self, pos: Position, *, qty: Decimal, price: Decimal, tier: int) -> list[Op]:
        return [self.event("skipped", pos, qty=qty, price=price, tier=tier, reason="dry_run")]

    def created(self, pos: Position, step: Step, order: Order) -> list[Op]:
        """The exchange accepted `step` as `order` (step already carries the order's id). An
        order already cancelled when confirmed is `created` and then `cancelled`, so that
        live = Σ created − Σ cancelled holds."""
        sid = pos.session_id
        now = self.clock.now_ms()
        latency = str(now - step.trigger_ms) if step.trigger_ms else ""
        metrics = self.keys.metrics_takeprofit(sid)
        after: list[Op] = []
        if step.status == StepStatus.CANCELLED:
            after = self.final_state(
                pos, step, cancelled=step.cancelled, reason="cancelled before it was confirmed"
            )[1:]
        return [
            self.settled(pos, step),
            ops.hset(
                self.keys.tp_order(sid, order.id),
                {
                    "session_id": sid,
                    "position": pos.id,
                    "symbol": pos.symbol,
                    "price": str(order.price),
                    "quantity": str(order.amount),
                    "tier": step.tier,
                    "client_id": step.client_id,
                    "created_at": iso(now),
                    "status": step.status,
                    "step": step.n,
                    "replaces": step.replaces,
                },
            ),
            ops.sadd(self.keys.tp_orders(sid), order.id),
            self.event(
                "created",
                pos,
                order_id=order.id,
                client=step.client_id,
                qty=order.amount,
                price=order.price,
                tier=step.tier,
                latency=latency,
                replaces=step.replaces,
            ),
            ops.hincrby(metrics, "created", 1),
            ops.decimal_incrby(metrics, "total_value", MONEY.multiply(order.amount, order.price)),
            *after,
        ]

    def refused(self, kind: Refusal, pos: Position, step: Step, reason: str) -> list[Op]:
        """The exchange placed nothing for `step`."""
        return [
            self.settled(pos, step),
            self.event(
                kind,
                pos,
                client=step.client_id,
                qty=step.qty,
                price=step.price,
                tier=step.tier,
                reason=reason,
            ),
            ops.hincrby(self.keys.metrics_takeprofit(pos.session_id), kind, 1),
        ]

    def final_state(
        self,
        pos: Position,
        step: Step,
        *,
        cancelled: Decimal | None,
        reason: str = "repriced or reconciled",
    ) -> list[Op]:
        """A live TP reached a final state: its status, and `cancelled` with the quantity a
        cancel took off the book (None: it filled)."""
        out = [ops.hset(self.keys.tp_order(pos.session_id, step.order_id), {"status": step.status})]
        if cancelled is not None:
            out.append(
                self.event(
                    "cancelled",
                    pos,
                    order_id=step.order_id,
                    client=step.client_id,
                    qty=cancelled,
                    price=step.price,
                    tier=step.tier,
                    reason=reason,
                )
            )
        return out
