"""Which sessions a sweep pass looks at: the Redis indexes plus PostgreSQL's recent sessions.

Redis: recent activity (`keys.sessions` within SETTLEMENT_LOOKBACK_HOURS), ended but not
migrated (`keys.sessions_ended`), open positions at the last pass
(`keys.sweeper_open_sessions`). PostgreSQL, when reachable: sessions started within the
lookback. Every one of them, most recent activity first: the pass reads the figures of
all (the loss limit and the unknown-order check cover them all) and acts on at most
SETTLEMENT_MAX_SESSIONS of those with work, round-robin (workers/sweeper.py). Also used
by `mmops verify-coverage`, which so sees the full list.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from base import logs
from base.logs import one_line
from storage import postgres
from storage.redis import ServerUnreachable
from workers.parts import Parts

log = logs.get("mmops.sweeper")

PG_TIMEOUT_S = 3.0
MAX_FROM_POSTGRES = 100_000  # sessions started within the lookback, read per pass at most
PG_ERRORS = (
    ServerUnreachable,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class RecentSessions:
    """Sessions started within the lookback, from PostgreSQL; one lazily (re)opened connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None

    async def fetch(self, since: datetime, limit: int) -> list[str]:
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = await asyncio.wait_for(postgres.connect(self.url), PG_TIMEOUT_S)
                self._conn = conn
            assert conn is not None
            rows = await conn.fetch(
                "SELECT id FROM sessions WHERE started_at >= $1 ORDER BY started_at DESC LIMIT $2",
                since,
                limit,
                timeout=PG_TIMEOUT_S,
            )
        except BaseException:
            await self.close()
            raise
        return [str(row["id"]) for row in rows]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)


@dataclass
class Discovery:
    sessions: list[str]
    notes: list[str]


async def discover(app: Parts, recent: RecentSessions | None) -> Discovery:
    """Every active session, most recent activity first."""
    settings, keys = app.settings, app.keys
    now = app.clock.now_ms()
    since = now - int(settings.settlement_lookback_hours * 3_600_000)
    async with app.redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(keys.sessions, since, "+inf", withscores=True)
        pipe.zrange(keys.sessions_ended, 0, -1, withscores=True)
        pipe.zrange(keys.sweeper_open_sessions, 0, -1, withscores=True)
        recent_rows, ended_rows, open_rows = await pipe.execute()
    score: dict[str, float] = {}
    for rows in (open_rows, ended_rows, recent_rows):
        for member, value in rows:
            sid = member.decode()
            score[sid] = max(score.get(sid, value), value)
    notes: list[str] = []
    if recent is not None:
        started = datetime.fromtimestamp(since / 1000, tz=UTC)
        try:
            for rank, sid in enumerate(await recent.fetch(started, MAX_FROM_POSTGRES)):
                score.setdefault(sid, since - rank)
        except PG_ERRORS as exc:
            note = f"sessions from Redis only, PostgreSQL not read: {one_line(exc)}"
            notes.append(note)
            log.warning(note)
    return Discovery(sorted(score, key=lambda sid: (-score[sid], sid)), notes)
