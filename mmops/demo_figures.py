"""The figures `mmops demo` reports: coverage latency, P&L per pair, fills after the end.

The last one is the point of a session's whole life in PostgreSQL (docs/contract.md §3
Migration): TPs of a session that ended fill later, and each of those fills is in
PostgreSQL too. A fill is after its session's end when its event comes after the
session_ended entry in the stream (the stream id recorded with each fill).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal

import asyncpg

from storage import postgres
from storage.keys import Keys
from storage.redis import AnyRedis, as_text, entries_of, stream_id
from storage.session_reader import decode_fill_row, scan_values

CENT = Decimal("0.01")
EXACT = Context(prec=50)


async def latencies(redis: AnyRedis, keys: Keys) -> list[int]:
    """Coverage latency of every TP created (mm:takeprofits `latency_ms`), sorted."""
    out: list[int] = []
    cursor = "-"
    while True:
        page = entries_of(await redis.xrange(keys.takeprofits, min=cursor, max="+", count=1000))
        for _, fields in page:
            raw = fields.get(b"latency_ms", b"")
            if fields.get(b"type") == b"created" and raw.isdigit():
                out.append(int(raw))
        if len(page) < 1000:
            return sorted(out)
        cursor = "(" + page[-1][0]


async def pnl_rows(database_url: str) -> list[list[object]]:
    """P&L per pair over the demo's sessions, from session_pairs, and a TOTAL row."""
    conn = await postgres.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT symbol, count(*) AS sessions, sum(total_orders) AS orders,
                      sum(total_fills) AS fills, sum(round_trips) AS round_trips,
                      sum(total_fees) AS fees, sum(total_pnl) AS pnl
               FROM session_pairs GROUP BY symbol ORDER BY symbol"""
        )
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    table: list[list[object]] = [
        [
            r["symbol"],
            r["sessions"],
            r["orders"],
            r["fills"],
            r["round_trips"],
            money(r["fees"]),
            money(r["pnl"]),
        ]
        for r in rows
    ]
    if rows:
        table.append(
            [
                "TOTAL",
                "",
                sum(r["orders"] for r in rows),
                sum(r["fills"] for r in rows),
                sum(r["round_trips"] for r in rows),
                money(sum((r["fees"] for r in rows), Decimal(0))),
                money(sum((r["pnl"] for r in rows), Decimal(0))),
            ]
        )
    return table


def money(value: Decimal | None) -> Decimal:
    """To the cent, half-even (the explicit context's rounding)."""
    return (value or Decimal(0)).quantize(CENT, rounding=ROUND_HALF_EVEN, context=EXACT)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@dataclass(frozen=True, slots=True)
class AfterEnd:
    """One session's fills after its end: recorded in Redis, and how many of them are in
    PostgreSQL; and whether PostgreSQL has it closed (no open position, no live TP)."""

    session_id: str
    in_redis: int
    in_postgres: int
    closed: bool
    live_tps: int


async def after_end(
    redis: AnyRedis, keys: Keys, database_url: str, sids: list[str]
) -> list[AfterEnd]:
    """Per session, its fills after the end in Redis and in PostgreSQL."""
    later: dict[str, list[str]] = {}
    for sid in sids:
        end = await redis.hget(keys.session(sid), "end_id")
        if end is None:
            continue
        end_id = stream_id(as_text(end))
        ids: list[str] = []
        async for chunk in scan_values(redis, keys.fills(sid)):
            for raw in chunk:
                row = decode_fill_row(raw)
                if row.entry and stream_id(row.entry) > end_id:
                    ids.append(row.fill_id)
        later[sid] = ids
    conn = await postgres.connect(database_url)
    try:
        out = []
        for sid, ids in later.items():
            stored = await conn.fetchval(
                """SELECT count(*)::int FROM fills WHERE session_id = $1
                   AND (id = ANY($2::text[]) OR id = ANY($3::text[]))""",
                sid,
                ids,
                [f"{sid}:{i}" for i in ids],
            )
            row = await conn.fetchrow(
                """SELECT s.closed_at IS NOT NULL AS closed,
                          (SELECT count(*) FROM orders o WHERE o.session_id = s.id
                           AND o.is_take_profit
                           AND o.status IN ('live', 'pending', 'partially_filled'))::int AS live
                   FROM sessions s WHERE s.id = $1""",
                sid,
            )
            closed, live = (bool(row["closed"]), int(row["live"])) if row else (False, 0)
            out.append(AfterEnd(sid, len(ids), int(stored), closed, live))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return out
