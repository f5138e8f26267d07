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
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from base.clock import Clock, iso  # noqa: E402
from base.settings import Settings  # noqa: E402
from events.schema import Fill  # noqa: E402
from mmops.reporting import render_table  # noqa: E402
from storage import postgres, schema  # noqa: E402
from storage import session_reader as reader  # noqa: E402
from storage.keys import Keys  # noqa: E402
from storage.ledger import encode_fill  # noqa: E402
from storage.postgres import create_pool  # noqa: E402
from storage.session_writer import FILL_COLUMNS, SessionWriter, TimestampText, copy_line  # noqa: E402
from trading.client_ids import client_id  # noqa: E402
from trading.positions import Buy, Close, Position, Step, StepStatus, encode_position  # noqa: E402
from workers.migration import migrate_session  # noqa: E402
from workers.migration.session import SessionMigration  # noqa: E402
from workers.migration.sink import Mode  # noqa: E402

SCHEMA = "bench_migrate"
PREFIX = "bench-migrate:"  # not under `bench:`, where bench/coverage.py keeps its keys
SID = "bench-1"
T0 = 1_763_700_000_000
SYMBOLS = (
    ("BTC/USD", "64000.5", "0.1", "0.0100"),
    ("ETH/USD", "3100.25", "0.01", "0.150"),
    ("SOL/USD", "142.37", "0.01", "3.5"),
    ("XRP/USD", "2.1534", "0.00001", "250"),
    ("ADA/USD", "0.45123", "0.000001", "1200"),
    ("DOGE/USD", "0.163421", "0.0000001", "3000"),
    ("DOT/USD", "3.0741", "0.0001", "150"),
    ("LTC/USD", "88.12", "0.01", "5.25"),
    ("LINK/USD", "13.754", "0.001", "40"),
    ("AVAX/USD", "14.88", "0.01", "33"),
)
TAKER, MAKER, TARGET = Decimal("0.0026"), Decimal("0.0025"), Decimal("0.005")


# --- the session, in the coverage worker's layout ----------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    fills: list[Fill]
    position: Position
    tp: dict[str, str] | None  # the tp_order hash


def build(n_fills: int, pairs: int, per_order: int) -> Iterator[Built]:
    """Positions of `per_order` buy fills and one TP fill each, until N fills; ids in time order."""
    made = 0
    k = 0
    while made < n_fills:
        symbol, base, tick, qty = SYMBOLS[k % pairs]
        tick_d = Decimal(tick)
        price = (Decimal(base) * (1 + Decimal(k % 50) / 10_000) / tick_d).to_integral_value(
            ROUND_DOWN
        ) * tick_d
        quantity = Decimal(qty)
        oid = f"o-{k:07d}"
        buys_n = min(per_order, n_fills - made)
        fills: list[Fill] = []
        buys: list[Buy] = []
        for _ in range(buys_n):
            ts = T0 + made * 10
            fee = (price * quantity * TAKER).quantize(Decimal("1e-8"), ROUND_UP)
            fills.append(
                Fill(
                    session_id=SID,
                    fill_id=f"f-{made:08d}",
                    order_id=oid,
                    symbol=symbol,
                    side="buy",
                    price=price,
                    quantity=quantity,
                    fee=fee,
                    ts=ts,
                )
            )
            buys.append(Buy(f"f-{made:08d}", price, quantity, fee, ts))
            made += 1
        position = Position(
            v=len(buys) + 2,
            id=oid,
            session_id=SID,
            symbol=symbol,
            opened_at=buys[0].ts,
            buys=tuple(buys),
        )
        tp: dict[str, str] | None = None
        if made < n_fills:  # a TP covering the position, filled by one sell
            total = quantity * len(buys)
            tp_price = (position.unit_cost * (1 + TARGET) / (1 - MAKER) / tick_d).to_integral_value(
                ROUND_UP
            ) * tick_d
            tp_id = f"T{k:07d}-BENCH"
            ts = T0 + made * 10
            fee = (tp_price * total * MAKER).quantize(Decimal("1e-8"), ROUND_UP)
            fills.append(
                Fill(
                    session_id=SID,
                    fill_id=f"f-{made:08d}",
                    order_id=tp_id,
                    symbol=symbol,
                    side="sell",
                    price=tp_price,
                    quantity=total,
                    fee=fee,
                    ts=ts,
                )
            )
            cid = client_id(SID, oid, 1)
            step = Step(
                n=1,
                client_id=cid,
                qty=total,
                price=tp_price,
                tier=1,
                status=StepStatus.FILLED,
                claimed_at=buys[-1].ts + 5,
                order_id=tp_id,
                acked_at=buys[-1].ts + 40,
                fills=(Close(f"f-{made:08d}", total, tp_price, fee, ts),),
            )
            position = position.with_step(step)
            tp = {
                "session_id": SID,
                "position": oid,
                "symbol": symbol,
                "price": str(tp_price),
                "quantity": str(total),
                "tier": "1",
                "client_id": cid,
                "created_at": iso(buys[-1].ts + 40),
                "status": "filled",
                "step": "1",
                "replaces": "",
                "filled": str(total),
            }
            made += 1
        k += 1
        yield Built(fills, position, tp)


