"""Sell fills (docs/contract.md §3 Closing): a TP's fill closes its position; any other sell
closes the pair's oldest open positions first (FIFO).

- A TP fill is recognised by its `order_id` (the `tp_order` record, written when the
  placement is confirmed) or by its `client_order_id` (recorded when the step is claimed,
  so also before the confirmation). A sell on an unknown order while a TP of that pair is
  being placed waits for the placement to settle: it may be that TP's fill.
- A FIFO sell sees every buy of its pair that precedes it in the stream, whichever
  consumer handles them: it waits until the group has no earlier fill of that pair
  pending (a readiness barrier), and counts only buys that precede it.
- A position closed by a FIFO sell keeps no TP for the closed quantity: TPs offering
  more than is held are cancelled and what is still held is covered again.
"""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec

from base import logs
from base.money import MONEY
from events import Fill
from storage import ops
from storage.keys import Keys
from storage.ops import Op
from storage.redis import as_text
from storage.streams import pending_before
from trading.book import Conflict, Duplicate, PositionBook
from trading.client_ids import is_ours
from trading.fees import held_and_fee
from trading.outcomes import Result
from trading.positions import Close, Position, Step, StepStatus, fifo_allocate
from trading.takeprofit import TakeProfitEngine
from workers.handler import Retry
from workers.parts import TradingParts
from workers.runtime import Entry, Runtime

log = logs.get("mmops.closing")

MAX_TRIES = 32
WAIT_MS = 100  # how soon a waiting sell is looked at again


