"""The trader's side of a run, live: paced XADDs to each session's shard, and the TP fills.

Every entry sent is recorded (stream, id, raw fields) for the oracle. A Redis restart by
the fault injector holds `gate` while the server is down, so the trader never sends into
a dead server and never has to guess whether an XADD without an answer was applied.
The TPs are filled on the paper exchange (its `fill_order` hook, as `mmops simulate`
does) and then reported as the trader's sell fill with the TP's order id: some right
after placement, and every one of a closing session after its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from bench.chaos.config import ChaosConfig
from bench.chaos.trader import Fields, Session, Trader
from bench.hostile import HUGE, KINDS, hostile_entries
from storage.keys import Keys
from trading.exchange import OrderStatus
from trading.paper import PaperExchange

TP_LOOK_S = 0.3
# the fuzz set (bench/hostile.py) but its 10 MB values: bench.fuzz and the fuzz test send
# those; here they would only fill the run's Redis and its AOF
INVALID_KINDS = tuple(kind for kind in KINDS if kind != HUGE)
FAST_FILL_SHARE = 0.35  # of a live session's TPs, filled at first sight


@dataclass(frozen=True, slots=True)
class Sent:
    stream: str
    entry_id: str
    fields: tuple[tuple[bytes, bytes], ...]
    invalid: str = ""  # the kind of an invalid entry


@dataclass
class Record:
    """What the run sent and did on the exchange: the oracle's whole input."""

    sent: list[Sent] = field(default_factory=list)
    tp_owner: dict[str, str] = field(default_factory=dict)  # TP order id -> position id


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Traffic:
    def __init__(
        self, config: ChaosConfig, redis: aioredis.Redis, keys: Keys, exchange: PaperExchange
    ) -> None:
        self.config = config
        self.redis: Any = redis  # bytes replies (no decode_responses)
        self.keys = keys
        self.exchange = exchange
        self.trader = Trader(
            config.seed, sessions=config.sessions, pairs=config.pairs, orders=config.session_orders
        )
        self.rng = random.Random(config.seed * 7919 + 1)
        self.record = Record()
        self.gate = asyncio.Lock()
        self._seen_tps: set[str] = set()
        self.events = 0

    async def run(self) -> None:
        """`duration` seconds of trading, then every session ends, then TP fills after it."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        filler = asyncio.create_task(self._fill_tps_loop())
        steps = 0
        try:
            while loop.time() - started < self.config.duration:
                due = int((loop.time() - started) * self.config.rate) + 1
                async with self.gate:
                    batch: list[tuple[str, Fields | list[tuple[bytes, bytes]], str]] = []
                    while steps < due:
                        steps += 1
                        batch += [(e["session_id"], e, "") for e in self.trader.step(now_ms())]
                        if self.rng.random() < self.config.invalid_share:
                            batch += self._invalid()
                    await self._send(batch)
                await asyncio.sleep(0.02)
            self.trader.stopping = True
            async with self.gate:
                batch = []
                for s in self.trader.active():
                    batch += [(e["session_id"], e, "") for e in self.trader.end(s, now_ms())]
                await self._send(batch)
            await asyncio.sleep(self.config.after_end)
        finally:
            filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await filler

    def _invalid(self) -> list[tuple[str, Fields | list[tuple[bytes, bytes]], str]]:
        self.trader.stats.invalid += 1
        own = f"cx-{self.rng.randrange(10**6)}"  # no valid session's: no state may be kept
        [(kind, fields)] = hostile_entries(self.rng, 1, kinds=INVALID_KINDS, sessions=[own])
        sid = next((v.decode(errors="replace") for k, v in fields if k == b"session_id"), own)
        return [(sid, fields, kind)]

    async def _send(self, batch: list[tuple[str, Fields | list[tuple[bytes, bytes]], str]]) -> None:
        if not batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            rows = []
            for sid, entry, kind in batch:
                raw = (
                    tuple((k.encode(), v.encode()) for k, v in entry.items())
                    if isinstance(entry, dict)
                    else tuple(entry)
                )
                stream = self.keys.stream_for(sid)
                rows.append((stream, raw, kind))
                # XADD through execute_command: a repeated field must reach Redis as is
                pipe.execute_command("XADD", stream, "*", *[x for pair in raw for x in pair])
            ids = await pipe.execute()
        for (stream, raw, kind), entry_id in zip(rows, ids, strict=True):
            text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            self.record.sent.append(Sent(stream, text, raw, kind))
        self.events += len(batch)

    # --- TP fills ------------------------------------------------------------------
    async def _fill_tps_loop(self) -> None:
        while True:
            await asyncio.sleep(TP_LOOK_S)
            async with self.gate:
                try:
                    await self.fill_tps()
                except (ConnectionError, OSError, aioredis.ConnectionError, aioredis.TimeoutError):
                    await self.redis.connection_pool.disconnect()

    async def fill_tps(self) -> None:
        """One look at the live TPs of the sessions whose TPs may fill now."""
        sessions = [
            s for s in self.trader.sessions.values() if s.started and (not s.ended or s.closing)
        ]
        if not sessions:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for s in sessions:
                pipe.smembers(self.keys.tp_orders(s.sid))
            members = await pipe.execute()
        owner = {m.decode(): s for s, ids in zip(sessions, members, strict=True) for m in ids}
        batch: list[tuple[str, Fields | list[tuple[bytes, bytes]], str]] = []
        for order in await self.exchange.open_orders():
            found = owner.get(order.id)
            if found is None or order.side != "sell" or found.fifo == order.symbol:
                continue
            s = found
            position = await self.redis.hget(self.keys.tp_order(s.sid, order.id), "position")
            pos = s.positions.get(position.decode()) if position else None
            if pos is None or not pos.complete:
                continue
            if not s.ended:
                if order.id in self._seen_tps:
                    continue
                self._seen_tps.add(order.id)
                if self.rng.random() >= FAST_FILL_SHARE:
                    continue
            fill = await self._fill(s, order.id, order.symbol, pos.order_id)
            if fill is not None:
                batch.append((s.sid, fill, ""))
                if self.rng.random() < 0.05:  # delivered twice
                    batch.append((s.sid, dict(fill), ""))
        await self._send(batch)

    async def _fill(self, s: Session, order_id: str, symbol: str, position: str) -> Fields | None:
        before = await self.exchange.fetch_order(symbol=symbol, order_id=order_id)
        if before is None or before.status != OrderStatus.OPEN:
            return None
        after = await self.exchange.fill_order(order_id)
        qty: Decimal = after.filled - before.filled
        if qty <= 0:
            return None
        self.record.tp_owner[order_id] = position
        fill = self.trader.tp_fill(s, order_id, symbol, after.price, qty, now_ms())
        if self.rng.random() < 0.5 and after.client_id:
            fill["client_order_id"] = after.client_id
        return fill
