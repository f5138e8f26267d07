"""The migration benchmark's baselines (bench/migrate.py): (a) one INSERT per row, (b)
executemany with ON CONFLICT DO NOTHING, (c1)/(c2) bare COPY into an unconstrained table."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import asyncpg

from bench.migrate_session import all_fills
from events.schema import Fill
from storage import session_reader as reader
from storage.session_writer import FILL_COLUMNS, TimestampText, copy_line


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def truncate(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE fills, orders, sessions, session_pairs, positions")
    await conn.execute("CHECKPOINT")


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
