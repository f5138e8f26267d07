"""Migrating one ended session, and the Migrator that every caller goes through.

`migrate_session` checks the session (completed? state still there? ended? coverage
done? all fills recorded?), streams its Redis state (storage/session_reader.py) into
one PostgreSQL transaction (storage/session_writer.py) and only then marks it
`migration:completed:{sid}`. A `Migrator` owns the PostgreSQL pool and upgrades the
schema when it opens; the migrator handler (workers/migrator.py), the sweeper's safety
net and `mmops migrate` each hold one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import asyncpg

from base import logs
from base.clock import Clock, iso
from base.logs import one_line
from base.settings import Settings
from events import SessionStarted
from storage import changes as change_log
from storage import schema
from storage import session_reader as reader
from storage.keys import Keys
from storage.postgres import create_pool
from storage.redis import AnyRedis
from storage.session_reader import SessionHeader, ms_to_datetime
from storage.session_writer import SessionWriter, upsert_started
from workers.migration.readiness import coverage_backlog
from workers.migration.result import MigrationResult, MigrationStatus
from workers.migration.session import SessionMigration
from workers.migration.sink import Discard, Mode

log = logs.get("mmops.migrator")


class MigrationParts(Protocol):
    """What migration needs from the process (mmops.app.App has it all)."""

    settings: Settings
    redis: AnyRedis
    keys: Keys
    clock: Clock

    async def alert(self, kind: str, message: str, **figures: object) -> None: ...


class Migrator:
    """The migration flow's entry point: the PostgreSQL pool (none in DRY_RUN) and the session
    checks around `migrate_session`."""

    def __init__(self, parts: MigrationParts, pool: asyncpg.Pool | None) -> None:
        self.parts = parts
        self.pool = pool

    @classmethod
    async def open(cls, parts: MigrationParts, *, pool_size: int | None = None) -> Migrator:
        """Open the pool and upgrade the schema (not in DRY_RUN: no database writes then)."""
        settings = parts.settings
        if settings.dry_run:
            return cls(parts, None)
        pool = await create_pool(
            settings.database_url, max_size=pool_size or settings.migration_pool_size
        )
        try:
            async with pool.acquire() as conn:
                await schema.upgrade(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(parts, pool)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def migrate(
        self,
        sid: str,
        *,
        force: bool = False,
        wait_for_coverage: bool = True,
        expected_fills: int | None = None,
    ) -> MigrationResult:
        return await migrate_session(
            self.parts,
            self.pool,
            sid,
            force=force,
            wait_for_coverage=wait_for_coverage,
            expected_fills=expected_fills,
        )

    async def backlog(self, sid: str, upto: str) -> str | None:
        """Why the session is not ready up to stream entry `upto` (coverage_backlog); None once
        it is."""
        return await coverage_backlog(self.parts.redis, self.parts.keys, sid, upto)

    async def record_started(self, event: SessionStarted) -> None:
        """A live session's row from its session_started (nothing in DRY_RUN)."""
        if self.pool is not None:
            await upsert_started(self.pool, event.session_id, event.pairs, ms_to_datetime(event.ts))


