"""Keeping an ended session in step: its changes after the end, into PostgreSQL exactly once.

The feed is the session's changes stream (storage/changes.py): each entry names the
positions, fills and trader orders one committed change touched. A sync step, in ONE
PostgreSQL transaction under the session's advisory lock (the migration's own):

1. reads the cursor (`sessions.sync_cursor`) and the entries after it;
2. reads the touched positions, fills and `order` events from Redis as they are now,
   and writes them the staging way (workers/migration/session.py `run_touched`): fills
   inserted unless stored (ON CONFLICT DO NOTHING), TP orders and the trader's orders
   upserted with their status never moving backwards (storage/session_writer.py), the
   trader's orders known only from fills derived again from the stored fills, the
   touched positions' figures replaced;
3. recomputes the touched pairs' figures and the session's totals as SQL sums
   (storage/session_totals.py), sets `closed_at` when nothing is open or on the book,
   and moves the cursor to the last entry read;

then, after the commit, trims the stream up to the cursor. Exactly once: the cursor moves
in the transaction that applies its entries, so a crash before the commit applies
nothing and the entries are read again; a crash after it (before the trim) leaves
entries at or before the cursor, which are never read again (and trimmed next time).
Re-applying an entry anyway would change nothing: every row is written from the current
state, every figure recomputed from the tables.

A session migrated before the sync existed (`sync_cursor` NULL) is re-migrated whole
(`migrate_session(force=True)`), which sets its cursor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import localcontext

import asyncpg

from base import logs
from base.faults import crash_point
from storage import changes as change_log
from storage import session_reader as reader
from storage import session_totals as totals
from storage.session_reader import ms_to_datetime
from storage.session_writer import PairRow, SessionWriter, write_pairs
from workers.migration.figures import EXACT, average_spread, money
from workers.migration.result import MigrationStatus
from workers.migration.run import MigrationParts, migrate_session
from workers.migration.session import SessionMigration
from workers.migration.sink import Mode

log = logs.get("mmops.migrator")

BATCH = 1000  # changes entries per transaction


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync of a session did."""

    session_id: str
    entries: int = 0  # changes applied now
    new_fills: int = 0
    orders: int = 0  # order rows added or changed
    positions: int = 0  # position rows changed
    closed: bool = False  # closed_at is set
    cursor: str = ""
    note: str = ""

    def plus(self, other: SyncResult) -> SyncResult:
        return dataclasses.replace(
            other,
            entries=self.entries + other.entries,
            new_fills=self.new_fills + other.new_fills,
            orders=self.orders + other.orders,
            positions=self.positions + other.positions,
            note=other.note or self.note,
        )


async def sync_session(
    parts: MigrationParts, pool: asyncpg.Pool, sid: str, *, batch: int = BATCH
) -> SyncResult:
    """Apply every change of `sid` after its cursor, `batch` entries per transaction."""
    done = SyncResult(sid)
    whole = False
    while True:
        step = await _step(parts, pool, sid, batch)
        if step is None:  # migrated before the sync existed: once whole, which sets the cursor
            if whole:
                return dataclasses.replace(done, note="no sync cursor after a whole migration")
            whole = True
            result = await migrate_session(parts, pool, sid, force=True, wait_for_coverage=False)
            done = dataclasses.replace(done, note=f"re-migrated whole: {result.status}")
            if result.status is not MigrationStatus.MIGRATED:
                return done
            continue
        done = done.plus(step)
        if step.entries < batch:
            return done


async def _step(
    parts: MigrationParts, pool: asyncpg.Pool, sid: str, batch: int
) -> SyncResult | None:
    redis, keys = parts.redis, parts.keys
    now = parts.clock.now_ms()
    async with pool.acquire() as conn:
        async with SessionWriter(conn, sid, staging=True) as writer:  # the session's lock
            state = await totals.sync_state(conn, sid)
            if state is None or state["migrated_at"] is None:
                return SyncResult(sid, note="not migrated yet")
            if state["sync_cursor"] is None:
                return None
            cursor = str(state["sync_cursor"])
            touched = await change_log.read(redis, keys, sid, cursor, batch)
            if not touched.entries:
                applied = SyncResult(sid, cursor=cursor, closed=state["closed_at"] is not None)
            else:
                applied = await _apply(parts, writer, sid, touched, list(state["pairs"]), now)
        crash_point("sync_committed")  # fault tests: killed between the commit and the trim
    await change_log.trim(redis, keys, sid, applied.cursor)
    if applied.entries:
        log.info(
            "session %s in step: %d changes, %d new fills, %d orders, %d positions%s",
            sid,
            applied.entries,
            applied.new_fills,
            applied.orders,
            applied.positions,
            "; closed" if applied.closed else "",
            extra={"session_id": sid},
        )
    return applied


async def _apply(
    parts: MigrationParts,
    writer: SessionWriter,
    sid: str,
    touched: change_log.Changes,
    stored_pairs: list[str],
    now: int,
) -> SyncResult:
    header = await reader.read_header(parts.redis, parts.keys, sid)
    listed = tuple(stored_pairs) + tuple(p for p in header.pairs if p not in stored_pairs)
    header = dataclasses.replace(header, listed_pairs=listed)
    plan = SessionMigration(parts.redis, parts.keys, header, now, Mode.STAGING)
    traders, symbols = await plan.run_touched(writer, touched)
    tally = plan.tally
    new_fills = await writer.merge_fills()
    await writer.derive_orders(
        tally.pairs, sorted(tally.tp_ids), sorted(tally.event_ids), only=sorted(traders)
    )
    orders = await writer.merge_orders()
    positions = await writer.merge_positions()
    sums = await totals.pair_sums(writer.conn, sid, symbols)
    with localcontext(EXACT):
        rows = [_pair_row(symbol, s) for symbol, s in sums.items()]
    await write_pairs(writer.conn, sid, rows)
    closed = await totals.finish_sync(
        writer.conn,
        sid,
        pairs=tally.pairs,
        recorded_fills=header.fills,
        cursor=touched.last,
        now=ms_to_datetime(now),
    )
    return SyncResult(
        sid,
        entries=touched.entries,
        new_fills=new_fills,
        orders=orders,
        positions=positions,
        closed=closed is not None,
        cursor=touched.last,
    )


def _pair_row(symbol: str, s: totals.PairSums) -> PairRow:
    return PairRow(
        symbol=symbol,
        total_orders=s.orders,
        total_fills=s.fills,
        total_pnl=money(s.pnl),
        total_fees=money(s.fees),
        avg_spread=average_spread(s.spread_sum, s.round_trips),
        round_trips=s.round_trips,
        wins=s.wins,
        trade_fees=money(s.trade_fees),
        total_volume=money(s.volume),
        open_positions=s.open_positions,
        uncovered_positions=s.uncovered_positions,
    )
