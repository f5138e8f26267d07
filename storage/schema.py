"""Versioned SQL migrations (storage/migrations/NNNN_name.sql), applied under an advisory lock.

`upgrade` is idempotent and safe to run from several processes at once: the lock
serialises them and `schema_migrations` records what is applied.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

import asyncpg

from storage import partitioning

_LOCK_NAMESPACE = 0x6D6D6F70  # "mmop"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet recorded; returns the ones applied now."""
    applied_now: list[Migration] = []
    async with _locked(conn):
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied_now.append(migration)
    return applied_now


async def partition(conn: asyncpg.Connection, partitions: int) -> list[str]:
    """Hash-partition fills and orders by session_id into `partitions` (storage/partitioning.py),
    under the same lock as upgrade(); what was done, one line per table."""
    async with _locked(conn):
        return await partitioning.partition(conn, partitions)


@contextlib.asynccontextmanager
async def _locked(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The schema's advisory lock held, the schema and schema_migrations created if missing."""
    schema = await conn.fetchval("SELECT current_schema()")
    wanted = str(await conn.fetchval("SELECT current_setting('search_path')")).split(",")[0].strip()
    # lock first (keyed by the target schema), so concurrent upgrades never race, even to
    # create a schema that search_path names but that does not exist yet
    target = str(schema) if schema is not None else wanted.strip('"')
    lock_key = int.from_bytes(hashlib.sha256(target.encode()).digest()[:4], "big") >> 1
    await conn.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_NAMESPACE, lock_key)
    try:
        if schema is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(wanted)}")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version INTEGER PRIMARY KEY,
                   name TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_NAMESPACE, lock_key)


async def current_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


def _quote_ident(name: str) -> str:
    name = name.strip('"')
    return '"' + name.replace('"', '""') + '"'
