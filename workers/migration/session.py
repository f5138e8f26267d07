"""One session's migration pass: its Redis state streamed as COPYs into a sink.

`run` streams TP orders (the positions pass, which also yields every applied fill id,
each position's figures and the P&L of every sell), the positions' rows, then fills (the
fills pass), then the trader's orders (the orders pass). The figures for
`sessions`/`session_pairs` add up in the tally on the way. `run_touched` does the same
for the ids a run of changes touched (the sync after the end, workers/migration/sync.py).
Public for bench/migrate.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from decimal import localcontext

from storage import changes as change_log
from storage import session_reader as reader
from storage.changes import Changes
from storage.keys import Keys
from storage.redis import AnyRedis, as_text
from storage.session_reader import SessionHeader, decode_fill_row, decode_position_row, gc_paused
from storage.session_writer import FILL_COLUMNS, ORDER_COLUMNS, POSITION_COLUMNS, join_unescaped
from workers.migration.figures import EXACT
from workers.migration.fills import FETCH, FillsPass
from workers.migration.orders import order_event_lines, trader_order_lines
from workers.migration.positions import position, tp_order_lines
from workers.migration.result import MigrationResult, MigrationStatus
from workers.migration.sink import Mode, Sink
from workers.migration.tally import SessionTally


class SessionMigration:
    def __init__(
        self, redis: AnyRedis, keys: Keys, header: SessionHeader, now: int, mode: Mode
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.mode = mode
        self.tally = SessionTally(header, now)
        self.first = False  # the session's first migration (set from its writer)

    @property
    def fast(self) -> bool:
        return self.mode is Mode.FAST

    async def run(self, sink: Sink, *, count_before_end: bool = False) -> None:
        """Stream the rows to `sink`. On the staging path the orders known only from fills
        and the per-pair counts and sums are then left to SQL over the stored fills
        (SessionWriter.derive_orders, .totals); otherwise they are worked out here. With
        `count_before_end`, the tally counts the fills whose event precedes the end."""
        t = self.tally
        await sink.copy("orders", ORDER_COLUMNS, tp_order_lines(self.redis, self.keys, t))
        await sink.copy("positions", POSITION_COLUMNS, _drained(t.position_lines))
        fills = FillsPass(self.redis, self.keys, t, self.mode)
        end_id, end_ts = t.header.end_id, t.header.ended_at
        if count_before_end and end_id and end_ts is not None:
            logged = await change_log.logged_fills(self.redis, self.keys, t.sid)
            fills.count_before(end_id, end_ts, logged)
        await sink.copy("fills", FILL_COLUMNS, fills.lines())
        await fills.settle(sink)
        orders = trader_order_lines(self.redis, self.keys, t, derive=self.mode is not Mode.STAGING)
        await sink.copy("orders", ORDER_COLUMNS, orders)

    async def run_touched(self, sink: Sink, touched: Changes) -> tuple[list[str], set[str]]:
        """Stream the rows a run of changes touched (staging path: PostgreSQL merges them).
        Returns the trader's order ids among them (SQL derives their rows from the stored
        fills) and the symbols touched."""
        assert self.mode is Mode.STAGING
        t, redis, keys = self.tally, self.redis, self.keys
        symbols: set[str] = set()
        ids = sorted(touched.positions)
        raws = await redis.hmget(keys.positions(t.sid), ids) if ids else []
        lines: list[str] = []
        with gc_paused(), localcontext(EXACT):
            for raw in raws:
                if isinstance(raw, bytes):
                    row = decode_position_row(raw)
                    symbols.add(row.symbol)
                    position(t, row, lines)
        t.fill_ids = []
        await sink.copy("orders", ORDER_COLUMNS, _once(join_unescaped(lines, len(ORDER_COLUMNS))))
        await sink.copy("positions", POSITION_COLUMNS, _drained(t.position_lines))
        fills = FillsPass(redis, keys, t, self.mode)
        rows = []
        async for chunk in reader.fills_by_id(redis, keys, t.sid, sorted(touched.fills), FETCH):
            rows += [decode_fill_row(raw) for raw in chunk if raw is not None]
        await sink.copy("fills", FILL_COLUMNS, _once(fills.chunk(rows)))
        symbols.update(f.symbol for f in rows)
        candidates = touched.orders | {f.order_id for f in rows if f.order_id not in t.tp_ids}
        traders = await _not_ours(redis, keys, t.sid, candidates)
        events = order_event_lines(redis, keys, t, traders, symbols)
        await sink.copy("orders", ORDER_COLUMNS, events)
        return traders, symbols

    def result(self, status: MigrationStatus, duration_ms: int) -> MigrationResult:
        row = self.tally.session_row()
        return MigrationResult(
            row.id,
            status,
            fills=row.total_fills,
            orders=row.total_orders,
            pairs=len(row.pairs),
            pnl=row.total_pnl,
            fees=row.total_fees,
            duplicates=row.duplicate_fills,
            new_fills=self.tally.new_fills,
            new_orders=self.tally.new_orders,
            fast=self.fast,
            duration_ms=duration_ms,
        )


async def _not_ours(redis: AnyRedis, keys: Keys, sid: str, order_ids: Iterable[str]) -> list[str]:
    """The ids that are not one of the session's TP orders (the trader's), sorted."""
    ids = sorted(order_ids)
    if not ids:
        return []
    ours = await redis.smismember(keys.tp_orders(sid), ids)
    return [oid for oid, mine in zip(ids, ours, strict=True) if not int(as_text(mine))]


async def _drained(lines: list[str]) -> AsyncIterator[bytes]:
    """The collected lines, in chunks, emptying the list as they go out."""
    step = 20_000
    while lines:
        chunk = lines[-step:]
        del lines[-step:]
        yield "".join(chunk).encode()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data
