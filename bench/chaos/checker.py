"""After quiescence: what the workers left (exchange, PostgreSQL, Redis) against the oracle.

Each difference is a Violation record: which check, what it is about, what was found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.chaos.oracle import Expected
from storage.keys import Keys
from trading.exchange import OrderStatus
from trading.paper import PaperExchange

CLIENT_PREFIX = "6d6d6f70-"  # mmops' client ids (contract §2: derived, recognisable)
PNL_TOLERANCE = Decimal("1e-8")  # per sell: PostgreSQL keeps P&L to 10 decimals
GROUPS = ("coverage", "migrator")
TTL_KEYS = ("lock:", "tp_attempt:")


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Checker:
    def __init__(
        self,
        expected: Expected,
        redis: aioredis.Redis,
        keys: Keys,
        exchange: PaperExchange,
        pg: asyncpg.Connection,
        maxlen: dict[str, int],
    ) -> None:
        self.exp = expected
        self.redis: Any = redis  # bytes replies (no decode_responses)
        self.keys = keys
        self.exchange = exchange
        self.pg = pg
        self.maxlen = maxlen
        self.out: list[Violation] = []

    def bad(self, check: str, subject: str, detail: str) -> None:
        self.out.append(Violation(check, subject, detail))

    async def run(self) -> list[Violation]:
        self.out = [Violation("oracle", "traffic", text) for text in self.exp.oversold]
        await self.exchange_orders()
        await self.postgres()
        await self.dead_letters()
        await self.streams()
        await self.redis_keys()
        return self.out

    # --- (1) exchange ----------------------------------------------------------------
    async def exchange_orders(self) -> None:
        orders = await self.exchange.orders()
        for client_id, n in Counter(o.client_id for o in orders if o.client_id).items():
            if n > 1:
                self.bad("exchange.duplicate_step", client_id, f"{n} orders for one coverage step")
        known: dict[str, str] = {}  # order id -> session
        for sid in self.exp.sessions:
            for member in await self.redis.smembers(self.keys.tp_orders(sid)):
                known[member.decode()] = sid
        live: dict[tuple[str, str], Decimal] = {}
        for o in orders:
            if not (o.client_id or "").startswith(CLIENT_PREFIX):
                continue
            owner = known.get(o.id)
            if owner is None:
                self.bad(
                    "exchange.orphan", o.id, f"{o.status} {o.symbol} {o.amount}: unknown to mmops"
                )
                continue
            if o.status != OrderStatus.OPEN:
                continue
            raw = await self.redis.hget(self.keys.tp_order(owner, o.id), "position")
            pid = raw.decode() if raw else ""
            live[(owner, pid)] = live.get((sid, pid), Decimal(0)) + o.remaining
        for (sid, pid), qty in sorted(live.items()):
            pos = self.exp.sessions[sid].positions.get(pid)
            open_qty = pos.open if pos is not None else Decimal(0)
            if qty > open_qty:
                self.bad(
                    "exchange.tp_over_open", f"{sid}/{pid}", f"live TP {qty} > open {open_qty}"
                )

    # --- (2) PostgreSQL --------------------------------------------------------------
    async def postgres(self) -> None:
        rows = await self.pg.fetch("SELECT session_id, id, count(*) AS n FROM fills GROUP BY 1, 2")
        stored: dict[str, Counter[str]] = {}
        for r in rows:
            stored.setdefault(r["session_id"], Counter())[r["id"]] += r["n"]
        sessions = {r["id"]: r for r in await self.pg.fetch("SELECT * FROM sessions")}
        pairs = {
            (r["session_id"], r["symbol"]): r["total_pnl"]
            for r in await self.pg.fetch("SELECT session_id, symbol, total_pnl FROM session_pairs")
        }
        statuses = {
            (r["session_id"], r["id"]): r["status"]
            for r in await self.pg.fetch("SELECT session_id, id, status FROM orders")
        }
        for sid, s in sorted(self.exp.sessions.items()):
            if not s.ended:
                continue
            row = sessions.get(sid)
            if row is None:
                self.bad("pg.session_missing", sid, "ended, not in PostgreSQL")
                continue
            have = stored.get(sid, Counter())
            missing = s.fills - set(have)
            extra = set(have) - s.fills
            doubled = [f for f, n in have.items() if n > 1]
            if missing:
                self.bad("pg.fill_missing", sid, f"{len(missing)} fills: {sorted(missing)[:5]}")
            if extra:
                self.bad("pg.fill_unknown", sid, f"{len(extra)} fills: {sorted(extra)[:5]}")
            if doubled:
                self.bad("pg.fill_twice", sid, f"{doubled[:5]}")
            tolerance = PNL_TOLERANCE * max(1, s.sells)
            if abs(Decimal(row["total_pnl"]) - s.pnl) > tolerance:
                self.bad(
                    "pg.session_pnl", sid, f"PostgreSQL {row['total_pnl']}, oracle {s.pnl:.10f}"
                )
            for symbol, pnl in sorted(s.pair_pnl.items()):
                got = pairs.get((sid, symbol))
                if got is None or abs(Decimal(got) - pnl) > tolerance:
                    self.bad(
                        "pg.pair_pnl", f"{sid}/{symbol}", f"PostgreSQL {got}, oracle {pnl:.10f}"
                    )
            if s.closed != (row["closed_at"] is not None):
                self.bad(
                    "pg.closed_at",
                    sid,
                    f"closed_at {row['closed_at']}, oracle says {'closed' if s.closed else 'open'}",
                )
            for order_id, (_, _, status) in sorted(s.orders.items()):
                got = statuses.get((sid, order_id))
                if got is None or got.lower() != status.lower():
                    self.bad(
                        "pg.order_status", f"{sid}/{order_id}", f"PostgreSQL {got}, oracle {status}"
                    )

    # --- (3) dead letters ------------------------------------------------------------
    async def dead_letters(self) -> None:
        seen: Counter[tuple[str, str]] = Counter()
        for _, fields in await self.redis.xrange(self.keys.dead):
            f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            ref = (f.get("stream", ""), f.get("id", ""))
            seen[ref] += 1
            if ref not in self.exp.invalid:
                self.bad(
                    "dead.valid_entry", f"{ref[0]} {ref[1]}", f"dead-lettered: {f.get('error')}"
                )
            elif not f.get("error"):
                self.bad("dead.no_reason", f"{ref[0]} {ref[1]}", "dead letter without an error")
        for ref, kind in sorted(self.exp.invalid.items()):
            if seen[ref] != 1:
                self.bad(
                    "dead.count", f"{ref[0]} {ref[1]}", f"{kind}: {seen[ref]} dead letters, want 1"
                )

    # --- (4) streams -----------------------------------------------------------------
    async def streams(self) -> None:
        for stream in self.keys.streams:
            info: dict[Any, Any] = await self.redis.xinfo_stream(stream)
            last = _text(info["last-generated-id"])
            groups = {_text(g["name"]): g for g in await self.redis.xinfo_groups(stream)}
            for name in GROUPS:
                g = groups.get(name)
                if g is None:
                    self.bad("stream.group_missing", f"{stream} {name}", "no such group")
                    continue
                if int(g["pending"]):
                    self.bad("stream.pending", f"{stream} {name}", f"{g['pending']} pending")
                if _text(g["last-delivered-id"]) != last:
                    self.bad(
                        "stream.unread",
                        f"{stream} {name}",
                        f"delivered up to {_text(g['last-delivered-id'])}, stream at {last}",
                    )
        for sid, s in sorted(self.exp.sessions.items()):
            if s.ended and (n := await self.redis.xlen(self.keys.changes(sid))):
                self.bad("stream.changes_left", sid, f"{n} changes not applied to PostgreSQL")

    # --- (5) Redis keys --------------------------------------------------------------
    async def redis_keys(self) -> None:
        for name, cap in self.maxlen.items():
            stream = getattr(self.keys, name)
            n = await self.redis.xlen(stream)
            if n > cap * 1.1 + 200:  # XADD MAXLEN ~ trims whole nodes
                self.bad("redis.stream_cap", stream, f"{n} entries, cap {cap}")
        async for raw in self.redis.scan_iter(count=1000):
            key = raw.decode(errors="replace")
            if "{cx-" in key:
                self.bad("redis.invalid_state", key, "state kept for an invalid entry")
            elif key.startswith(TTL_KEYS) and await self.redis.ttl(raw) == -1:
                self.bad("redis.no_ttl", key, "a key the contract gives a TTL lives forever")
        for raw in await self.redis.zrange(self.keys.sessions, 0, -1):
            sid = raw.decode(errors="replace")
            if sid not in self.exp.sessions:
                self.bad("redis.unknown_session", sid, "in mm:sessions, never sent")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