class Closing:
    def __init__(self, parts: TradingParts) -> None:
        self.book: PositionBook = parts.book
        self.engine: TakeProfitEngine = parts.engine
        self.keys: Keys = parts.keys
        self.redis = parts.redis
        self.clock = parts.clock
        self.runtime: Runtime | None = None

    async def on_sell(self, entry: Entry, fill: Fill, fill_ops: list[Op]) -> None:
        sid = fill.session_id
        quantity, fee = held_and_fee(fill)
        close = Close(fill.fill_id, quantity, fill.price, fee, fill.ts)
        owner, inflight = await self._tp_owner(fill)
        if owner is None and await self._settle_placements(fill, inflight):
            owner, _ = await self._tp_owner(fill)  # a placement just settled: it may be this TP's
        if owner is None:
            await self._wait_for_earlier_fills(entry, fill)
        for _ in range(MAX_TRIES):
            writes: list[Position]
            changes = list(fill_ops)
            if owner is not None:
                pos = await self.book.position(sid, owner, fresh=True)
                changed = _with_tp_fill(pos, fill, close) if pos is not None else None
                writes = [changed] if changed is not None else []
                changes += self._tp_status_ops(sid, writes, fill)
            else:
                positions = await self.book.positions(sid)
                shares = fifo_allocate(positions.values(), fill.symbol, quantity, before=entry.id)
                writes = [
                    position.with_close(
                        Close(
                            fill.fill_id,
                            qty,
                            fill.price,
                            MONEY.divide(MONEY.multiply(fee, qty), quantity),
                            fill.ts,
                        )
                    )
                    for position, qty in shares
                ]
            result = await self.book.commit(sid, writes, fill=fill, ops=changes, entry=entry.id)
            if isinstance(result, Conflict):
                continue
            if isinstance(result, Duplicate):  # a redelivery: `writes` were never stored
                await self._after_duplicate(sid, fill, owner)
                return
            if owner is None:
                for pos in writes:
                    if pos.over_covered > 0:
                        await self.engine.trim(pos)
            elif writes and _filled_now(writes[0], fill):
                await self.engine.placer.closed(fill.symbol)  # no longer open: the cap
            return
        raise RuntimeError(f"positions of {sid} kept changing; will retry")

    async def _after_duplicate(self, sid: str, fill: Fill, owner: str | None) -> None:
        """The sell was applied before (this is a redelivery): finish what a crash after
        that commit may have left undone, from the stored positions, never from the ones
        this delivery computed (they were not stored: a trim of them would write their
        second close of the same sell). A FIFO sell's positions whose TPs offer more than
        they hold are trimmed; the sweeper does the same on its next pass."""
        if owner is not None:
            return
        for pos in (await self.book.positions(sid)).values():
            if pos.symbol == fill.symbol and pos.over_covered > 0:
                await self.engine.trim(pos)

    # --- which position a sell belongs to ------------------------------------------------
    async def _tp_owner(self, fill: Fill) -> tuple[str | None, dict[bytes, bytes]]:
        """The position whose TP this sell filled (None for any other sell), and the session's
        placements in flight.

        The placements are read first, in the same pipeline (one slot, so in this order on
        one server): a TP confirmed after that read is in flight there; one confirmed
        before it has its `tp_order` record by the time that is read. Either way a TP that
        this sell filled is seen: it was claimed before it could fill."""
        sid = fill.session_id
        ours = bool(fill.client_order_id and is_ours(fill.client_order_id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.tp_inflight(sid))
            pipe.hget(self.keys.tp_order(sid, fill.order_id), "position")
            if ours:
                pipe.hget(self.keys.tp_clients(sid), fill.client_order_id or "")
            inflight, *replies = await pipe.execute()
        if ours and replies[1] is None:
            log.warning(
                "sell %s carries our client id %s but no step of the session claimed it",
                fill.fill_id,
                fill.client_order_id,
                extra={"session_id": sid},
            )
        found = [as_text(r) for r in replies if r]
        return (found[0] if found else None), inflight

    async def _settle_placements(self, fill: Fill, inflight: dict[bytes, bytes]) -> bool:
        """A TP of this pair claimed and not yet confirmed may be what this sell filled:
        wait while it is being placed; past the pending window, settle it (adopting the
        order by client id), after which its `tp_order` record names it. Whether any
        placement of the pair was in flight."""
        sid = fill.session_id
        now = self.clock.now_ms()
        for raw in inflight.values():
            symbol, pid, claimed_at = as_text(raw).split("|")
            if symbol != fill.symbol:
                continue
            if now - int(claimed_at) < self.engine.pending_settle_ms:
                raise Retry(f"a take-profit of {symbol} is being placed", after_ms=WAIT_MS)
            pos = await self.book.position(sid, pid, fresh=True)
            if pos is not None and pos.pending is not None:
                outcome = await self.engine.resolve_pending(pos)
                if outcome.result in (Result.PENDING, Result.BUSY):
                    raise Retry(f"a take-profit of {symbol} is unsettled", after_ms=WAIT_MS * 5)
        return any(as_text(raw).startswith(fill.symbol + "|") for raw in inflight.values())

    async def _wait_for_earlier_fills(self, entry: Entry, fill: Fill) -> None:
        """The readiness barrier: no earlier fill of this pair still pending in the group."""
        runtime = self.runtime
        if runtime is None:
            return
        sid, symbol = fill.session_id.encode(), fill.symbol.encode()

        def same_pair(fields: dict[bytes, bytes] | None) -> bool:
            if fields is None:
                return True  # gone: cannot tell, so it is waited for (the reclaim settles it)
            return (
                fields.get(b"type") == b"fill"
                and fields.get(b"session_id") == sid
                and fields.get(b"symbol") == symbol
            )

        started = time.perf_counter()
        reason = await pending_before(
            self.redis, runtime.stream, runtime.group, entry.id, same_pair, skip=runtime.handled
        )
        log.debug("FIFO barrier of %s: %.1f ms", entry.id, (time.perf_counter() - started) * 1e3)
        if reason:
            raise Retry(f"FIFO sell waits for earlier fills of {fill.symbol}: {reason}", WAIT_MS)

    def _tp_status_ops(self, sid: str, writes: list[Position], fill: Fill) -> list[Op]:
        for pos in writes:
            step = _tp_step(pos, fill)
            if step is not None and step.order_id:
                status = "filled" if step.status == StepStatus.FILLED else "partially_filled"
                key = self.keys.tp_order(sid, step.order_id)
                return [ops.hset(key, {"status": status, "filled": str(step.filled)})]
        return []


def _tp_step(pos: Position, fill: Fill) -> Step | None:
    """The step whose order this sell filled: by order id, else by client id."""
    step = pos.step_for_order(fill.order_id)
    if step is None and fill.client_order_id:
        step = next((s for s in pos.steps if s.client_id == fill.client_order_id), None)
    return step


def _filled_now(pos: Position, fill: Fill) -> bool:
    step = _tp_step(pos, fill)
    return step is not None and step.status == StepStatus.FILLED


def _with_tp_fill(pos: Position, fill: Fill, close: Close) -> Position | None:
    step = _tp_step(pos, fill)
    if step is None:
        return None
    fills = (*step.fills, close)
    filled = sum((f.qty for f in fills), Decimal(0))
    status = step.status
    if step.status == StepStatus.LIVE and filled >= step.qty - step.cancelled:
        status = StepStatus.FILLED
    return pos.with_step(msgspec.structs.replace(step, fills=fills, status=status))