async def migrate_session(
    parts: MigrationParts,
    pool: asyncpg.Pool | None,
    sid: str,
    *,
    force: bool = False,
    dry_run: bool | None = None,
    wait_for_coverage: bool = True,
    expected_fills: int | None = None,
) -> MigrationResult:
    """Persist one ended session to PostgreSQL in one transaction, then mark it completed.

    The trader's count of the fills before the end (`expected_fills`, default the one its
    session_ended carried) is checked against the fills recorded whose event precedes the
    end: while fewer are recorded, the session waits (WAITING_FILLS) up to
    MIGRATION_GRACE_MINUTES after its end; then it is migrated with what there is and
    `migration_incomplete` is alerted, once. Fills after the end are not counted: they are
    the session's life after it (the sync keeps PostgreSQL in step with them).

    `force` re-migrates a completed session (inserting nothing twice) and skips the count
    check. `dry_run` (default: DRY_RUN) computes everything and writes nothing.
    `wait_for_coverage` checks that the coverage group has processed the session's events
    up to its end. PostgreSQL connection errors propagate
    (storage.postgres.TRANSIENT_PG_ERRORS); the session is then not marked and can be re-run.
    """
    started = time.perf_counter()
    dry = parts.settings.dry_run if dry_run is None else dry_run
    header = await reader.read_header(parts.redis, parts.keys, sid)
    if header.completed_at and not force:
        await parts.redis.zrem(parts.keys.sessions_ended, sid)
        return MigrationResult(sid, MigrationStatus.ALREADY, f"completed at {header.completed_at}")
    if not header.has_state:
        return await _state_missing(parts, pool, sid, dry)
    if header.ended_at is None:
        return MigrationResult(sid, MigrationStatus.NOT_ENDED, "no session_ended recorded for it")
    if wait_for_coverage:
        reason = (
            await coverage_backlog(parts.redis, parts.keys, sid, header.end_id)
            if header.end_id
            else "the coverage group has not recorded the session's end"
        )
        if reason:
            return MigrationResult(sid, MigrationStatus.WAITING, reason)
    expected = header.fills_expected if expected_fills is None else expected_fills
    if expected is not None and header.fills_expected != expected:
        header = dataclasses.replace(header, fills_expected=expected)
    now = parts.clock.now_ms()
    count = Count(expected, header, now, parts.settings) if expected is not None else None
    if count is not None and not force and header.fills < count.expected and count.in_grace:
        return _waiting(sid, header.fills, count)  # not even every fill is recorded yet
    check = count is not None and not force
    if dry:
        plan = SessionMigration(parts.redis, parts.keys, header, now, Mode.DRY)
        await plan.run(Discard(), count_before_end=check)
        result = plan.result(MigrationStatus.DRY_RUN, _ms_since(started))
        log.info(
            "dry run: would write session %s: %d fills, %d orders, %d pairs, P&L %s",
            sid,
            result.fills,
            result.orders,
            result.pairs,
            result.pnl,
            extra={"session_id": sid},
        )
        return result
    if pool is None:
        raise ValueError("migrate_session needs a PostgreSQL pool unless dry_run")
    try:
        async with pool.acquire() as conn:
            try:
                plan = await _write(
                    conn, parts, header, now, staging=False, count=count if check else None
                )
            except asyncpg.UniqueViolationError as exc:
                # an id another session already uses (stored qualified by the staging path), or a
                # duplicate the in-memory filter could not see (the same number written differently)
                log.info(
                    "session %s: %s; writing it through the staging path",
                    sid,
                    one_line(exc),
                    extra={"session_id": sid},
                )
                plan = await _write(
                    conn, parts, header, now, staging=True, count=count if check else None
                )
    except _Short as short:  # rolled back: some fills before the end are still missing
        assert count is not None
        return _waiting(sid, short.before_end, count)
    tally = plan.tally
    reason = ""
    if check and count is not None and tally.fills_before_end != count.expected:
        # alerted by the transaction that migrated the session first (several migrators)
        reason = await _count_differs(parts, sid, tally.fills_before_end, count, plan.first)
    result = dataclasses.replace(
        plan.result(MigrationStatus.MIGRATED, _ms_since(started)), reason=reason
    )
    await _mark_completed(parts, sid, now, result)
    await change_log.trim(parts.redis, parts.keys, sid, tally.sync_cursor)
    log.info(
        "migrated session %s: %d fills (%d new), %d orders (%d new) in %d ms%s",
        sid,
        result.fills,
        result.new_fills,
        result.orders,
        result.new_orders,
        result.duration_ms,
        " (fast path)" if result.fast else "",
        extra={"session_id": sid},
    )
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class Count:
    """The trader's count of the fills before a session's end, and the grace period for it."""

    expected: int
    header: SessionHeader
    now: int
    settings: Settings

    @property
    def deadline(self) -> int:
        """Epoch ms: MIGRATION_GRACE_MINUTES after the end."""
        assert self.header.ended_at is not None
        return self.header.ended_at + int(self.settings.migration_grace_minutes * 60_000)

    @property
    def in_grace(self) -> bool:
        return self.now < self.deadline


class _Short(Exception):
    """Fewer fills before the end than the trader counted, within the grace period."""

    def __init__(self, before_end: int) -> None:
        super().__init__(before_end)
        self.before_end = before_end


def _waiting(sid: str, recorded: int, count: Count) -> MigrationResult:
    return MigrationResult(
        sid,
        MigrationStatus.WAITING_FILLS,
        f"{recorded} of the {count.expected} fills before the end recorded; waiting up to "
        f"MIGRATION_GRACE_MINUTES after the end (until {iso(count.deadline)})",
    )


