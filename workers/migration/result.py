"""What one session's migration came to: its status and figures (logged, tabled by
`mmops migrate`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


class MigrationStatus(enum.StrEnum):
    MIGRATED = "migrated"  # written now (or re-written with force: nothing new is inserted twice);
    # `reason` says so when fills the trader counted were still missing after the grace period
    DRY_RUN = "dry_run"  # computed, nothing written
    ALREADY = "already"  # migration:completed is set (or PostgreSQL says it was migrated)
    WAITING = "waiting"  # the coverage group has not processed the session's events yet
    WAITING_FILLS = "waiting_fills"  # fewer fills before the end than the trader counted, in grace
    NOT_ENDED = "not_ended"  # no session_ended recorded
    MISSING = "missing"  # the session's Redis state is gone and it is not migrated (alerted)
    FAILED = "failed"  # an error (set by callers that report errors as results: mmops migrate)


@dataclass(frozen=True, slots=True)
class MigrationResult:
    session_id: str
    status: MigrationStatus
    reason: str = ""
    fills: int = 0  # the session's rows in PostgreSQL (dry run: rows it would have)
    orders: int = 0
    pairs: int = 0
    pnl: Decimal = ZERO
    fees: Decimal = ZERO
    duplicates: int = 0  # fills recorded twice under different ids, stored once
    new_fills: int = 0  # rows this run added
    new_orders: int = 0
    fast: bool = False  # written by COPY straight into the tables
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status in (
            MigrationStatus.MIGRATED,
            MigrationStatus.DRY_RUN,
            MigrationStatus.ALREADY,
        )
