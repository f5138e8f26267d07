"""One session's migration pass: its Redis state streamed as three COPYs into a sink.

`run` streams TP orders (the positions pass, which also yields every applied fill id
and the P&L of every sell), then fills (the fills pass), then the trader's orders
(the orders pass). The figures for `sessions`/`session_pairs` add up in the tally on
the way. Public for bench/migrate.py.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from storage.keys import Keys
from storage.session_reader import SessionHeader
from storage.session_writer import FILL_COLUMNS, ORDER_COLUMNS
from workers.migration.fills import FillsPass
from workers.migration.orders import trader_order_lines
from workers.migration.positions import tp_order_lines
from workers.migration.result import MigrationResult, MigrationStatus
from workers.migration.sink import Mode, Sink
from workers.migration.tally import SessionTally


class SessionMigration:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, header: SessionHeader, now: int, mode: Mode
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.mode = mode
        self.tally = SessionTally(header, now)

    @property
    def fast(self) -> bool:
        return self.mode is Mode.FAST

    async def run(self, sink: Sink) -> None:
        """Stream the rows to `sink`. On the staging path the orders known only from fills
        and the per-pair counts and sums are then left to SQL over the stored fills
        (SessionWriter.derive_orders, .totals); otherwise they are worked out here."""
        await sink.copy("orders", ORDER_COLUMNS, tp_order_lines(self.redis, self.keys, self.tally))
        fills = FillsPass(self.redis, self.keys, self.tally, self.mode)
        await sink.copy("fills", FILL_COLUMNS, fills.lines())
        await fills.settle(sink)
        orders = trader_order_lines(
            self.redis, self.keys, self.tally, derive=self.mode is not Mode.STAGING
        )
        await sink.copy("orders", ORDER_COLUMNS, orders)

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
