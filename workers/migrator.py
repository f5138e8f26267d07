"""The migrator: consumer group `migrator`, lane = session; and its periodic work.

On `session_started` it upserts the live session's row. On `session_ended` it waits
(in-process, `Retry`) until the coverage group has processed every entry of that session
up to and including the end, then migrates the session (the flow is workers/migration/).
If fills the end counted are still missing, the session is tracked in
`mm:migration:waiting` and the entry is acked: a waiting session never holds the stream's
retention floor. `keep_in_step` is the process' periodic work beside the consumer
(workers/migration/in_step.py): waiting sessions, and every ended session's later
changes into PostgreSQL. `mmops up` and `mmops migrator` run it (mmops/commands/run.py).
"""

from __future__ import annotations

import asyncio

import asyncpg

from base.logs import one_line
from events import Event, SessionEnded, SessionStarted
from storage.postgres import TRANSIENT_PG_ERRORS
from workers.migration import MigrationParts, MigrationStatus, Migrator
from workers.migration.in_step import InStep
from workers.runtime import Entry, Lane, Retry, Transient

GROUP = "migrator"
COVERAGE_WAIT_MS = 500


class MigratorHandler:
    """Upserts live sessions, migrates ended ones, keeps them in step afterwards."""

    group = GROUP

    def __init__(self, migrator: Migrator) -> None:
        self.migrator = migrator
        self.in_step = InStep(migrator)

    @classmethod
    async def create(cls, parts: MigrationParts) -> MigratorHandler:
        return cls(await Migrator.open(parts))

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The migrator's PostgreSQL pool (None in DRY_RUN)."""
        return self.migrator.pool

    async def close(self) -> None:
        await self.migrator.close()

    def lane(self, event: Event) -> Lane:
        return (event.session_id,)

    async def handle(self, entry: Entry, event: Event) -> None:
        try:
            match event:
                case SessionStarted():
                    await self.migrator.record_started(event)
                case SessionEnded():
                    await self.on_session_ended(entry, event)
                case _:
                    return
        except TRANSIENT_PG_ERRORS as exc:
            raise Transient(f"PostgreSQL unavailable: {one_line(exc)}") from exc

    async def on_session_ended(self, entry: Entry, event: SessionEnded) -> None:
        sid = event.session_id
        reason = await self.migrator.backlog(sid, entry.id)
        if reason:
            raise Retry(reason, after_ms=COVERAGE_WAIT_MS)
        result = await self.migrator.migrate(
            sid, wait_for_coverage=False, expected_fills=event.fills
        )
        if result.status is MigrationStatus.WAITING_FILLS and self.pool is not None:
            await self.in_step.wait_for(sid, entry.id, event.ts, event.fills)

    async def keep_in_step(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """The periodic work until `stop` (with `once`, one tick: `--drain`)."""
        if once:
            await self.in_step.tick()
        else:
            await self.in_step.run(stop)