async def populate(
    redis: aioredis.Redis, keys: Keys, n_fills: int, pairs: int, per_order: int
) -> tuple[int, int]:
    """Write the session to Redis (pipelined); returns (positions, tp orders)."""
    fills: dict[str, bytes] = {}
    positions: dict[str, bytes] = {}
    tps: dict[str, dict[str, str]] = {}
    n_positions = n_tps = 0
    last_ts = T0

    async def flush() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            if fills:
                pipe.hset(keys.fills(SID), mapping=fills)  # type: ignore[arg-type]
            if positions:
                pipe.hset(keys.positions(SID), mapping=positions)  # type: ignore[arg-type]
            for oid, record in tps.items():
                pipe.hset(keys.tp_order(SID, oid), mapping=record)  # type: ignore[arg-type]
            if tps:
                pipe.sadd(keys.tp_orders(SID), *tps)
            await pipe.execute()
        fills.clear()
        positions.clear()
        tps.clear()

    for built in build(n_fills, pairs, per_order):
        for fill in built.fills:
            fills[fill.fill_id] = encode_fill(fill)
            last_ts = fill.ts
        positions[built.position.id] = encode_position(built.position)
        n_positions += 1
        if built.tp is not None:
            step = built.position.steps[0]
            tps[step.order_id] = built.tp
            n_tps += 1
        if len(fills) >= 20_000:
            await flush()
    await flush()
    symbols = [s for s, *_ in SYMBOLS[:pairs]]
    end = last_ts + 1000
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            keys.session(SID),
            mapping={
                "started_at": T0,
                "pairs": ",".join(symbols),
                "ended_at": end,
                "end_id": f"{end}-0",
                "fills_expected": n_fills,
            },
        )
        pipe.sadd(keys.pairs(SID), *symbols)
        pipe.zadd(keys.sessions, {SID: end})
        pipe.zadd(keys.sessions_ended, {SID: end})
        await pipe.execute()
    return n_positions, n_tps


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


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def truncate(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE fills, orders, sessions, session_pairs, positions")
    await conn.execute("CHECKPOINT")


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


def fill_record(fill: Fill) -> tuple[object, ...]:
    return (
        fill.fill_id,
        fill.session_id,
        fill.order_id,
        fill.symbol,
        fill.side,
        fill.quantity,
        fill.price,
        fill.fee,
        fill.fee_currency,
        reader.ms_to_datetime(fill.ts),
        None,
        fill.order_type,
    )


def all_fills(n: int, pairs: int, per_order: int) -> Iterator[Fill]:
    for built in build(n, pairs, per_order):
        yield from built.fills


async def one_insert_per_row(conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> float:
    await truncate(conn)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(FILL_COLUMNS)))
    sql = f"INSERT INTO fills ({', '.join(FILL_COLUMNS)}) VALUES ({placeholders})"
    started = time.perf_counter()
    async with conn.transaction():
        for record in records:
            await conn.execute(sql, *record)
    return time.perf_counter() - started


async def executemany(conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> float:
    await truncate(conn)
    sql = (
        f"INSERT INTO fills ({', '.join(FILL_COLUMNS)}) VALUES "
        f"({', '.join(f'${i + 1}' for i in range(len(FILL_COLUMNS)))}) ON CONFLICT DO NOTHING"
    )
    started = time.perf_counter()
    async with conn.transaction():
        await conn.executemany(sql, records)
    return time.perf_counter() - started


async def bare_copy(
    conn: asyncpg.Connection, n: int, pairs: int, per_order: int
) -> tuple[float, float]:
    """(seconds as asyncpg records, seconds as pre-encoded text) into an unconstrained table."""
    await conn.execute("DROP TABLE IF EXISTS bare_fills")
    await conn.execute("CREATE TABLE bare_fills (LIKE fills EXCLUDING ALL)")
    records = [fill_record(f) for f in all_fills(n, pairs, per_order)]
    await conn.execute("CHECKPOINT")
    started = time.perf_counter()
    async with conn.transaction():
        await conn.copy_records_to_table("bare_fills", records=records, columns=list(FILL_COLUMNS))
    binary = time.perf_counter() - started
    del records
    ts = TimestampText()
    text = [
        "".join(
            copy_line(
                (
                    f.fill_id,
                    f.session_id,
                    f.order_id,
                    f.symbol,
                    f.side,
                    str(f.quantity),
                    str(f.price),
                    str(f.fee),
                    "",
                    ts(f.ts),
                    "",
                    "",
                )
            )
            for f in chunk
        ).encode()
        for chunk in _chunks(all_fills(n, pairs, per_order), 50_000)
    ]
    await conn.execute("TRUNCATE bare_fills")
    await conn.execute("CHECKPOINT")
    started = time.perf_counter()
    async with conn.transaction():
        await conn.copy_to_table(
            "bare_fills", source=_replay(text), columns=list(FILL_COLUMNS), format="text", null=""
        )
    return binary, time.perf_counter() - started


def _chunks(items: Iterator[Fill], size: int) -> Iterator[list[Fill]]:
    chunk: list[Fill] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
