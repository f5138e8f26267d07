"""Whether every change of a session is in PostgreSQL (docs/contract.md §3 Retention).

One function, `is_synced`, so that the sweeper's session retention asks one question and
the migration decides the answer. Today a session is synced when it reached PostgreSQL
(`migration:completed:{sid}`, an ISO time) and no event of it was processed after that
(`mm:sessions`: last activity, epoch ms). The migration's write-through of post-end
changes is to expose its own per-session marker of what is in PostgreSQL; this function
is where it is to be read (the migration owns the answer; the sweeper only asks).
"""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as aioredis

from storage.keys import Keys


async def is_synced(redis: aioredis.Redis, keys: Keys, sid: str) -> bool:
    """True when every change of session `sid` is in PostgreSQL."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.migration_completed(sid))
        pipe.zscore(keys.sessions_ended, sid)
        pipe.zscore(keys.sessions, sid)
        completed, ended_unmigrated, last_activity = await pipe.execute()
    if completed is None or ended_unmigrated is not None:
        return False
    completed_ms = _ms(completed)
    if completed_ms is None:
        return False
    return last_activity is None or int(last_activity) <= completed_ms


def _ms(iso: bytes | str) -> int | None:
    """Epoch ms of an ISO-8601 time (`2026-11-21T09:45:18.123Z`), None if it is not one."""
    text = iso.decode() if isinstance(iso, bytes) else iso
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None
