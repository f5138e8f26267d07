"""Readiness: has the coverage group processed every entry of a session up to its end?

A session is migrated only then, so that its positions, TP orders and fills in Redis
are final up to `session_ended` (docs/contract.md §3 Migration). The handler defers
the entry while it is not; `migrate_session` reports WAITING.
"""

from __future__ import annotations

from redis.exceptions import ResponseError

from events.codec import session_of
from storage.keys import Keys
from storage.redis import AnyRedis, as_text, stream_id

COVERAGE_GROUP = "coverage"
PENDING_PAGE = 200
PENDING_PAGES = 10


async def coverage_backlog(
    redis: AnyRedis, keys: Keys, sid: str, upto: str, *, group: str = COVERAGE_GROUP
) -> str | None:
    """Why `group` has not yet processed every entry of `sid` up to `upto` in the session's
    shard stream (`keys.stream_for(sid)`); None once it has.

    Processed = delivered (the group's last-delivered-id >= `upto`) and no longer
    pending (acked: handled or dead-lettered). Pending entries at or before `upto` are
    looked up to see whose they are; one whose payload is gone counts as this session's.
    """
    stream = keys.stream_for(sid)
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet
        return f"the stream {stream} does not exist"
    info = next((g for g in groups if as_text(g["name"]) == group), None)
    if info is None:
        return f"consumer group {group} does not exist yet"
    last = as_text(info["last-delivered-id"])
    if stream_id(last) < stream_id(upto):
        return f"{group} has not read up to {upto} yet (last delivered {last})"
    start = "-"
    for _ in range(PENDING_PAGES):
        rows = await redis.xpending_range(stream, group, min=start, max=upto, count=PENDING_PAGE)
        if not rows:
            return None
        ids = [as_text(row["message_id"]) for row in rows]
        async with redis.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.xrange(stream, mid, mid, count=1)
            found = await pipe.execute()
        for mid, entries in zip(ids, found, strict=True):
            owner = session_of(entries[0][1]) if entries else None
            if owner is None or owner == sid:
                return f"{group} has entry {mid} of session {sid} pending"
        if len(rows) < PENDING_PAGE:
            return None
        start = "(" + ids[-1]
    return f"{group} has more than {PENDING_PAGE * PENDING_PAGES} entries pending up to {upto}"
