"""The per-session outbox: what a commit must also write to a global key, on a Redis Cluster.

A commit is one script on the slot of its session's `{sid}` hash tag (storage/ledger.py).
On one Redis it also writes the global keys (`mm:takeprofits`, `mm:sessions`, ...) in the
same script. A Redis Cluster refuses that (the keys live in other slots), so there the
commit script appends those writes to `outbox:{sid}` — in the session's slot, atomically
with the change — and `drain` then moves them:

1. each write is applied by a script on the slot of its key, guarded by a marker in that
   slot (`<MM_KEY_PREFIX>{<key's tag>}:applied:<sid>:<outbox entry>:<n>`, SET NX with a
   TTL): a write applied before (a crash after it, before step 2) is not applied twice;
2. the outbox entry is deleted (XDEL).

Nothing is lost (the entry stays until every write of it is applied) and nothing is
doubled (the markers). The committing process drains right after its commit; anyone who
finds a session's outbox not empty (a redelivered entry, the sweeper) drains it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.crc import key_slot

from storage import scripts
from storage.keys import Keys
from storage.ops import Op
from storage.redis import AnyRedis, entries_of

MARKER_TTL_S = 7 * 86_400

# KEYS: marker, the key the write is for.  ARGV: marker ttl s, kind, args...
_APPLY_ONCE = scripts.Script(
    """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
if ARGV[2] == 'call' then
  redis.call(unpack(ARGV, 3))
end
return 1
"""
)


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}, else the key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def op_key(op: Op) -> str:
    """The key an op writes (storage.ops puts it right after the command name)."""
    return str(op.args[1] if op.kind == "call" else op.args[0])


def split(anchor: str, ops: Sequence[Op]) -> tuple[list[Op], list[Op]]:
    """(ops on `anchor`'s slot, ops elsewhere)."""
    slot = key_slot(anchor.encode())
    local: list[Op] = []
    away: list[Op] = []
    for op in ops:
        (local if key_slot(op_key(op).encode()) == slot else away).append(op)
    return local, away


class Outbox:
    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    @staticmethod
    def encode(ops: Sequence[Op]) -> bytes:
        """How the commit script stores an outbox entry's writes (field `ops`)."""
        return orjson.dumps([op.wire() for op in ops])

    async def drain(self, sid: str, entry_ids: Sequence[str] | None = None) -> int:
        """Apply and delete the session's outbox entries (those given, else all); how many."""
        box = self.keys.outbox(sid)
        rows: list[tuple[str, dict[bytes, bytes]]] = []
        if entry_ids is None:
            rows = entries_of(await self.redis.xrange(box, count=1000))
        else:
            for entry_id in entry_ids:
                rows += entries_of(await self.redis.xrange(box, entry_id, entry_id))
        for entry_id, fields in rows:
            await self.apply(sid, entry_id, fields.get(b"ops", b"[]"))
            await self.redis.xdel(box, entry_id)
        return len(rows)

    async def apply(self, sid: str, entry_id: str, encoded: bytes) -> None:
        """Apply one outbox entry's writes, each once (a marker in its key's slot)."""
        wire: list[list[Any]] = orjson.loads(encoded)
        for n, op in enumerate(wire):
            kind, args = op[0], op[1:]
            if kind != "call":  # decimal counters never leave their session's slot
                raise ValueError(f"{kind} cannot go through the outbox")
            key = str(args[1])
            marker = f"{self.keys.prefix}{{{hash_tag(key)}}}:applied:{sid}:{entry_id}:{n}"
            await scripts.run(self.redis, _APPLY_ONCE, [marker, key], [MARKER_TTL_S, kind, *args])
