"""The coverage worker's handler: record every fill once, keep positions, cover buys at once.

Lanes (workers/lanes.py): one buy order's fills are handled in stream order while other
orders' run alongside; a sell on another order waits for the pair's earlier fills (FIFO
needs them); session events wait for the whole session. Everything a fill changes is one
compare-and-set (storage/ledger.py) guarded by its fill id, so duplicates and replays
change nothing. Sells are workers/closing.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from base import logs
from base.clock import Clock
from base.faults import crash_point
from events import Event, Fill, Order, SessionEnded, SessionStarted
from storage import ops
from storage.keys import Keys
from storage.ops import Op
from storage.orders import OrderBook
from storage.session_pairs import SessionPairs
from trading.book import Committed, Conflict, Duplicate, PositionBook
from trading.exchange import Exchange, ExchangeError, Market
from trading.fees import held_and_fee
from trading.outcomes import Outcome, Result
from trading.positions import Buy, Position, new_position
from trading.takeprofit import TakeProfitEngine
from workers.buy_batch import BuyBatch
from workers.closing import Closing
from workers.lanes import NOT_HANDLED
from workers.parts import TradingParts
from workers.runtime import Entry, Invalid, Lane, Retry, Runtime

log = logs.get("mmops.coverage")

GROUP = "coverage"
MAX_TRIES = 32
_order_encoder = msgspec.json.Encoder(decimal_format="string")


class CoverageHandler:
    group = GROUP

    def __init__(self, parts: TradingParts) -> None:
        self.book: PositionBook = parts.book
        self.engine: TakeProfitEngine = parts.engine
        self.exchange: Exchange = parts.exchange
        self.keys: Keys = parts.keys
        self.clock: Clock = parts.clock
        self.redis = parts.redis
        self.closing = Closing(parts)
        self.buys = BuyBatch(book=self.book, engine=self.engine, fill_ops=self._fill_ops)
        self.orders = OrderBook(parts.redis, parts.keys)
        self.pairs = SessionPairs(parts.redis, parts.keys, parts.settings.max_pairs)

    def lane(self, event: Event) -> Lane:
        """Buys of different orders run side by side; other sells wait for the pair's
        earlier buys (FIFO); session events wait for everything of their session."""
        if isinstance(event, Fill | Order):
            if not self.pairs.known(event.session_id, event.symbol):
                # a pair new to this process may be the one MAX_PAIRS refuses: such events
                # of a session are admitted in stream order, one after the other
                return (event.session_id,)
            if event.side == "sell" and isinstance(event, Fill):
                return (event.session_id, event.symbol)
            return (event.session_id, event.symbol, event.order_id)
        return (event.session_id,)

    async def handle(self, entry: Entry, event: Event) -> None:
        await self._admit_pairs(event)
        match event:
            case Fill(side="buy"):
                await self.on_buy(entry, event)
            case Fill():
                await self.on_sell(entry, event)
            case SessionStarted():
                sid = event.session_id
                await self._session_ops(
                    sid,
                    [
                        ops.hset(
                            self.keys.session(sid),
                            {"started_at": event.ts, "pairs": ",".join(event.pairs)},
                        ),
                        ops.sadd(self.keys.pairs(sid), *event.pairs),
                    ],
                )
            case Order():
                await self.orders.record(event)  # an older status never overwrites a newer
                await self._session_ops(event.session_id, [])  # its pair was admitted before
            case SessionEnded():
                sid = event.session_id
                fields: dict[str, str | int] = {"ended_at": event.ts, "end_id": entry.id}
                if event.fills is not None:
                    fields["fills_expected"] = event.fills
                if event.reason:
                    fields["end_reason"] = event.reason
                await self._session_ops(
                    sid,
                    [
                        ops.hset(self.keys.session(sid), fields),
                        ops.zadd(self.keys.sessions_ended, event.ts, sid, only_new=True),
                    ],
                )

    async def _admit_pairs(self, event: Event) -> None:
        """MAX_PAIRS holds for every session, whatever names its pairs: an event that would
        take its session past it is Invalid (dead-lettered), and admits nothing."""
        if isinstance(event, SessionEnded):
            return
        symbols = event.pairs if isinstance(event, SessionStarted) else (event.symbol,)
        refused = await self.pairs.admit(event.session_id, symbols)
        if refused is not None:
            field = "pairs" if isinstance(event, SessionStarted) else "symbol"
            raise Invalid(
                field,
                f"{', '.join(refused.new[:3])}{' ...' if len(refused.new) > 3 else ''} would give "
                f"session {event.session_id} {refused.total} distinct pairs, more than "
                f"MAX_PAIRS={self.pairs.max_pairs}",
            )

    async def _session_ops(self, sid: str, changes: list[Op]) -> None:
        """A session event's writes, with the activity index: one atomic commit (its global
        writes through the session's outbox on a Redis Cluster)."""
        index = ops.zadd(self.keys.sessions, self.clock.now_ms(), sid)
        await self.book.ledger.commit(sid, [], ops=[*changes, index])

    def _fill_ops(self, fill: Fill) -> list[Op]:
        """What recording a fill also writes: the session's activity (the sweeper's index).
        Its pair was admitted to `pairs:{sid}` before (`_admit_pairs`)."""
        return [ops.zadd(self.keys.sessions, self.clock.now_ms(), fill.session_id)]

    # --- buys ----------------------------------------------------------------------
    def bulk(self, event: Event) -> bool:
        """Buy fills take the batch path (workers/buy_batch.py)."""
        return isinstance(event, Fill) and event.side == "buy"

    async def handle_bulk(self, items: Sequence[tuple[Entry, Fill]]) -> list[float | None]:
        """A fill whose pair its session may not take (MAX_PAIRS) goes the one-by-one way,
        which dead-letters it."""
        refused: set[tuple[str, str]] = set()
        for sid, symbol in dict.fromkeys((fill.session_id, fill.symbol) for _, fill in items):
            # in stream order: the first new pair takes the last slot (cached once admitted)
            if await self.pairs.admit(sid, (symbol,)):
                refused.add((sid, symbol))
        if not refused:
            return await self.buys.run(items)
        taken = [item for item in items if (item[1].session_id, item[1].symbol) not in refused]
        outcomes = iter(await self.buys.run(taken) if taken else [])
        return [
            NOT_HANDLED if (fill.session_id, fill.symbol) in refused else next(outcomes)
            for _, fill in items
        ]

    async def on_buy(self, entry: Entry, fill: Fill) -> Outcome:
        """Record the fill and claim its TP step in one compare-and-set, then place the TP."""
        sid, pid = fill.session_id, fill.order_id
        quantity, fee = held_and_fee(fill)
        buy = Buy(fill.fill_id, fill.price, quantity, fee, fill.ts, entry.id)
        observed = asyncio.ensure_future(self._observe(fill))
        try:
            market: Market | None = await self.exchange.market(fill.symbol)
        except ExchangeError as exc:  # record the fill anyway; the sweeper covers it later
            log.warning(
                "no market rules for %s (%s): fill recorded, covering deferred", fill.symbol, exc
            )
            market = None
        pos = self.book.cached(sid, pid) or new_position(
            session_id=sid, position_id=pid, symbol=fill.symbol, opened_at=fill.ts
        )
        for _ in range(MAX_TRIES):
            bought = pos.with_buy(buy)
            plan = None if market is None else self.engine.plan(bought, market, trigger_ms=entry.ms)
            if plan is not None:  # one version step for the fill and the claim together
                plan = msgspec.structs.replace(
                    plan, position=msgspec.structs.replace(plan.position, v=bought.v)
                )
            writes = [plan.position if plan is not None else bought]
            result = await self.book.commit(
                sid,
                writes,
                fill=fill,
                ops=[*self._fill_ops(fill), *(plan.ops if plan else [])],
                entry=entry.id,
            )
            if isinstance(result, Committed):
                await observed
                crash_point("fill_recorded")
                if plan is None or market is None:
                    return Outcome(Result.PENDING, writes[0], "exchange unavailable")
                return await self._settle(await self.engine.execute(plan, market))
            if isinstance(result, Duplicate):
                await observed
                if result.current is None:
                    return Outcome(Result.NOTHING)
                current = await self._earliest_entry(result.current, fill, entry)
                # seen before: still make sure it is covered (a crash may have come in between)
                return await self._settle(
                    await self.engine.cover(sid, pid, position=current, trigger_ms=entry.ms)
                )
            assert isinstance(result, Conflict)
            pos = result.current or new_position(
                session_id=sid, position_id=pid, symbol=fill.symbol, opened_at=fill.ts
            )
        raise RuntimeError(f"position {pid} kept changing; will retry")

    async def _earliest_entry(self, pos: Position, fill: Fill, entry: Entry) -> Position:
        """A buy recorded from a later delivery of the same fill (a replay handled while
        this entry waited at a killed consumer) takes this entry's earlier stream id: a
        FIFO sell between the two sees it (docs/contract.md §3 Closing). The sell cannot
        have gone first: its readiness barrier waits while this entry is pending."""
        for _ in range(MAX_TRIES):
            changed = pos.with_earlier_entry(fill.fill_id, entry.id)
            if changed is None:
                return pos
            result = await self.book.commit(pos.session_id, [changed])
            if isinstance(result, Committed):
                return changed
            assert isinstance(result, Conflict)
            if result.current is None:
                return pos
            pos = result.current
        raise RuntimeError(f"position {pos.id} kept changing; will retry")

    async def _settle(self, outcome: Outcome) -> Outcome:
        if outcome.result is Result.BUSY:
            raise Retry(outcome.reason, after_ms=max(self.engine.pending_settle_ms, 100))
        return outcome

    async def _observe(self, fill: Fill) -> None:
        """Tell the exchange (the paper one moves balances); an exchange's refusal is only
        logged."""
        try:
            await self.exchange.observe_fill(  # fill ids are unique within a session only
                fill_id=f"{fill.session_id}/{fill.fill_id}",
                order_id=fill.order_id,
                symbol=fill.symbol,
                side=fill.side,
                price=fill.price,
                quantity=fill.quantity,
            )
        except ExchangeError as exc:
            log.warning("exchange did not take note of fill %s: %s", fill.fill_id, exc)

    # --- sells ---------------------------------------------------------------------
    def attach(self, runtime: Runtime) -> None:
        """The runtime consuming for this handler (FIFO sells look at its group's backlog)."""
        self.closing.runtime = runtime

    async def on_sell(self, entry: Entry, fill: Fill) -> None:
        await self._observe(fill)
        await self.closing.on_sell(entry, fill, self._fill_ops(fill))
