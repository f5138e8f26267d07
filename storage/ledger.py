"""Per-session state in Redis: fills seen, positions, TP records.

Every change to positions is an optimistic compare-and-set in one Lua script: the
caller computes new positions (pure Python, Decimal) from the versions it read, and
the script applies them only if no version moved — together with the once-per-fill
guard (`fills:{sid}`) and any side effects (TP records, output streams, metrics), so
a change and its effects are durable together or not at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import orjson
import redis.asyncio as aioredis

from events.schema import Fill
from storage.keys import Keys
from storage.pipeliner import Pipeliner
from storage.redis import as_text
from trading.positions import Position, decode_position, encode_position

# KEYS: positions hash, fills hash.
# ARGV: fill_id ('' for none), fill payload, n, then n × (pid, expected version, json), then ops.
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
  if op[1] == 'DECIMAL_INCRBY' then
    -- an exact decimal counter: integer 1e-8 units in <field>_e8, the decimal text in <field>
    local v = redis.call('HINCRBY', op[2], op[3] .. '_e8', op[4])
    local sign = ''
    if v < 0 then sign = '-'; v = -v end
    local whole = math.floor(v / 100000000)
    redis.call('HSET', op[2], op[3], string.format('%s%d.%08d', sign, whole, v - whole * 100000000))
  else
    redis.call(unpack(op))
  end
end
return {'ok'}
"""

Op = Sequence[str | int]

_fill_encoder = msgspec.json.Encoder(decimal_format="string")
_fill_decoder = msgspec.json.Decoder(Fill)


def encode_fill(fill: Fill) -> bytes:
    return _fill_encoder.encode(fill)


def decode_fill(raw: bytes) -> Fill:
    return _fill_decoder.decode(raw)


@dataclass(frozen=True, slots=True)
class Committed:
    positions: tuple[Position, ...]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The fill was recorded before; `current` is the first position's stored state."""

    current: Position | None


@dataclass(frozen=True, slots=True)
class Conflict:
    position_id: str
    current: Position | None


CommitResult = Committed | Duplicate | Conflict


@dataclass
class Ledger:
    redis: aioredis.Redis
    keys: Keys
    cache_size: int = 10_000  # recent positions; a miss costs one CAS round trip, not correctness
    _cache: OrderedDict[tuple[str, str], Position] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self._commit = self.redis.register_script(_COMMIT)
        self._pipeliner = Pipeliner(self.redis)

    # --- reads -----------------------------------------------------------------
    async def position(self, sid: str, pid: str, *, fresh: bool = False) -> Position | None:
        """The position, from this process' cache unless `fresh` (a CAS corrects stale reads)."""
        if not fresh and (cached := self._cache.get((sid, pid))) is not None:
            return cached
        raw = await self.redis.hget(self.keys.positions(sid), pid)
        position = decode_position(raw) if raw else None
        self._remember(sid, pid, position)
        return position

    async def positions(self, sid: str) -> dict[str, Position]:
        raw = await self.redis.hgetall(self.keys.positions(sid))
        out = {as_text(k): decode_position(v) for k, v in raw.items()}
        for pid, position in out.items():
            self._remember(sid, pid, position)
        return out

    def cached(self, sid: str, pid: str) -> Position | None:
        return self._cache.get((sid, pid))

    # --- the one write path --------------------------------------------------
    async def commit(
        self,
        sid: str,
        writes: Sequence[Position],
        *,
        fill: Fill | None = None,
        ops: Sequence[Op] = (),
    ) -> CommitResult:
        """Apply new versions of `writes` (each one version above what is stored) atomically.

        With `fill`, the change happens only if that fill id was never recorded for the
        session, and records it. `ops` are Redis commands run in the same script on success.
        """
        args: list[str | bytes | int] = [
            fill.fill_id if fill else "",
            encode_fill(fill) if fill else b"",
            len(writes),
        ]
        for position in writes:
            args += [position.id, position.v - 1, encode_position(position)]
        args.append(orjson.dumps([list(op) for op in ops]))
        reply = await self._pipeliner.run(
            self._commit, [self.keys.positions(sid), self.keys.fills(sid)], args
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "ok":
            for position in writes:
                self._remember(sid, position.id, position)
            return Committed(tuple(writes))
        pid = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        current = decode_position(reply[2]) if reply[2] else None
        if pid:
            self._remember(sid, pid, current)
        if status == "dup":
            return Duplicate(current)
        return Conflict(pid, current)

    def _remember(self, sid: str, pid: str, position: Position | None) -> None:
        key = (sid, pid)
        if position is None:
            self._cache.pop(key, None)
            return
        self._cache[key] = position
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
