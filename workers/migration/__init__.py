"""The migration flow: every ended session in PostgreSQL — complete, exactly once, fast, and
in step with it after its end (docs/architecture.md "A session's whole life").

Callers go through a `Migrator` (run.py): the migrator handler (workers/migrator.py) on
`session_ended`, the sweeper's safety net for overdue sessions, and `mmops migrate`.

The modules:

- run.py: `Migrator` (the pool, the schema upgrade) and `migrate_session` (checks, the fills before
  the end and the grace period, one transaction, cursor, completed marker)
- sync.py: `sync_session`: an ended session's later changes (changes:{sid}) into PostgreSQL, exactly
  once
- in_step.py: `InStep`: the migrator process' periodic work (waiting sessions, sessions to sync)
- readiness.py: `coverage_backlog`: has the coverage group processed the session up to its end
- session.py: `SessionMigration`: the three COPY streams of one session into a sink
- positions.py, fills.py, orders.py: the three passes: TP orders and round trips, fills, the
  trader's orders
- tally.py: what the passes add up, and the `sessions`/`session_pairs` rows
- figures.py: per-pair figures, round trips, Decimal from stored text, rounding
- sink.py: where rows go (`Sink`, `Discard`) and on which path (`Mode`)
- result.py: `MigrationResult`, `MigrationStatus`
"""

from storage.postgres import TRANSIENT_PG_ERRORS
from workers.migration.readiness import coverage_backlog
from workers.migration.result import MigrationResult, MigrationStatus
from workers.migration.run import MigrationParts, Migrator, migrate_session

__all__ = [
    "TRANSIENT_PG_ERRORS",
    "MigrationParts",
    "MigrationResult",
    "MigrationStatus",
    "Migrator",
    "coverage_backlog",
    "migrate_session",
]
