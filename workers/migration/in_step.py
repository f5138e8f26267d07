"""The migrator process' periodic work: sessions waiting at their end, and ended sessions in step.

Every tick (MIGRATION_SYNC_SECONDS / 5, at most 1 s):

1. **Waiting sessions** (`mm:migration:waiting`, written by the migrator handler when a
   session's end came with fewer fills recorded than the trader counted): each is tried
   again; it is migrated once the fills are there or its grace period is over
   (workers/migration/run.py), and leaves the hash then. The session_ended entry itself
   was acked at once, so it never holds the stream's retention floor.
2. **Sessions in step**: PostgreSQL lists the migrated sessions not closed (or closed
   recently: a late change can still come while their Redis state is kept); one pipelined
   read gives the newest entry of each one's changes stream; every session with an
   entry is synced (workers/migration/sync.py). Both lists live in Redis and PostgreSQL,
   so a restarted migrator picks up where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field

import orjson

from base import logs
from base.logs import one_line
from storage import changes as change_log
from storage import session_totals as totals
from storage.postgres import TRANSIENT_PG_ERRORS
from storage.redis import TRANSIENT_REDIS_ERRORS, as_text
from storage.session_reader import ms_to_datetime
from workers.migration.result import MigrationResult, MigrationStatus
from workers.migration.run import Migrator
from workers.migration.sync import SyncResult, sync_session

log = logs.get("mmops.migrator")

STAY_WAITING = (MigrationStatus.WAITING, MigrationStatus.WAITING_FILLS)
MAX_TICK_S = 1.0
MIN_TICK_S = 0.05


@dataclass
class Tick:
    """What one tick did."""

    migrated: list[MigrationResult] = field(default_factory=list)  # waiting sessions migrated
    waiting: list[MigrationResult] = field(default_factory=list)  # still waiting
    synced: list[SyncResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class InStep:
    def __init__(self, migrator: Migrator) -> None:
        self.migrator = migrator
        settings = migrator.parts.settings
        self.interval = min(MAX_TICK_S, max(MIN_TICK_S, float(settings.migration_sync_seconds) / 5))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set."""
        while not stop.is_set():
            try:
                await self.tick()
            except (*TRANSIENT_REDIS_ERRORS, *TRANSIENT_PG_ERRORS) as exc:  # next tick retries
                log.warning("migrator's periodic work: %s; retrying", one_line(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self) -> Tick:
        out = Tick()
        if self.migrator.pool is None:  # DRY_RUN: no database writes
            return out
        await self._waiting(out)
        await self._in_step(out)
        return out

    # --- 1. sessions waiting at their end ------------------------------------------
    async def wait_for(self, sid: str, end_id: str, ended_at: int, expected: int | None) -> None:
        """Track a session whose end was acked while fills it counted are missing."""
        parts = self.migrator.parts
        record = {"end_id": end_id, "ended_at": ended_at, "expected": expected}
        await parts.redis.hset(parts.keys.migration_waiting, sid, orjson.dumps(record))

    async def _waiting(self, out: Tick) -> None:
        parts = self.migrator.parts
        try:
            raw = await parts.redis.hgetall(parts.keys.migration_waiting)
        except TRANSIENT_REDIS_ERRORS as exc:
            out.errors.append(f"waiting sessions not read: {one_line(exc)}")
            return
        for key, value in sorted(raw.items()):
            sid = as_text(key)
            expected = orjson.loads(value).get("expected")
            try:
                result = await self.migrator.migrate(sid, expected_fills=expected)
            except Exception as exc:  # one session's failure must not stop the others
                out.errors.append(f"{sid}: {type(exc).__name__}: {one_line(exc)}")
                log.warning("waiting session %s: %s", sid, one_line(exc), extra={"session_id": sid})
                continue
            if result.status in STAY_WAITING:
                out.waiting.append(result)
                continue
            out.migrated.append(result)
            await parts.redis.hdel(parts.keys.migration_waiting, sid)

    # --- 2. ended sessions kept in step ---------------------------------------------
    async def _in_step(self, out: Tick) -> None:
        parts, pool = self.migrator.parts, self.migrator.pool
        assert pool is not None
        retention = dt.timedelta(days=float(parts.settings.session_retention_days))
        try:
            rows = await totals.open_sessions(
                pool, ms_to_datetime(parts.clock.now_ms()) - retention
            )
            sids = [str(row["id"]) for row in rows]
            newest = await change_log.last_ids(parts.redis, parts.keys, sids) if sids else {}
        except Exception as exc:
            out.errors.append(f"sessions to sync not listed: {type(exc).__name__}: {one_line(exc)}")
            log.warning("sessions to sync not listed: %s", one_line(exc))
            return
        for sid in sids:
            if newest.get(sid) is None:  # nothing in its changes stream
                continue
            try:
                out.synced.append(await sync_session(parts, pool, sid))
            except Exception as exc:  # one session's failure must not stop the others
                out.errors.append(f"{sid}: {type(exc).__name__}: {one_line(exc)}")
                log.warning("sync of %s: %s", sid, one_line(exc), extra={"session_id": sid})
