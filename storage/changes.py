"""A session's changes after its end (changes:{sid}): the migrator's feed, and whether it is synced.

Once a session's hash has `ended_at`, every change committed for it appends one entry to
its changes stream, in the same script as the change (storage/ledger.py: `positions`,
`fills`; storage/orders.py: `orders`), each a comma-joined list of ids. The migrator
applies the entries after its cursor (stored in PostgreSQL with what they changed, in
one transaction), then trims the stream up to the cursor: an entry still in the stream
is a change that may not be in PostgreSQL yet.

`is_synced` is what the retention of per-session state asks before it removes a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.exceptions import ResponseError

from storage.keys import Keys
from storage.redis import AnyRedis, as_text, entries_of, stream_id

START = "0-0"  # the cursor before any change


@dataclass(slots=True)
class Changes:
    """What a run of entries touched (union of their ids) and the last entry's id."""

    last: str = START
    entries: int = 0
    positions: set[str] = field(default_factory=set)
    fills: set[str] = field(default_factory=set)
    orders: set[str] = field(default_factory=set)

    def add(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self.last = entry_id
        self.entries += 1
        for name, into in ((b"positions", self.positions), (b"fills", self.fills)):
            into.update(i for i in as_text(fields.get(name, b"")).split(",") if i)
        self.orders.update(i for i in as_text(fields.get(b"orders", b"")).split(",") if i)


async def read(redis: AnyRedis, keys: Keys, sid: str, after: str, count: int) -> Changes:
    """Up to `count` entries after `after` (exclusive)."""
    out = Changes(last=after)
    rows = entries_of(
        await redis.xrange(keys.changes(sid), min=_after(after), max="+", count=count)
    )
    for entry_id, fields in rows:
        out.add(entry_id, fields)
    return out


async def logged_fills(redis: AnyRedis, keys: Keys, sid: str, page: int = 1000) -> set[str]:
    """Every fill id the session's changes stream still holds (recorded after its end)."""
    out: set[str] = set()
    start = "-"
    while True:
        rows = entries_of(await redis.xrange(keys.changes(sid), min=start, max="+", count=page))
        for _, fields in rows:
            out.update(i for i in as_text(fields.get(b"fills", b"")).split(",") if i)
        if len(rows) < page:
            return out
        start = _after(rows[-1][0])


async def last_id(redis: AnyRedis, keys: Keys, sid: str) -> str:
    """The id of the last entry ever added to the stream ('0-0' if none), trimmed or not."""
    try:
        info = await redis.xinfo_stream(keys.changes(sid))
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return START
        raise
    return as_text(info.get("last-generated-id") or START)


async def last_ids(redis: AnyRedis, keys: Keys, sids: Sequence[str]) -> dict[str, str | None]:
    """Per session, the id of the newest entry still in its changes stream (None: empty)."""
    async with redis.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.xrevrange(keys.changes(sid), count=1)
        replies = await pipe.execute()
    out: dict[str, str | None] = {}
    for sid, reply in zip(sids, replies, strict=True):
        rows = entries_of(reply)
        out[sid] = rows[0][0] if rows else None
    return out


async def trim(redis: AnyRedis, keys: Keys, sid: str, upto: str) -> None:
    """Remove the entries up to and including `upto` (they are in PostgreSQL)."""
    if upto == START:
        return
    ms, seq = stream_id(upto)
    await redis.xtrim(keys.changes(sid), minid=f"{ms}-{seq + 1}", approximate=False)


async def is_synced(redis: AnyRedis, keys: Keys, sid: str) -> bool:
    """True once every change of session `sid` is in PostgreSQL: it was migrated
    (`migration:completed:{sid}`) and its changes stream holds no entry (the migrator trims
    what it applied). For the retention of per-session state: check it and delete in one
    script (EXISTS migration:completed + XLEN changes == 0), so that a change logged in
    between is not lost. A session with open positions may be synced; that is not this
    function's question."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(keys.migration_completed(sid))
        pipe.xlen(keys.changes(sid))
        completed, pending = await pipe.execute()
    return bool(completed) and int(pending) == 0


def newer(entry_id: str | None, cursor: str | None) -> bool:
    """Whether stream id `entry_id` comes after `cursor` (None: nothing / the start)."""
    if entry_id is None:
        return False
    return stream_id(entry_id) > stream_id(cursor or START)


def _after(entry_id: str) -> str:
    return "-" if entry_id == START else "(" + entry_id
