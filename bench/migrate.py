"""Benchmark of the migrator's PostgreSQL path against the usual ways of inserting rows.

Builds ONE session of N fills over P pairs directly in Redis, in the exact layout the
coverage worker writes (storage.ledger.encode_fill, trading.positions.encode_position,
the engine's tp_order hashes), then measures in one run:

* mmops' migration end to end (`migrate_session`: Redis read, rows, COPY, commit), in
  a child process whose peak RSS is read from getrusage(RUSAGE_SELF).ru_maxrss;
* its PostgreSQL write phase alone: the same COPY streams and SQL, replayed from memory;
* (a) one awaited INSERT per row, on a sample; (b) asyncpg executemany with ON CONFLICT
  DO NOTHING, on a sample; (c) bare COPY of all N fills into an empty table with no
  constraints or indexes, both as asyncpg records (binary) and as pre-encoded text.

Schema `bench_migrate` in DATABASE_URL's database and Redis keys under `bench-migrate:` are
dropped at the end. Usage: python bench/migrate.py [--fills 1000000] [--pairs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from base.clock import Clock  # noqa: E402
from base.settings import Settings  # noqa: E402
from bench.migrate_baselines import (  # noqa: E402
    _replay,
    bare_copy,
    executemany,
    fill_record,
    one_insert_per_row,
    truncate,
)
from bench.migrate_session import SID, SYMBOLS, all_fills, populate  # noqa: E402
from events.schema import Fill  # noqa: E402
from mmops.reporting import render_table  # noqa: E402
from storage import postgres, schema  # noqa: E402
from storage import session_reader as reader  # noqa: E402
from storage.keys import Keys  # noqa: E402
from storage.postgres import create_pool  # noqa: E402
from storage.session_writer import FILL_COLUMNS, SessionWriter  # noqa: E402
from workers.migration import migrate_session  # noqa: E402
from workers.migration.session import SessionMigration  # noqa: E402
from workers.migration.sink import Mode  # noqa: E402

SCHEMA = "bench_migrate"
PREFIX = "bench-migrate:"  # not under `bench:`, where bench/coverage.py keeps its keys


# --- measurements -------------------------------------------------------------------------


@dataclass
class BenchParts:
    """migrate_session's Parts without an exchange (the bench needs none)."""

    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    clock: Clock

    async def alert(self, kind: str, message: str, **figures: object) -> None:
        print(f"alert {kind}: {message}", file=sys.stderr)


class _Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def bench_settings(redis_url: str, database_url: str) -> Settings:
    return Settings(
        redis_url=redis_url, database_url=with_schema(database_url, SCHEMA), key_prefix=PREFIX
    )


def with_schema(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&search_path={name}" if parts.query else f"search_path={name}"
    return urlunsplit(parts._replace(query=query))


async def child_e2e(redis_url: str, database_url: str) -> None:
    """The migration end to end, in this (child) process; prints seconds and RSS as JSON."""
    settings = bench_settings(redis_url, database_url)
    redis = aioredis.Redis.from_url(settings.redis_url)
    pool = await create_pool(settings.database_url, max_size=2)
    parts = BenchParts(settings, redis, Keys(PREFIX), _Clock())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = await migrate_session(parts, pool, SID, wait_for_coverage=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await pool.close()
    await redis.aclose()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_kb": before,
                "rss_peak_kb": peak,
                "status": str(result.status),
                "fills": result.fills,
                "orders": result.orders,
                "fast": result.fast,
                "pnl": str(result.pnl),
            }
        )
    )


class _Collect:
    """A sink that keeps the COPY streams in memory (to time the write phase alone)."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, Sequence[str], list[bytes]]] = []

    async def copy(self, table: str, columns: Sequence[str], source: AsyncIterator[bytes]) -> None:
        self.copies.append((table, columns, [chunk async for chunk in source]))

    async def insert_fills(self, source: AsyncIterator[bytes]) -> list[str]:
        """The fills the in-memory filter flagged "maybe seen": kept for the replay; the bench
        session has no duplicates, so all of them will be stored."""
        chunks = [chunk async for chunk in source]
        self.copies.append(("candidates", FILL_COLUMNS, chunks))
        return [line.split(b"\t", 1)[0].decode() for chunk in chunks for line in chunk.splitlines()]


async def write_phase(
    conn: asyncpg.Connection, redis: aioredis.Redis, keys: Keys
) -> tuple[float, int, int]:
    """(seconds, fills, orders) of the fast path's transaction, fed from memory."""
    header = await reader.read_header(redis, keys, SID)
    plan = SessionMigration(redis, keys, header, int(time.time() * 1000), Mode.FAST)
    collected = _Collect()
    await plan.run(collected)
    await truncate(conn)
    started = time.perf_counter()
    async with SessionWriter(conn, SID) as writer:
        assert writer.fast
        for table, columns, chunks in collected.copies:
            if table == "candidates":
                await writer.insert_fills(_replay(chunks))
            else:
                await writer.copy(table, columns, _replay(chunks))
        await writer.finish(plan.tally.session_row(), plan.tally.pair_rows())
    return time.perf_counter() - started, plan.tally.totals_fills, plan.tally.totals_orders


# --- the run -------------------------------------------------------------------------------


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "-"


