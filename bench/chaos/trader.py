"""The trader the chaos run plays: seeded, pure (no I/O), one step at a time.

Many sessions at once over several Kraken pairs: buy orders filled in one or several
parts (some of them dust), duplicate deliveries and replays of earlier fills, FIFO sells
(the trader's own sells, not TPs) on one pair of some sessions, `order` events with
status changes (and a stale one after the newest), sessions with and without
`session_started`, ended with and without `fills`. The TP fills are made by traffic.py
(they depend on what the workers placed). Entries are flat field maps, as XADDed.

Rules that keep the expected outcome well defined (docs/chaos.md): a buy order's parts
all precede any sell of its position (TP fills wait for the last part, FIFO sells for
every queued part of the pair), and a session's TPs are never filled on its FIFO pair.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_UP, Context, Decimal, localcontext

from mmops.sim_config import Pair, pairs_for

CTX = Context(prec=60)
FEE_RATE = Decimal("0.0025")
Fields = dict[str, str]


@dataclass
class Order:
    order_id: str
    symbol: str
    price: Decimal
    parts: deque[Decimal]
    total: Decimal
    complete: bool = False


@dataclass
class Session:
    sid: str
    pairs: list[Pair]
    fifo: str | None  # the pair the trader sells FIFO on (never a TP fill there)
    starts: bool
    closing: bool  # every TP filled once it ended, its FIFO pair sold out
    end_fills: bool  # its session_ended carries `fills`
    orders_left: int
    orders: int = 0
    fills: int = 0  # unique fills before the end (the `fills` of session_ended)
    last_ts: int = 0
    started: bool = False
    ended: bool = False
    queued: dict[str, Order] = field(default_factory=dict)  # symbol -> order with parts left
    positions: dict[str, Order] = field(default_factory=dict)
    fifo_open: Decimal = Decimal(0)
    sent_fills: list[Fields] = field(default_factory=list)
    tp_fills: int = 0


@dataclass
class TraderStats:
    buys: int = 0
    dust_orders: int = 0
    partial_orders: int = 0
    fifo_sells: int = 0
    tp_fills: int = 0
    tp_fills_after_end: int = 0
    duplicates: int = 0
    replays: int = 0
    order_events: int = 0
    invalid: int = 0
    sessions: int = 0


class Trader:
    def __init__(self, seed: int, *, sessions: int, pairs: int, orders: tuple[int, int]) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.live_target = sessions
        self.orders_range = orders
        self.pairs = pairs_for(pairs)
        self.mid = {p.symbol: float(p.start) for p in self.pairs}
        self.sessions: dict[str, Session] = {}
        self.stats = TraderStats()
        self.stopping = False

    # --- sessions ------------------------------------------------------------------
    def active(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.ended]

    def _new_session(self) -> Session:
        n = len(self.sessions) + 1
        pairs = self.rng.sample(self.pairs, self.rng.randint(2, min(4, len(self.pairs))))
        s = Session(
            sid=f"cs{self.seed}-{n}",
            pairs=pairs,
            fifo=pairs[0].symbol if self.rng.random() < 0.5 else None,
            starts=self.rng.random() < 0.85,
            closing=self.rng.random() < 0.6,
            end_fills=self.rng.random() < 0.7,
            orders_left=self.rng.randint(*self.orders_range),
        )
        self.sessions[s.sid] = s
        self.stats.sessions += 1
        return s

    def ts(self, s: Session, now_ms: int) -> int:
        """A session's times never go back, and no two of its events share one."""
        s.last_ts = max(now_ms, s.last_ts + 1)
        return s.last_ts

    # --- one step ------------------------------------------------------------------
    def step(self, now_ms: int) -> list[Fields]:
        """The next entries of one session (a new one while there are too few)."""
        live = self.active()
        if not self.stopping and len(live) < self.live_target:
            live.append(self._new_session())
        if not live:
            return []
        s = self.rng.choice(live)
        out: list[Fields] = []
        if not s.started:
            s.started = True
            if s.starts:
                pairs = ",".join(p.symbol for p in s.pairs)
                ts = str(self.ts(s, now_ms))
                out.append(
                    {"type": "session_started", "session_id": s.sid, "pairs": pairs, "ts": ts}
                )
        roll = self.rng.random()
        if self.stopping or (s.orders_left <= 0 and not s.queued):
            return out + self.end(s, now_ms)
        if s.fifo and s.fifo not in s.queued and s.fifo_open > 0 and roll < 0.08:
            share = Decimal(str(round(self.rng.uniform(0.2, 0.8), 2)))
            out += self._fifo_sell(s, now_ms, s.fifo_open * share)
        elif s.queued and (roll < 0.6 or s.orders_left <= 0):
            out += self._part(s, self.rng.choice(sorted(s.queued)), now_ms)
        elif roll < 0.62:
            out += self._cancelled_order(s, now_ms)
        else:
            out += self._new_order(s, now_ms)
        if s.sent_fills and self.rng.random() < 0.02:  # a replay of an earlier fill
            self.stats.replays += 1
            out.append(dict(self.rng.choice(s.sent_fills)))
        return out

    def end(self, s: Session, now_ms: int) -> list[Fields]:
        """Its remaining parts are never sent; a closing session sells its FIFO pair out."""
        out: list[Fields] = []
        s.queued.clear()
        if s.closing and s.fifo and s.fifo_open > 0:
            out += self._fifo_sell(s, now_ms, s.fifo_open)
        s.ended = True
        ended = {"type": "session_ended", "session_id": s.sid, "ts": str(self.ts(s, now_ms))}
        if s.end_fills:
            ended["fills"] = str(s.fills)
        if self.rng.random() < 0.5:
            ended["reason"] = "chaos"
        return [*out, ended]

    # --- buys ----------------------------------------------------------------------
    def _price(self, pair: Pair) -> Decimal:
        self.mid[pair.symbol] *= math.exp(self.rng.gauss(0.0, 0.0005))
        tick = pair.rules.tick
        with localcontext(CTX):
            value = (Decimal(repr(self.mid[pair.symbol])) / tick).to_integral_value(ROUND_DOWN)
            return max(value * tick, tick).quantize(tick)

    def _new_order(self, s: Session, now_ms: int) -> list[Fields]:
        pair = self.rng.choice([p for p in s.pairs if p.symbol not in s.queued] or s.pairs)
        if pair.symbol in s.queued:
            return self._part(s, pair.symbol, now_ms)
        s.orders += 1
        s.orders_left -= 1
        price = self._price(pair)
        parts = self._split(pair, price)
        order = Order(
            f"{s.sid}-o{s.orders}", pair.symbol, price, deque(parts), sum(parts, Decimal(0))
        )
        s.positions[order.order_id] = order
        s.queued[pair.symbol] = order
        return self._part(s, pair.symbol, now_ms)

    def _split(self, pair: Pair, price: Decimal) -> list[Decimal]:
        step = pair.qty_step
        smallest = max(pair.rules.min_amount, pair.rules.min_cost / price)
        with localcontext(CTX):
            if self.rng.random() < 0.05:  # dust: below the market's minimum, never covered
                self.stats.dust_orders += 1
                return [max(step, (smallest * Decimal("0.4")).quantize(step, ROUND_DOWN))]
            notional = Decimal(
                str(round(math.exp(self.rng.uniform(math.log(30), math.log(400))), 2))
            )
            total = max(
                (notional / price).quantize(step, ROUND_DOWN),
                (smallest * 2).quantize(step, ROUND_UP),
            )
            if self.rng.random() >= 0.35:
                return [total]
            self.stats.partial_orders += 1
            n = self.rng.randint(2, 4)
            if self.rng.random() < 0.3:  # a first part below the minimum: dust until topped up
                first = max(step, (smallest * Decimal("0.3")).quantize(step, ROUND_DOWN))
                rest = total - first
                return [first, *self._cut(rest, n - 1, step)] if rest > 0 else [total]
            return self._cut(total, n, step)

    def _cut(self, total: Decimal, n: int, step: Decimal) -> list[Decimal]:
        cuts = sorted(self.rng.uniform(0.15, 0.85) for _ in range(n - 1))
        out, before = [], Decimal(0)
        for share in cuts:
            upto = (total * Decimal(str(round(share, 4)))).quantize(step, ROUND_DOWN)
            if upto > before:
                out.append(upto - before)
                before = upto
        out.append(total - before)
        return [q for q in out if q > 0]

    def _part(self, s: Session, symbol: str, now_ms: int) -> list[Fields]:
        order = s.queued[symbol]
        qty = order.parts.popleft()
        if not order.parts:
            order.complete = True
            del s.queued[symbol]
        s.fills += 1
        self.stats.buys += 1
        if symbol == s.fifo:
            s.fifo_open += qty
        fill = self._fill(
            s, f"{s.sid}-f{s.fills}", order.order_id, symbol, "buy", order.price, qty, now_ms
        )
        out = [fill]
        if self.rng.random() < 0.04:  # the same entry delivered twice
            self.stats.duplicates += 1
            out.append(dict(fill))
        if order.complete and self.rng.random() < 0.3:
            out += self._order_events(s, order, "closed", now_ms)
        return out

    def _cancelled_order(self, s: Session, now_ms: int) -> list[Fields]:
        """A buy order that never filled: opened, then cancelled."""
        pair = self.rng.choice(s.pairs)
        s.orders += 1
        order = Order(f"{s.sid}-o{s.orders}", pair.symbol, self._price(pair), deque(), Decimal("1"))
        return self._order_events(s, order, "canceled", now_ms)

    def _order_events(self, s: Session, order: Order, final: str, now_ms: int) -> list[Fields]:
        """open, then the final status, then the open again (older: it must not win)."""
        events = []
        opened = self.ts(s, now_ms)
        for status, ts in (("open", opened), (final, self.ts(s, now_ms)), ("open", opened)):
            events.append(
                {
                    "type": "order",
                    "session_id": s.sid,
                    "order_id": order.order_id,
                    "symbol": order.symbol,
                    "side": "buy",
                    "order_type": "limit",
                    "price": str(order.price),
                    "quantity": str(order.total),
                    "status": status,
                    "ts": str(ts),
                }
            )
        self.stats.order_events += len(events)
        return events

    # --- sells ---------------------------------------------------------------------
    def _fifo_sell(self, s: Session, now_ms: int, qty: Decimal) -> list[Fields]:
        assert s.fifo is not None
        pair = next(p for p in s.pairs if p.symbol == s.fifo)
        qty = qty.quantize(pair.qty_step, ROUND_DOWN)
        if qty <= 0:
            return []
        s.fifo_open -= qty
        s.fills += 1
        self.stats.fifo_sells += 1
        with localcontext(CTX):
            price = (self._price(pair) * Decimal("1.002")).quantize(pair.rules.tick, ROUND_UP)
        order_id = f"{s.sid}-x{s.fills}"
        return [
            self._fill(s, f"{s.sid}-f{s.fills}", order_id, pair.symbol, "sell", price, qty, now_ms)
        ]

    def tp_fill(
        self, s: Session, order_id: str, symbol: str, price: Decimal, qty: Decimal, now_ms: int
    ) -> Fields:
        """The trader's sell fill of a TP that the run filled on the paper exchange."""
        s.tp_fills += 1
        self.stats.tp_fills += 1
        if s.ended:
            self.stats.tp_fills_after_end += 1
        else:
            s.fills += 1
        return self._fill(
            s, f"{s.sid}-t{s.tp_fills}", order_id, symbol, "sell", price, qty, now_ms, keep=False
        )

    def _fill(
        self,
        s: Session,
        fill_id: str,
        order_id: str,
        symbol: str,
        side: str,
        price: Decimal,
        qty: Decimal,
        now_ms: int,
        *,
        keep: bool = True,
    ) -> Fields:
        """A fill entry; `keep`: one of the trader's own (its draws and replays follow the
        seed alone), not a TP fill (which depends on the workers' timing)."""
        with localcontext(CTX):
            fee = (price * qty * FEE_RATE).quantize(Decimal("0.00000001"), ROUND_UP)
        fill = {
            "type": "fill",
            "session_id": s.sid,
            "fill_id": fill_id,
            "order_id": order_id,
            "symbol": symbol,
            "side": side,
            "price": str(price),
            "quantity": str(qty),
            "fee": str(fee),
            "ts": str(self.ts(s, now_ms)),
        }
        if keep and self.rng.random() < 0.3:
            fill["order_type"] = "limit"
        if keep:
            s.sent_fills.append(fill)
        return fill
