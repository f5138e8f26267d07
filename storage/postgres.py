"""The PostgreSQL pool: asyncpg with NUMERIC<->Decimal and JSONB<->orjson codecs."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from base.logs import one_line
from base.settings import redact_url
from storage.redis import ServerUnreachable

_CONNECT_ERRORS = (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError)

# Errors after which the same work may succeed later: PostgreSQL is unreachable,
# restarting or full of connections. Anything else is a bug or bad data and is raised.
TRANSIENT_PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ServerUnreachable,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def _unreachable(url: str, exc: BaseException) -> ServerUnreachable:
    return ServerUnreachable(
        f"PostgreSQL at {redact_url(url)} is unreachable: {one_line(exc, 200)}"
    )


def _jsonb_encode(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # asyncpg already maps NUMERIC to Decimal; JSON columns go through orjson.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_jsonb_encode, decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """A pool that has connected once, or ServerUnreachable naming the URL (redacted)."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            timeout=10,
            command_timeout=300,
        )
    except _CONNECT_ERRORS as exc:
        raise _unreachable(url, exc) from None
    assert pool is not None
    return pool


async def connect(url: str) -> asyncpg.Connection:
    """One connection (for migrations and tools), or ServerUnreachable."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except _CONNECT_ERRORS as exc:
        raise _unreachable(url, exc) from None
    await _init_connection(conn)
    return conn
