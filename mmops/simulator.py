"""A simulated trader for demos, tests and benchmarks (`mmops simulate`).

It plays the market maker upstream of mmops: sessions over Kraken USD pairs whose
prices follow a random walk, buy fills (some orders filled in several parts) and a
`session_ended` with the session's own fill count. Prices are mirrored into the paper
exchange (`set_price`); when a pair's price reaches a live take-profit of a session, the
simulator fills it on the paper exchange (`fill_order`) and emits the trader's sell fill
with `order_id` = the TP's order id, as the real trader would — also after the session
ended: TPs outlive their session. `after_end` seconds of prices (and TP fills) follow the
last session's end.

Reproducibility: the trader's own events (sessions, buy orders, prices, sizes) are a
function of `seed` and `tag` alone; event times are wall-clock. Sell fills depend on
which TPs the coverage workers had placed when a price crossed them, so they vary
with timing.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from events import Fill, SessionEnded, SessionStarted, encode
from events.schema import Event
from mmops.rolling import rolling_slots
from mmops.sim_config import Pair, PairStats, pairs_for
from mmops.sim_config import SimConfig as SimConfig
from mmops.sim_config import SimStats as SimStats
from mmops.sim_config import SimulationError as SimulationError
from storage.keys import Keys
from storage.redis import AnyRedis
from trading.exchange import OrderStatus
from trading.paper import PaperExchange

FEE_RATE = Decimal("0.0025")  # the trader's fee on each fill, charged in USD
BUY_SPREAD = Decimal("0.0002")  # the trader buys this far below the mid price
PARTIAL_SHARE = 0.3  # share of buy orders filled in 2-4 parts
NOTIONAL_RANGE = (30.0, 400.0)  # USD per buy order (log-uniform)
MIN_FILL_FACTOR = Decimal("1.5")  # every fill is at least 1.5x the market minimum: no dust
TP_REFRESH_S = 0.2
FLUSH_S = 0.02
CLOSE_GRACE_S = 120.0  # rolling: an ended session's TPs are looked for this long after close_t


@dataclass
class _Session:
    sid: str
    start_t: float
    end_t: float
    fills: int = 0
    orders: int = 0
    last_ts: int = 0  # of the session's latest event: its end is never earlier
    started: bool = False
    ended: bool = False
    close_t: float = math.inf  # rolling: every TP of the ended session is filled by then
    queued: dict[str, deque[Decimal]] = field(default_factory=dict)  # symbol -> partial fills left
    open_order: dict[str, tuple[str, Decimal]] = field(
        default_factory=dict
    )  # symbol -> (id, price)


@dataclass
class _Walk:
    price: float
    t: float = 0.0
    high: float = 0.0  # highest price since the last TP check


@dataclass(frozen=True, slots=True)
class _LiveTp:
    order_id: str
    sid: str
    symbol: str
    price: Decimal


ProgressCallback = Callable[[SimStats], Awaitable[None] | None]


class Simulator:
    """Sends a trader's events at `config.rate` buy fills per second, each to its session's
    shard of the input stream (`keys.stream_for`)."""

    def __init__(
        self, *, redis: AnyRedis, keys: Keys, exchange: PaperExchange, config: SimConfig
    ) -> None:
        config.validate()
        self.redis = redis
        self.keys = keys
        self.exchange = exchange
        self.config = config
        self.rng = random.Random(config.seed)
        self.tag = config.tag or f"{config.seed}-{_base36(time.time_ns() // 1_000_000_000)}"
        self.pairs = pairs_for(config.pairs)
        self.walks = {p.symbol: _Walk(float(p.start), high=float(p.start)) for p in self.pairs}
        self.stats = SimStats(planned_buys=config.total_buys, tag=self.tag)
        self.stats.pairs = {p.symbol: PairStats(p.start, p.start) for p in self.pairs}
        self.sessions = self._schedule()
        self.stats.session_ids = [s.sid for s in self.sessions]
        self._tps: dict[str, list[_LiveTp]] = {}
        self._close_t: dict[str, float] = {}  # rolling: ended sessions, when their TPs fill
        self._tps_at = -math.inf
        self._t0_ms = 0

    def _schedule(self) -> list[_Session]:
        """Staggered sessions: with N sessions each lasts 2D/(N+1) and starts D/(N+1) after the
        last."""
        n, d = self.config.sessions, self.config.duration
        if self.config.rolling:
            slots = rolling_slots(
                n, self.config.session_seconds, self.config.close_within, d, random.Random(~n)
            )
            return [
                _Session(f"sim-{self.tag}-{i + 1:03d}", slot.start, slot.end, close_t=slot.close)
                for i, slot in enumerate(slots)
            ]
        length = d * 2 / (n + 1) if n > 1 else d
        step = d / (n + 1) if n > 1 else 0.0
        return [
            _Session(f"sim-{self.tag}-{i + 1:03d}", i * step, min(d, i * step + length))
            for i in range(n)
        ]

    # --- the run ---------------------------------------------------------------------
    async def run(
        self, on_progress: ProgressCallback | None = None, progress_every: float = 0.5
    ) -> SimStats:
        """Emit every event, paced in real time; returns the final stats."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._t0_ms = time.time_ns() // 1_000_000
        total = self.config.total_buys
        emitted = 0
        last_progress = -math.inf
        for pair in self.pairs:
            await self.exchange.set_price(pair.symbol, self._tick_price(pair, float(pair.start)))
        while True:
            now = loop.time() - started
            due = min(total, int(now * self.config.rate) + 1)
            batch: list[Event] = []
            while emitted < due:  # in simulated time: the same order whatever the pacing
                t = emitted / self.config.rate
                batch += self._session_ends(t)
                batch += self._session_starts(t)
                batch.append(self._buy(t))
                emitted += 1
            await self._send(batch)
            await self._prices_and_tp_fills(loop.time() - started)
            finished = emitted >= total and loop.time() - started >= self.config.duration
            if finished:
                await self._send(self._session_ends(self.config.duration))
            self.stats.elapsed = loop.time() - started
            if on_progress is not None and (
                finished or self.stats.elapsed - last_progress >= progress_every
            ):
                last_progress = self.stats.elapsed
                result = on_progress(self.stats)
                if result is not None:
                    await result
            if finished:
                break
            await asyncio.sleep(FLUSH_S)
        await self._after_end(started, on_progress, progress_every)
        return self.stats

    async def _after_end(
        self, started: float, on_progress: ProgressCallback | None, progress_every: float
    ) -> None:
        """`after_end` seconds of prices and TP fills once every session has ended."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.config.after_end
        last_progress = loop.time() - started
        while loop.time() < until:
            await asyncio.sleep(FLUSH_S)
            now = loop.time() - started
            for pair in self.pairs:
                self._walk(pair, now)
            await self._prices_and_tp_fills(now)
            self.stats.elapsed = now
            if on_progress is not None and now - last_progress >= progress_every:
                last_progress = now
                result = on_progress(self.stats)
                if result is not None:
                    await result

    # --- trader events -------------------------------------------------------------
    def _ts(self, t: float) -> int:
        return self._t0_ms + int(t * 1000)

    def _session_starts(self, t: float) -> list[Event]:
        out: list[Event] = []
        for s in self.sessions:
            if not s.started and s.start_t <= t:
                s.started = True
                self.stats.sessions_started += 1
                out.append(
                    SessionStarted(
                        session_id=s.sid,
                        pairs=tuple(p.symbol for p in self.pairs),
                        ts=self._ts(s.start_t),
                    )
                )
        return out

    def _session_ends(self, t: float) -> list[Event]:
        out: list[Event] = []
        for s in self.sessions:
            if s.started and not s.ended and s.end_t <= t:
                s.ended = True
                self.stats.sessions_ended += 1
                ts = max(self._ts(s.end_t), self._ts(t), s.last_ts)
                out.append(
                    SessionEnded(session_id=s.sid, ts=ts, fills=s.fills, reason="simulation")
                )
        return out

    def _active(self, t: float) -> list[_Session]:
        live = [s for s in self.sessions if s.started and not s.ended and s.start_t <= t < s.end_t]
        return live or [s for s in self.sessions if s.started and not s.ended][-1:]

    def _buy(self, t: float) -> Fill:
        """One buy fill: the next part of a partially filled order, or a new order."""
        session = self.rng.choice(self._active(t))
        pair = self.rng.choice(self.pairs)
        price = self._walk(pair, t)
        queue = session.queued.get(pair.symbol)
        if queue:
            order_id, order_price = session.open_order[pair.symbol]
            qty = queue.popleft()
        else:
            session.orders += 1
            self.stats.buy_orders += 1
            order_id = f"{session.sid}-o{session.orders}"
            order_price = self._tick_price(pair, price * (1 - float(BUY_SPREAD)), ROUND_DOWN)
            parts = self._split(pair, order_price)
            if len(parts) > 1:
                self.stats.partial_orders += 1
            session.open_order[pair.symbol] = (order_id, order_price)
            qty = parts[0]
            session.queued[pair.symbol] = deque(parts[1:])
        session.fills += 1
        session.last_ts = max(session.last_ts, self._ts(t))
        self.stats.buys += 1
        self.stats.pairs[pair.symbol].buys += 1
        return Fill(
            session_id=session.sid,
            fill_id=f"{session.sid}-f{session.fills}",
            order_id=order_id,
            symbol=pair.symbol,
            side="buy",
            price=order_price,
            quantity=qty,
            fee=_fee(order_price, qty),
            ts=self._ts(t),
            order_type="limit",
        )

    def _split(self, pair: Pair, price: Decimal) -> list[Decimal]:
        """Quantities of one buy order's fills (1 part, or 2-4 for a partially filled order)."""
        low, high = NOTIONAL_RANGE
        notional = Decimal(str(round(math.exp(self.rng.uniform(math.log(low), math.log(high))), 2)))
        step = pair.qty_step
        smallest = max(pair.rules.min_amount, pair.rules.min_cost / price) * MIN_FILL_FACTOR
        total = max(
            (notional / price).quantize(step, ROUND_DOWN), smallest.quantize(step, ROUND_UP)
        )
        parts = self.rng.randint(2, 4) if self.rng.random() < PARTIAL_SHARE else 1
        parts = max(1, min(parts, int(total / smallest)))
        if parts == 1:
            return [total]
        cuts = sorted(self.rng.uniform(0.2, 0.8) for _ in range(parts - 1))
        out: list[Decimal] = []
        before = Decimal(0)
        for share in cuts:
            upto = (total * Decimal(str(round(share, 4)))).quantize(step, ROUND_DOWN)
            out.append(upto - before)
            before = upto
        out.append(total - before)
        if min(out) < smallest:  # a part too small to cover: fill it in one go
            return [total]
        return out

    # --- prices ------------------------------------------------------------------------
    def _walk(self, pair: Pair, t: float) -> float:
        """Advance the pair's geometric random walk to time t (exact over any gap)."""
        walk = self.walks[pair.symbol]
        dt = max(0.0, t - walk.t)
        sigma = self.config.volatility / 100
        walk.price *= math.exp(
            sigma * math.sqrt(dt) * self.rng.gauss(0.0, 1.0) - sigma * sigma * dt / 2
        )
        walk.t = t
        walk.high = max(walk.high, walk.price)
        return walk.price

    @staticmethod
    def _tick_price(pair: Pair, price: float, rounding: str = ROUND_DOWN) -> Decimal:
        tick = pair.rules.tick
        value = (Decimal(repr(price)) / tick).to_integral_value(rounding=rounding) * tick
        return max(value, tick).quantize(tick)

    async def _prices_and_tp_fills(self, now: float) -> None:
        """Mirror moved prices into the paper exchange; fill the TPs the prices reached."""
        if now - self._tps_at >= TP_REFRESH_S:
            self._tps_at = now
            await self._refresh_tps()
        sells: list[Event] = []
        for pair in self.pairs:
            walk = self.walks[pair.symbol]
            last = self._tick_price(pair, walk.price)
            high = self._tick_price(pair, walk.high)
            walk.high = walk.price
            stats = self.stats.pairs[pair.symbol]
            if last != stats.last:
                stats.last = last
                await self.exchange.set_price(pair.symbol, last)
            waiting: list[_LiveTp] = []
            for tp in self._tps.get(pair.symbol, []):
                due = tp.price <= high or now >= self._close_t.get(tp.sid, math.inf)
                sell = await self._fill_tp(tp) if due else None
                if sell is not None:
                    sells.append(sell)
                elif tp.price > high:
                    waiting.append(tp)
            self._tps[pair.symbol] = waiting
        await self._send(sells)

    async def _refresh_tps(self) -> None:
        """Live TPs of the active sessions, by symbol (one read of the open orders)."""
        live = {  # rolling: ended sessions too, until their TPs were filled
            s.sid: s
            for s in self.sessions
            if s.started and (not s.ended or self._tps_at < s.close_t + CLOSE_GRACE_S)
        }
        self._close_t = {s.sid: s.close_t for s in live.values() if s.ended}
        if not live:
            self._tps = {}
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in live:
                pipe.smembers(self.keys.tp_orders(sid))
            members = await pipe.execute()
        owner: dict[str, str] = {
            (m.decode() if isinstance(m, bytes) else str(m)): sid
            for sid, ids in zip(live, members, strict=True)
            for m in ids
        }
        tps: dict[str, list[_LiveTp]] = {}
        for order in await self.exchange.open_orders():
            owned = owner.get(order.id)
            if owned is not None and order.side == "sell":
                tps.setdefault(order.symbol, []).append(
                    _LiveTp(order.id, owned, order.symbol, order.price)
                )
        self._tps = tps

    async def _fill_tp(self, tp: _LiveTp) -> Fill | None:
        session = next((s for s in self.sessions if s.sid == tp.sid), None)
        if session is None:
            return None
        before = await self.exchange.fetch_order(symbol=tp.symbol, order_id=tp.order_id)
        if before is None or before.status != OrderStatus.OPEN:
            return None
        after = await self.exchange.fill_order(tp.order_id)
        qty = after.filled - before.filled
        if qty <= 0:
            return None
        session.fills += 1
        session.last_ts = max(session.last_ts, time.time_ns() // 1_000_000)
        self.stats.sells += 1
        self.stats.sells_after_end += session.ended
        self.stats.pairs[tp.symbol].sells += 1
        return Fill(
            session_id=session.sid,
            fill_id=f"{session.sid}-f{session.fills}",
            order_id=tp.order_id,
            symbol=tp.symbol,
            side="sell",
            price=after.price,
            quantity=qty,
            fee=_fee(after.price, qty),
            ts=session.last_ts,
            order_type="limit",
        )

    async def _send(self, events: list[Event]) -> None:
        if not events:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.keys.stream_for(event.session_id), encode(event))  # type: ignore[arg-type]
            await pipe.execute()
        self.stats.events += len(events)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _fee(price: Decimal, qty: Decimal) -> Decimal:
    """The trader's fee in USD, rounded up to 1e-8."""
    return (price * qty * FEE_RATE).quantize(Decimal("0.00000001"), ROUND_UP)
