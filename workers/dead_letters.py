"""Dead letters (docs/contract.md §1, §2): an invalid or poison entry goes to `mm:dead` once.

Every consumer group of the input stream reads every entry, so each finds an invalid
one invalid; the first to get there writes the record and sets a marker beside
`mm:dead` (same hash slot), and the others only ack. The record keeps at most the first
MAX_ENTRY_BYTES of the entry's fields (field names and values, in their order), so a
10 MB entry costs `mm:dead` a few kB; the stream is capped at DEAD_MAXLEN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from base import logs, metrics
from events.codec import session_of
from storage.keys import Keys
from storage.redis import AnyRedis
from storage.streams import Entry, Pairs

log = logs.get("mmops.dead")

MAX_ALERT_ID = 64  # the longest valid id (contract §1)
MARKER_TTL_MS = 7 * 86_400_000  # longer than any group is expected to lag behind another
_RESERVED = (b"stream", b"id", b"group", b"error", b"deliveries", b"truncated")

# KEYS: dead stream, marker.  ARGV: marker ttl ms, maxlen, then the record's flat fields.
# The record is written only by the first caller for this entry.
_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
return 1
"""


def _shown(session_id: str) -> str:
    """An entry's session id as an alert may show it: an invalid entry's may be 10 MB of
    anything (the alert goes to the webhook), so at most 64 printable characters."""
    if len(session_id) <= MAX_ALERT_ID and session_id.isprintable():
        return session_id
    return repr(session_id[:MAX_ALERT_ID])[:MAX_ALERT_ID] + "…"


def bounded(fields: Pairs | None, max_bytes: int) -> tuple[Pairs, int]:
    """The first `max_bytes` of the fields (the value that crosses the bound is cut), and
    the entry's full size in bytes."""
    kept: Pairs = []
    total = used = 0
    for name, value in fields or ():
        total += len(name) + len(value)
        if used >= max_bytes:
            continue
        room = max_bytes - used - len(name)
        if room < 0:
            continue
        kept.append((name, value[:room]))
        used += len(name) + min(len(value), room)
    return kept, total


@dataclass
class DeadLetters:
    redis: AnyRedis
    keys: Keys
    max_bytes: int
    maxlen: int  # DEAD_MAXLEN
    alerts_maxlen: int = 10_000  # ALERTS_MAXLEN: the dead_letter alert's stream

    def __post_init__(self) -> None:
        self._once = self.redis.register_script(_ONCE)

    async def send(
        self, stream: str, group: str, dead: Sequence[tuple[Entry, str]], *, ack: bool = True
    ) -> int:
        """Record each entry with its reason (once across groups), alert, and XACK them all.
        Returns how many records this call wrote."""
        written = 0
        for entry, reason in dead:
            if await self._record(stream, group, entry, reason):
                written += 1
                await self.redis.xadd(
                    self.keys.alerts,
                    {
                        "kind": "dead_letter",
                        "message": f"{stream} {entry.id} -> {self.keys.dead}: {reason}",
                        "group": group,
                        "entry_id": entry.id,
                        "session_id": _shown(session_of(entry.fields) or ""),
                    },
                    maxlen=self.alerts_maxlen,
                    approximate=True,
                )
                log.warning("dead-lettered %s: %s", entry.id, reason, extra={"group": group})
        if ack and dead:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(stream, group, *[e.id for e, _ in dead])
                pipe.hdel(self.keys.failures(group, stream), *[e.id for e, _ in dead])
                await pipe.execute()
        metrics.DEAD.labels(group).inc(len(dead))
        return written

    async def _record(self, stream: str, group: str, entry: Entry, reason: str) -> bool:
        kept, size = bounded(entry.fields, self.max_bytes)
        record: list[bytes | str] = [
            "stream", stream, "id", entry.id, "group", group,
            "error", reason, "deliveries", str(entry.failures),
        ]  # fmt: skip
        if size > self.max_bytes:
            record += ["truncated", f"{size} bytes, first {self.max_bytes} kept"]
        for name, value in kept:
            record += [b"orig_" + name if name in _RESERVED else name, value]
        marker = self.keys.dead_marker(stream, entry.id)
        done = await self._once(
            keys=[self.keys.dead, marker], args=[MARKER_TTL_MS, self.maxlen, *record]
        )
        return bool(done)