async def main(args: argparse.Namespace) -> int:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    database_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    keys = Keys(PREFIX)
    redis = aioredis.Redis.from_url(redis_url)
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await admin.execute(f"CREATE SCHEMA {SCHEMA}")
    conn = await postgres.connect(with_schema(database_url, SCHEMA))
    try:
        await clean_redis(redis)
        await schema.upgrade(conn)
        print(
            f"building {args.fills:,} fills over {args.pairs} pairs in Redis ...", file=sys.stderr
        )
        started = time.perf_counter()
        n_positions, n_tps = await populate(
            redis, keys, args.fills, args.pairs, args.fills_per_order
        )
        print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        print("mmops migration, end to end (child process) ...", file=sys.stderr)
        await admin.execute("CHECKPOINT")
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--child-e2e",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url},
        )
        out, err = await child.communicate()
        if child.returncode != 0:
            print(err.decode(), file=sys.stderr)
            return 1
        e2e = json.loads(out.decode().strip().splitlines()[-1])
        print("mmops write phase alone ...", file=sys.stderr)
        write_s, w_fills, w_orders = await write_phase(conn, redis, keys)

        sample = [
            fill_record(f)
            for f in _first(
                all_fills(args.fills, args.pairs, args.fills_per_order),
                max(args.insert_sample, args.executemany_sample),
            )
        ]
        print(f"(a) one INSERT per row, {args.insert_sample:,} rows ...", file=sys.stderr)
        single_s = await one_insert_per_row(conn, sample[: args.insert_sample])
        print(f"(b) executemany, {args.executemany_sample:,} rows ...", file=sys.stderr)
        many_s = await executemany(conn, sample[: args.executemany_sample])
        del sample
        print("(c) bare COPY ...", file=sys.stderr)
        bare_binary_s, bare_text_s = await bare_copy(
            conn, args.fills, args.pairs, args.fills_per_order
        )
    finally:
        await conn.close()
        if not args.keep:
            await admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            await clean_redis(redis)
        await admin.close()
        await redis.aclose()

    n = args.fills
    e2e_rows = e2e["fills"] + e2e["orders"]
    w_rows = w_fills + w_orders
    rows = [
        (
            "mmops migrate_session, end to end (Redis read included)",
            e2e_rows,
            e2e["fills"],
            e2e["seconds"],
        ),
        ("mmops PostgreSQL write phase alone (COPY, one transaction)", w_rows, w_fills, write_s),
        (
            f"(a) one awaited INSERT per row (sample of {args.insert_sample:,})",
            args.insert_sample,
            args.insert_sample,
            single_s,
        ),
        (
            f"(b) executemany ON CONFLICT DO NOTHING (sample of {args.executemany_sample:,})",
            args.executemany_sample,
            args.executemany_sample,
            many_s,
        ),
        ("(c1) bare COPY, no constraints: asyncpg records (binary)", n, n, bare_binary_s),
        ("(c2) bare COPY, no constraints: pre-encoded text", n, n, bare_text_s),
    ]
    print()
    print(
        f"mmops migration benchmark: {n:,} fills over {args.pairs} pairs, {n_positions:,} "
        f"positions ({args.fills_per_order} buy fills + 1 TP fill each), {n_tps:,} TP orders"
    )
    header = ("measure", "rows", "fills", "seconds", "rows/s", "fills/s")
    print(
        render_table(
            header,
            [
                (name, f"{r:,}", f"{f:,}", f"{s:.2f}", _rate(r, s), _rate(f, s))
                for name, r, f, s in rows
            ],
            rule=True,
        )
    )
    write_rate = w_rows / write_s
    print()
    print(
        f"end to end: {e2e['fills'] / e2e['seconds']:,.0f} fills/s (target >= 100,000); "
        f"fast path: {e2e['fast']}, P&L {e2e['pnl']}"
    )
    print(
        f"write phase rows/s vs (c2) bare text COPY: {write_rate / (n / bare_text_s):.2f}x; "
        f"vs (c1) bare records COPY: {write_rate / (n / bare_binary_s):.2f}x; "
        f"vs (b) executemany: {write_rate / (args.executemany_sample / many_s):.1f}x; "
        f"vs (a) INSERT per row: {write_rate / (args.insert_sample / single_s):.0f}x"
    )
    print(
        f"peak RSS of the migrator process: {e2e['rss_peak_kb'] / 1024:.0f} MB "
        f"(before migrating: {e2e['rss_before_kb'] / 1024:.0f} MB; child process, "
        f"getrusage(RUSAGE_SELF).ru_maxrss)"
    )
    print(
        f"reproduce: python bench/migrate.py --fills {n} --pairs {args.pairs} "
        f"--fills-per-order {args.fills_per_order}"
    )
    return 0


def _first(items: Iterator[Fill], n: int) -> Iterator[Fill]:
    for i, item in enumerate(items):
        if i >= n:
            return
        yield item


async def clean_redis(redis: aioredis.Redis) -> None:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{PREFIX}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--fills", type=int, default=1_000_000)
    p.add_argument(
        "--pairs", type=int, default=10, choices=range(1, len(SYMBOLS) + 1), metavar="1-10"
    )
    p.add_argument(
        "--fills-per-order", type=int, default=4, help="buy fills per buy order (position)"
    )
    p.add_argument("--insert-sample", type=int, default=20_000)
    p.add_argument("--executemany-sample", type=int, default=100_000)
    p.add_argument("--keep", action="store_true", help="keep the schema and Redis keys afterwards")
    p.add_argument("--child-e2e", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse()
    if ns.child_e2e:
        asyncio.run(child_e2e(os.environ["REDIS_URL"], os.environ["DATABASE_URL"]))
        sys.exit(0)
    sys.exit(asyncio.run(main(ns)))
