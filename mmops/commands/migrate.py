"""`mmops migrate`: persist ended sessions to PostgreSQL (the old run-migration script's interface).

Without --session, the sessions that ended within --lookback-hours are taken (from
`mm:sessions:ended` and the session hashes), oldest first, in concurrent batches of
--batch-size. Sessions already completed are skipped unless --force. --dry-run prints
what would be written; --stats compares each session's counts in Redis and PostgreSQL.
Exit status 1 when a session could not be migrated (the table says why).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import asyncpg

from base.clock import Clock, SystemClock
from base.logs import one_line
from base.settings import Settings
from mmops import runner
from mmops.commands.arguments import positive_int
from mmops.commands.report import money
from mmops.progress import Progress
from mmops.reporting import render_table
from storage import redis as redis_store
from storage import session_reader as reader
from storage.alerts import write_alert
from storage.keys import Keys
from storage.postgres import TRANSIENT_PG_ERRORS, create_pool
from storage.redis import AnyRedis
from workers.migration import MigrationResult, MigrationStatus, Migrator


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "migrate",
        help="persist ended sessions to PostgreSQL (idempotent)",
        description="Persist ended sessions to PostgreSQL. Sessions already completed are skipped "
        "unless --force. Exit status 1 when a session could not be migrated.",
    )
    cmd.add_argument("--session", action="append", metavar="ID", help="this session (repeatable)")
    cmd.add_argument(
        "--lookback-hours",
        type=_hours,
        metavar="H",
        help="sessions ended within the last H hours (default MIGRATION_LOOKBACK_HOURS)",
    )
    cmd.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="sessions migrated concurrently (default MIGRATION_BATCH_SIZE)",
    )
    cmd.add_argument("--limit", type=positive_int, metavar="N", help="at most N sessions")
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; print what would be written per session",
    )
    cmd.add_argument(
        "--force",
        action="store_true",
        help="re-migrate completed sessions (nothing is inserted twice) and migrate "
        "sessions whose recorded fill count differs from the trader's",
    )
    cmd.add_argument(
        "--stats",
        action="store_true",
        help="print per-session counts in Redis and PostgreSQL; migrate nothing",
    )
    cmd.set_defaults(func=_migrate)


def _hours(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of hours > 0, got {text!r}")
    return value


def _migrate(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"dry_run": True} if args.dry_run else {}
    return runner.run(lambda settings: main(settings, args), **overrides)


@dataclass
class CliParts:
    """What the migration needs, without an exchange (the CLI places no orders)."""

    settings: Settings
    redis: AnyRedis
    keys: Keys
    clock: Clock

    async def alert(self, kind: str, message: str, **figures: object) -> None:
        await write_alert(
            self.redis,
            self.keys,
            self.clock.now_ms(),
            kind,
            message,
            maxlen=self.settings.alerts_maxlen,
            **figures,
        )


async def main(settings: Settings, args: argparse.Namespace) -> int:
    redis = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
    parts = CliParts(settings, redis, Keys.of(settings), SystemClock())
    pool: asyncpg.Pool | None = None
    migrator: Migrator | None = None
    try:
        sids = await _sessions(parts, args)
        if args.stats:
            pool = await create_pool(settings.database_url, max_size=2)
            print(await stats_table(parts, pool, sids))
            return 0
        if not sids:
            print("no sessions to migrate")
            return 0
        batch = args.batch_size or settings.migration_batch_size
        migrator = await Migrator.open(parts, pool_size=batch + 1)
        results = await migrate_all(migrator, sids, batch=batch, force=args.force)
    finally:
        if pool is not None:
            await pool.close()
        if migrator is not None:
            await migrator.close()
        await redis.aclose()
    print(results_table(results, dry_run=settings.dry_run))
    failed = [r for r in results if not r.ok]
    return 1 if failed else 0


async def _sessions(parts: CliParts, args: argparse.Namespace) -> list[str]:
    if args.session:
        sids = list(dict.fromkeys(args.session))
    else:
        hours = args.lookback_hours or parts.settings.migration_lookback_hours
        since = parts.clock.now_ms() - int(hours * 3_600_000)
        sids = [sid for sid, _ in await reader.ended_sessions(parts.redis, parts.keys, since)]
    return sids[: args.limit] if args.limit else sids


async def migrate_all(
    migrator: Migrator, sids: list[str], *, batch: int, force: bool
) -> list[MigrationResult]:
    """Migrate in batches of `batch` concurrent sessions; a failure is a result, not an exit."""
    results: list[MigrationResult] = []
    progress = Progress(len(sids), "dry run" if migrator.parts.settings.dry_run else "migrating")

    async def one(sid: str) -> MigrationResult:
        started = time.perf_counter()
        try:
            result = await migrator.migrate(sid, force=force)
        except TRANSIENT_PG_ERRORS as exc:
            result = MigrationResult(
                sid, MigrationStatus.FAILED, f"PostgreSQL unavailable: {one_line(exc)}"
            )
        except Exception as exc:  # one bad session must not stop the others; reported in the table
            result = MigrationResult(
                sid,
                MigrationStatus.FAILED,
                f"{type(exc).__name__}: {one_line(exc)}",
                duration_ms=int((time.perf_counter() - started) * 1000),
            )
        progress.advance()
        return result

    try:
        for start in range(0, len(sids), batch):
            results += await asyncio.gather(*(one(sid) for sid in sids[start : start + batch]))
    finally:
        progress.close()
    return results


def results_table(results: list[MigrationResult], *, dry_run: bool) -> str:
    rows = []
    for r in results:
        status = "skipped" if r.status is MigrationStatus.ALREADY else str(r.status)
        counted = r.status in (MigrationStatus.MIGRATED, MigrationStatus.DRY_RUN)
        rows.append(
            [
                r.session_id,
                status,
                r.fills if counted else "",
                r.orders if counted else "",
                r.pairs if counted else "",
                money(r.pnl) if counted else "",
                money(r.fees) if counted else "",
                r.new_fills if r.status is MigrationStatus.MIGRATED else "",
                r.duplicates if counted else "",
                r.duration_ms if counted else "",
                r.reason,
            ]
        )
    header = [
        "SESSION",
        "STATUS",
        "FILLS",
        "ORDERS",
        "PAIRS",
        "P&L",
        "FEES",
        "NEW FILLS",
        "DUPLICATES",
        "MS",
        "NOTE",
    ]
    title = (
        "dry run: nothing written; what each session would have in PostgreSQL" if dry_run else ""
    )
    counts = Counter(
        "skipped (completed)" if r.status is MigrationStatus.ALREADY else str(r.status)
        for r in results
    )
    summary = f"{len(results)} sessions: " + ", ".join(
        f"{n} {status}" for status, n in sorted(counts.items())
    )
    return "\n".join(filter(None, [title, render_table(header, rows, rule=True), summary]))


async def stats_table(parts: CliParts, pool: asyncpg.Pool, sids: list[str]) -> str:
    """Per session: counts in Redis (fills, TP orders, positions) next to PostgreSQL's."""
    db = {
        row["id"]: row
        for row in await pool.fetch(
            """SELECT x.id, s.migrated_at, s.duplicate_fills,
                      (SELECT count(*) FROM fills f WHERE f.session_id = x.id)::int AS fills,
                      (SELECT count(*) FROM orders o WHERE o.session_id = x.id)::int AS orders,
                      (SELECT count(*) FROM orders o WHERE o.session_id = x.id
                                                      AND o.is_take_profit)::int AS tp_orders
               FROM unnest($1::text[]) AS x(id) LEFT JOIN sessions s ON s.id = x.id""",
            sids,
        )
    }
    rows = []
    for sid in sids:
        header = await reader.read_header(parts.redis, parts.keys, sid)
        row = db.get(sid)
        migrated = row is not None and row["migrated_at"] is not None
        pg_fills = row["fills"] if row is not None else 0
        dups = row["duplicate_fills"] if migrated and row is not None else 0
        pg_tp = row["tp_orders"] if row is not None else 0
        if not migrated:
            verdict = "not migrated"
        elif not header.has_state:
            verdict = "ok (Redis state gone)"
        elif pg_fills + dups == header.fills and pg_tp >= header.tp_orders:
            verdict = "ok"
        else:
            verdict = "differs"
        rows.append(
            [
                sid,
                "yes" if header.completed_at else "no",
                header.fills,
                pg_fills,
                dups,
                header.tp_orders,
                pg_tp,
                row["orders"] if row is not None else 0,
                header.positions,
                verdict,
            ]
        )
    return render_table(
        [
            "SESSION",
            "COMPLETED",
            "REDIS FILLS",
            "PG FILLS",
            "DUPLICATES",
            "REDIS TP",
            "PG TP",
            "PG ORDERS",
            "POSITIONS",
            "CHECK",
        ],
        rows,
        rule=True,
    )
