"""The coverage hot path: the buy fills of a batch, one round trip per phase (issue 12).

The runtime hands the coverage handler the buy fills of a batch that wait for nothing
else in it (workers/lanes.py); this module takes them together:

1. observe: the exchange takes note of the fills (the paper exchange: one pipeline);
2. record and claim: per position, its fills of the batch applied in stream order and the
   TP step they call for claimed, as one compare-and-set group; all groups of a session
   in one script call, all sessions in one round trip (storage/ledger.py commit_many);
3. place: every claimed step in one `place_limit_sells` call, within the rate budget
   (trading/placing.py);
4. confirm: every placed step recorded in one round trip (TakeProfitEngine.confirm_many);
5. the runtime acks the batch with one XACK.

A group that finds one of its fills recorded before (a redelivery, a replay) or its
position moved (another consumer) is not applied: its entries go through the handler
one by one, which handles exactly those cases. Every invariant of the single path holds:
the fill-id guard and the version CAS are the same script's, a step is claimed before
the exchange is called, an entry is acked only after its effects are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from base import logs
from base.faults import crash_point
from base.metrics import TAKEPROFITS
from events import Fill
from storage.ledger import Group, Write
from storage.ops import Op
from storage.streams import Entry
from trading.book import PositionBook
from trading.exchange import ExchangeError, Market, SeenFill
from trading.fees import held_and_fee
from trading.outcomes import Result
from trading.positions import Buy, Position, Step, encode_position, new_position
from trading.takeprofit import Plan, TakeProfitEngine
from workers.lanes import NOT_HANDLED

log = logs.get("mmops.coverage")


@dataclass
class _Position:
    """One position's share of the batch."""

    sid: str
    pid: str
    items: list[tuple[Entry, Fill]] = field(default_factory=list)
    final: Position | None = None
    plan: Plan | None = None
    market: Market | None = None


class BuyBatch:
    def __init__(
        self,
        *,
        book: PositionBook,
        engine: TakeProfitEngine,
        fill_ops: Callable[[Fill], list[Op]],
    ) -> None:
        self.book = book
        self.engine = engine
        self.exchange = engine.exchange
        self._fill_ops = fill_ops

    async def run(self, items: Sequence[tuple[Entry, Fill]]) -> list[float | None]:
        """Per entry: None (done: ack it) or NOT_HANDLED (give it to the one-by-one path)."""
        markets = await self._markets({fill.symbol for _, fill in items})
        positions: dict[tuple[str, str], _Position] = {}
        for entry, fill in items:
            key = (fill.session_id, fill.order_id)
            share = positions.get(key)
            if share is None:
                share = positions[key] = _Position(fill.session_id, fill.order_id)
            share.items.append((entry, fill))  # a fill sent twice is applied once (_group)
        groups: dict[str, list[Group]] = {}
        order: list[_Position] = []
        for share in positions.values():
            share.market = markets.get(share.items[0][1].symbol)
            # the session's activity index once per session and batch (a group that is
            # not applied goes the one-by-one way, which writes it itself)
            group = self._group(share, index=share.sid not in groups)
            if _busy(share.plan):
                continue  # a step of it is being placed: the one-by-one path waits for it
            groups.setdefault(share.sid, []).append(group)
            order.append(share)
        # the exchange takes note while the fills are recorded (one round trip less); the
        # TPs are placed only after it did (the paper exchange credits the bought coins)
        _, statuses = await asyncio.gather(
            self._observe([fill for _, fill in items]), self.book.commit_many(groups)
        )
        crash_point("fill_recorded")
        applied: set[int] = set()
        by_sid = {sid: iter(s) for sid, s in statuses.items()}
        for share in order:
            if next(by_sid[share.sid]) == "ok":
                applied.add(id(share))
                assert share.final is not None
                self.book.remember(share.final)
        claims: list[tuple[Position, Step, Market]] = []
        for share in order:
            if id(share) not in applied or share.plan is None:
                continue
            if share.plan.step is not None and share.market is not None:
                claims.append((share.plan.position, share.plan.step, share.market))
            elif share.plan.ops:  # a dust or dry-run record went with the fills
                TAKEPROFITS.labels("skipped").inc()
        if claims:
            crash_point("step_claimed")
            await self.engine.place_many(claims)
        outcome = {
            entry.id: None for share in order if id(share) in applied for entry, _ in share.items
        }
        return [outcome.get(entry.id, NOT_HANDLED) for entry, _ in items]

    def _group(self, share: _Position, *, index: bool) -> Group:
        """The share's fills applied in stream order and its TP claimed: one CAS group."""
        first_entry, first_fill = share.items[0]
        cached = self.book.cached(share.sid, share.pid)
        base = cached or new_position(
            session_id=share.sid,
            position_id=share.pid,
            symbol=first_fill.symbol,
            opened_at=first_fill.ts,
        )
        bought = base
        ops: list[Op] = []
        fills: dict[str, Fill] = {}
        entries: list[str] = []
        for entry, fill in share.items:
            if fill.fill_id in fills:
                continue  # the same fill delivered twice in one batch: recorded once
            fills[fill.fill_id] = fill
            entries.append(entry.id)
            quantity, fee = held_and_fee(fill)
            bought = bought.with_buy(
                Buy(fill.fill_id, fill.price, quantity, fee, fill.ts, entry.id)
            )
        if index:
            ops += self._fill_ops(first_fill)
        if share.market is not None:
            share.plan = self.engine.plan(bought, share.market, trigger_ms=first_entry.ms)
            ops += share.plan.ops
            final = share.plan.position
        else:
            final = bought
        final = msgspec.structs.replace(final, v=base.v + 1)  # one version step for it all
        share.final = final
        if share.plan is not None:
            share.plan = Plan(final, share.plan.step, share.plan.ops, share.plan.outcome)
        write = Write(share.pid, base.v, encode_position(final))
        return Group(list(fills.values()), [write], ops, entries)

    async def _observe(self, fills: list[Fill]) -> None:
        """Tell the exchange (the paper one moves balances); a refusal is only logged."""
        try:
            await self.exchange.observe_fills(
                [
                    SeenFill(  # fill ids are unique within a session only
                        fill_id=f"{f.session_id}/{f.fill_id}",
                        order_id=f.order_id,
                        symbol=f.symbol,
                        side=f.side,
                        price=f.price,
                        quantity=f.quantity,
                    )
                    for f in fills
                ]
            )
        except ExchangeError as exc:
            log.warning("exchange did not take note of %d fills: %s", len(fills), exc)

    async def _markets(self, symbols: set[str]) -> dict[str, Market]:
        out: dict[str, Market] = {}
        for symbol in symbols:
            try:
                out[symbol] = await self.exchange.market(symbol)
            except ExchangeError as exc:  # record the fills anyway; the sweeper covers them
                log.warning("no market rules for %s (%s): covering deferred", symbol, exc)
        return out


def _busy(plan: Plan | None) -> bool:
    return plan is not None and plan.outcome is not None and plan.outcome.result is Result.BUSY
