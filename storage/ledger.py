"""The one write path: versioned documents in a session's hash, changed by compare-and-set.

Every change to a session's positions is one Lua script: the caller computes the new
documents (trading/book.py: pure Python, Decimal) from the versions it read, and the
script applies them only if no stored version moved — together with the once-per-fill
guard (`fills:{sid}`) and the change's side effects (`storage.ops`: TP records, output
streams, metrics), so a change and its effects are durable together or not at all.

A document is JSON whose first field is its version: `{"v":N,...}`. The script reads
the version by that prefix and never decodes anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import orjson

from events.schema import Fill
from storage.keys import Keys
from storage.ops import Op
from storage.pipeliner import Pipeliner
from storage.redis import AnyRedis, as_text

# KEYS: documents hash, fills hash.
# ARGV: fill_id ('' for none), fill payload, n, then n × (id, expected version, json), then ops.
_COMMIT = """
local fid = ARGV[1]
local n = tonumber(ARGV[3])
if fid ~= '' and redis.call('HEXISTS', KEYS[2], fid) == 1 then
  if n > 0 then return {'dup', ARGV[4], redis.call('HGET', KEYS[1], ARGV[4]) or false} end
  return {'dup', '', false}
end
local i = 4
for w = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local v = 0
  if cur then v = tonumber(string.match(cur, '^{"v":(%d+)')) end
  if v ~= tonumber(ARGV[i + 1]) then return {'conflict', ARGV[i], cur or false} end
  i = i + 3
end
i = 4
for w = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  i = i + 3
end
if fid ~= '' then redis.call('HSET', KEYS[2], fid, ARGV[2]) end
for _, op in ipairs(cjson.decode(ARGV[i])) do
  local kind = table.remove(op, 1)
  if kind == 'decimal_incrby' then
    -- an exact decimal counter: integer 1e-8 units in <field>_e8, the decimal text in <field>
    local v = redis.call('HINCRBY', op[1], op[2] .. '_e8', op[3])
    local sign = ''
    if v < 0 then sign = '-'; v = -v end
    local whole = math.floor(v / 100000000)
    redis.call('HSET', op[1], op[2], string.format('%s%d.%08d', sign, whole, v - whole * 100000000))
  else
    redis.call(unpack(op))
  end
end
return {'ok'}
"""

_fill_encoder = msgspec.json.Encoder(decimal_format="string")
_fill_decoder = msgspec.json.Decoder(Fill)


def encode_fill(fill: Fill) -> bytes:
    return _fill_encoder.encode(fill)


def decode_fill(raw: bytes) -> Fill:
    return _fill_decoder.decode(raw)


@dataclass(frozen=True, slots=True)
class Write:
    """A document's next version: stored only if the stored version is still `expected`."""

    id: str
    expected: int  # 0: the document does not exist yet
    payload: bytes  # JSON starting with {"v":<expected + 1>,


@dataclass(frozen=True, slots=True)
class Applied:
    """Every write and op was applied (and the fill recorded)."""


@dataclass(frozen=True, slots=True)
class AlreadyRecorded:
    """The guarding fill was recorded before: nothing changed. `current` is the first
    written document as stored (None if it does not exist)."""

    id: str
    current: bytes | None


@dataclass(frozen=True, slots=True)
class VersionMoved:
    """Document `id` is no longer at its expected version: nothing changed."""

    id: str
    current: bytes | None


CommitReply = Applied | AlreadyRecorded | VersionMoved


@dataclass
class Ledger:
    """Compare-and-set commits on the documents hash of a session (`keys.positions(sid)`)."""

    redis: AnyRedis
    keys: Keys

    def __post_init__(self) -> None:
        self._commit = self.redis.register_script(_COMMIT)
        self._pipeliner = Pipeliner(self.redis)

    async def commit(
        self,
        sid: str,
        writes: Sequence[Write],
        *,
        fill: Fill | None = None,
        ops: Sequence[Op] = (),
    ) -> CommitReply:
        """Apply `writes` and `ops` atomically if no version moved. With `fill`, only if
        that fill id was never recorded for the session, and record it with the change."""
        args: list[str | bytes | int] = [
            fill.fill_id if fill else "",
            encode_fill(fill) if fill else b"",
            len(writes),
        ]
        for write in writes:
            args += [write.id, write.expected, write.payload]
        args.append(orjson.dumps([op.wire() for op in ops]))
        reply = await self._pipeliner.run(
            self._commit, [self.keys.positions(sid), self.keys.fills(sid)], args
        )
        status = as_text(reply[0])
        if status == "ok":
            return Applied()
        doc_id = as_text(reply[1])
        current = bytes(reply[2]) if reply[2] else None
        if status == "dup":
            return AlreadyRecorded(doc_id, current)
        return VersionMoved(doc_id, current)
