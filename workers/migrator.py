"""The migrator: consumer group `migrator`, lane = session.

On `session_started` it upserts the live session's row; on `session_ended` it waits
until the coverage group has processed every entry of that session up to and
including the end, then migrates the session (the flow is workers/migration/). A
fill-count mismatch or a session not ready yet is retried with backoff.
"""

from __future__ import annotations

import asyncpg

from base.logs import one_line
from events import Event, SessionEnded, SessionStarted
from storage.postgres import TRANSIENT_PG_ERRORS
from workers.migration import MigrationParts, MigrationStatus, Migrator
from workers.runtime import Entry, Lane, Retry, Transient

GROUP = "migrator"
COVERAGE_WAIT_MS = 500
INCOMPLETE_BACKOFF_MS = (5_000, 600_000)  # first retry, ceiling


class MigratorHandler:
    """Upserts live sessions, migrates ended ones."""

    group = GROUP

    def __init__(self, migrator: Migrator) -> None:
        self.migrator = migrator
        self._attempts: dict[str, int] = {}

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
        if result.status in (MigrationStatus.INCOMPLETE, MigrationStatus.WAITING):
            attempts = self._attempts[sid] = self._attempts.get(sid, 0) + 1
            first, ceiling = INCOMPLETE_BACKOFF_MS
            raise Retry(result.reason, after_ms=min(ceiling, first * 2 ** (attempts - 1)))
        self._attempts.pop(sid, None)
