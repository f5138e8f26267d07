"""A session's figures as SQL sums over its stored rows (fills, orders, positions).

After a session's end the sync (workers/migration/sync.py) rewrites only the rows a change
touched, then recomputes the touched pairs' figures here and the session's totals as sums
over its pairs, in the same transaction as the change and its cursor: applying a change
twice gives the same figures. Sums are exact; the caller rounds (workers/migration/figures.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal

import asyncpg

ZERO = Decimal(0)
# a fill's fee in quote: a fee charged in the base asset is valued at the fill's price
FEE_IN_QUOTE = "CASE WHEN fee_currency = split_part(symbol, '/', 1) THEN fee * price ELSE fee END"


@dataclass(slots=True)
class PairSums:
    """One pair's exact sums over a session's stored rows."""

    orders: int = 0
    fills: int = 0
    fees: Decimal = ZERO
    volume: Decimal = ZERO
    pnl: Decimal = ZERO
    round_trips: int = 0
    wins: int = 0
    spread_sum: Decimal = ZERO
    trade_fees: Decimal = ZERO
    open_positions: int = 0
    uncovered_positions: int = 0


async def pair_sums(
    conn: asyncpg.Connection, session_id: str, symbols: Collection[str]
) -> dict[str, PairSums]:
    """Per pair (only `symbols`), the sums over the session's fills, orders and positions."""
    wanted = sorted(symbols)
    out = {symbol: PairSums() for symbol in wanted}
    for row in await conn.fetch(
        f"""SELECT symbol, count(*)::int AS n, sum({FEE_IN_QUOTE}) AS fees,
                   sum(price * quantity) AS volume
            FROM fills WHERE session_id = $1 AND symbol = ANY($2::text[]) GROUP BY symbol""",
        session_id,
        wanted,
    ):
        sums = out[row["symbol"]]
        sums.fills, sums.fees, sums.volume = row["n"], row["fees"], row["volume"]
    for row in await conn.fetch(
        """SELECT symbol, count(*)::int AS n FROM orders
           WHERE session_id = $1 AND symbol = ANY($2::text[]) GROUP BY symbol""",
        session_id,
        wanted,
    ):
        out[row["symbol"]].orders = row["n"]
    for row in await conn.fetch(
        """SELECT symbol, sum(realized_pnl) AS pnl, sum(round_trips)::int AS round_trips,
                  sum(wins)::int AS wins, sum(spread_sum) AS spread_sum,
                  sum(trade_fees) AS trade_fees,
                  (count(*) FILTER (WHERE open_quantity > 0))::int AS open,
                  (count(*) FILTER (WHERE uncovered))::int AS uncovered
           FROM positions WHERE session_id = $1 AND symbol = ANY($2::text[]) GROUP BY symbol""",
        session_id,
        wanted,
    ):
        sums = out[row["symbol"]]
        sums.pnl, sums.round_trips, sums.wins = row["pnl"], row["round_trips"], row["wins"]
        sums.spread_sum, sums.trade_fees = row["spread_sum"], row["trade_fees"]
        sums.open_positions, sums.uncovered_positions = row["open"], row["uncovered"]
    return out


async def finish_sync(
    conn: asyncpg.Connection,
    session_id: str,
    *,
    pairs: Sequence[str],
    recorded_fills: int,
    cursor: str,
    now: dt.datetime,
) -> dt.datetime | None:
    """The session's totals as sums over its pairs, its cursor, and `closed_at` (set when no
    position is open and no TP is on the book, kept once set; cleared if one opens again).
    Returns closed_at."""
    closed: dt.datetime | None = await conn.fetchval(
        """WITH t AS (
               SELECT coalesce(sum(total_orders), 0)::int AS orders,
                      coalesce(sum(total_fills), 0)::int AS fills,
                      coalesce(sum(total_pnl), 0) AS pnl, coalesce(sum(total_fees), 0) AS fees,
                      coalesce(sum(total_volume), 0) AS volume,
                      coalesce(sum(open_positions), 0)::int AS open,
                      coalesce(sum(uncovered_positions), 0)::int AS uncovered
               FROM session_pairs WHERE session_id = $1),
           live AS (
               SELECT EXISTS (SELECT 1 FROM positions WHERE session_id = $1
                              AND (open_quantity > 0 OR on_book > 0)) AS open)
           UPDATE sessions s SET total_orders = t.orders, total_fills = t.fills,
               total_pnl = t.pnl, total_fees = t.fees, total_volume = t.volume,
               open_positions = t.open, uncovered_positions = t.uncovered,
               duplicate_fills = greatest(0, $2 - t.fills), pairs = $3, pair_count = $4,
               sync_cursor = $5, synced_at = $6,
               closed_at = CASE WHEN live.open THEN NULL ELSE coalesce(s.closed_at, $6) END
           FROM t, live WHERE s.id = $1
           RETURNING s.closed_at""",
        session_id,
        recorded_fills,
        list(pairs),
        len(pairs),
        cursor,
        now,
    )
    return closed


async def sync_state(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    """The session's row as the sync needs it: migrated_at, sync_cursor, pairs, closed_at."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT migrated_at, sync_cursor, pairs, closed_at FROM sessions WHERE id = $1",
        session_id,
    )
    return row


async def open_sessions(
    conn: asyncpg.Connection | asyncpg.Pool, closed_since: dt.datetime
) -> list[asyncpg.Record]:
    """Migrated sessions not closed, or closed since `closed_since` (a late change can still
    reach them while their Redis state is kept): id, sync_cursor, closed_at."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT id, sync_cursor, closed_at FROM sessions
           WHERE migrated_at IS NOT NULL AND ended_at IS NOT NULL
             AND (closed_at IS NULL OR closed_at >= $1)
           ORDER BY ended_at, id""",
        closed_since,
    )
    return rows