async def _count_differs(
    parts: MigrationParts, sid: str, before_end: int, count: Count, first: bool
) -> str:
    """Migrated anyway: after the grace period with fills missing (alerted), or with more
    fills before the end than the trader counted (logged: waiting cannot change that)."""
    if before_end > count.expected:
        reason = f"{before_end} fills recorded before the end, the trader counted {count.expected}"
        log.warning("session %s: %s", sid, reason, extra={"session_id": sid})
        return reason
    reason = (
        f"{before_end} of the {count.expected} fills before the end recorded after "
        "MIGRATION_GRACE_MINUTES; migrated what there is"
    )
    if not first:
        return reason
    await parts.alert(
        "migration_incomplete",
        f"session {sid}: {reason} (a fill recorded later reaches PostgreSQL by the sync)",
        session_id=sid,
        recorded=before_end,
        expected=count.expected,
    )
    return reason


async def _write(
    conn: asyncpg.Connection,
    parts: MigrationParts,
    header: SessionHeader,
    now: int,
    *,
    staging: bool,
    count: Count | None = None,
) -> SessionMigration:
    """One transaction (under the session's lock). With `count`, it is rolled back (_Short)
    if fewer fills before the end are recorded than counted while the grace period lasts."""
    redis, keys, sid = parts.redis, parts.keys, header.session_id
    async with SessionWriter(conn, sid, staging=staging) as writer:
        plan = SessionMigration(
            redis, keys, header, now, Mode.FAST if writer.fast else Mode.STAGING
        )
        plan.first = writer.first
        # under the lock, before the state is read: every change logged up to here is in it
        plan.tally.sync_cursor = await change_log.last_id(redis, keys, sid)
        await plan.run(writer, count_before_end=count is not None)
        tally = plan.tally
        if count is not None and tally.fills_before_end < count.expected and count.in_grace:
            raise _Short(tally.fills_before_end)
        if not writer.fast:  # PostgreSQL de-duplicated: counts and sums as the tables hold them
            tally.new_fills = await writer.merge_fills()
            await writer.derive_orders(tally.pairs, sorted(tally.tp_ids), sorted(tally.event_ids))
            tally.new_orders = await writer.merge_orders()
            await writer.merge_positions()
            tally.use_totals(await writer.totals())
        await writer.finish(tally.session_row(), tally.pair_rows())
    return plan


async def _state_missing(
    parts: MigrationParts, pool: asyncpg.Pool | None, sid: str, dry: bool
) -> MigrationResult:
    if pool is not None and not dry:
        migrated = await pool.fetchval("SELECT migrated_at FROM sessions WHERE id = $1", sid)
        if migrated is not None:  # migrated earlier; only the Redis marker was lost
            # the marker, then the index (its own slot on a cluster): a crash in between
            # leaves the session in the index, and the next look at it removes it
            await parts.redis.set(
                parts.keys.migration_completed(sid), iso(int(migrated.timestamp() * 1000))
            )
            await parts.redis.zrem(parts.keys.sessions_ended, sid)
            return MigrationResult(
                sid, MigrationStatus.ALREADY, f"in PostgreSQL since {migrated.isoformat()}"
            )
    reason = "no session hash, fills or positions in Redis and not migrated"
    await parts.alert("migration_state_missing", f"session {sid}: {reason}", session_id=sid)
    return MigrationResult(sid, MigrationStatus.MISSING, reason)


async def _mark_completed(
    parts: MigrationParts, sid: str, now: int, result: MigrationResult
) -> None:
    """The session's marker and figures in one MULTI (its slot), then the global index and
    wait list: a crash in between leaves it in mm:sessions:ended, which the next look at it
    (completed already) removes."""
    keys = parts.keys
    async with parts.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.migration_completed(sid), iso(now))
        pipe.hset(
            keys.metrics_migration(sid),
            mapping={
                "orders": result.orders,
                "fills": result.fills,
                "duration_ms": result.duration_ms,
                "duplicates": result.duplicates,
            },
        )
        await pipe.execute()
    await parts.redis.zrem(keys.sessions_ended, sid)
    await parts.redis.hdel(keys.migration_waiting, sid)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
