"""The Redis connection: built from REDIS_URL, checked at start, named (redacted) on failure."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from base.logs import one_line
from base.settings import redact_url

# Errors after which the same command may succeed later: the entry stays pending.
TRANSIENT_REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)


class ServerUnreachable(RuntimeError):
    """A server could not be reached; str() names it by its redacted URL."""


def client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client for `url` (redis://, rediss://, unix://; ACL user:password allowed).

    `blocking` clients are for XREADGROUP BLOCK: their socket timeout leaves room for it.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=None if blocking else 10,
        socket_connect_timeout=5,
        health_check_interval=15,
        retry_on_timeout=False,
        max_connections=256,
    )


async def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client that has answered PING, or ServerUnreachable naming the URL."""
    conn = client(url, blocking=blocking)
    try:
        await conn.ping()
    except (RedisError, OSError) as exc:
        await conn.aclose()
        raise ServerUnreachable(
            f"Redis at {redact_url(url)} is unreachable: {one_line(exc)}"
        ) from None
    return conn


StreamEntry = tuple[str, dict[bytes, bytes]]


def as_text(value: object) -> str:
    """A Redis reply value (bytes with decode_responses=False) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def stream_id(text: str) -> tuple[int, int]:
    """A stream entry id `ms-seq` as (ms, seq), ordered as Redis orders ids."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def entries_of(reply: object) -> list[StreamEntry]:
    """An XRANGE/XREVRANGE reply as (id, fields) pairs with text ids (a trimmed payload: {})."""
    out: list[StreamEntry] = []
    for entry_id, fields in reply or []:  # type: ignore[attr-defined]
        out.append((as_text(entry_id), dict(fields or {})))
    return out
