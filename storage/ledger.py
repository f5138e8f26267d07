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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import orjson

from events.schema import Fill
from storage.keys import Keys
from storage.ops import Op
from storage.outbox import Outbox, split
from storage.pipeliner import Pipeliner
from storage.redis import AnyRedis, as_text

# Applies a list of storage.ops values ([kind, args...]); `decimal_incrby` is an exact
# decimal counter: integer 1e-8 units in <field>_e8, the decimal text in <field>.
_APPLY_OPS = """
local function apply_ops(list)
  for _, op in ipairs(list) do  -- op[1] is the kind: read in place, not shifted off
    if op[1] == 'decimal_incrby' then
      local v = redis.call('HINCRBY', op[2], op[3] .. '_e8', op[4])
      local sign = ''
      if v < 0 then sign = '-'; v = -v end
      local whole = math.floor(v / 100000000)
      redis.call('HSET', op[2], op[3],
                 string.format('%s%d.%08d', sign, whole, v - whole * 100000000))
    else
      redis.call(unpack(op, 2))
    end
  end
end
-- a session that has ended logs what each change touched (KEYS[3] session hash,
-- KEYS[4] its changes stream): the migrator brings PostgreSQL in step from it
local function log_change(positions, fills)
  if (positions ~= '' or fills ~= '') and redis.call('HEXISTS', KEYS[3], 'ended_at') == 1 then
    redis.call('XADD', KEYS[4], '*', 'positions', positions, 'fills', fills)
  end
end
local function version(raw)
  if not raw then return 0 end
  return tonumber(string.match(raw, '^{"v":(%d+)'))
end
"""

# KEYS: documents hash, fills hash, session hash, changes stream, outbox stream.
# ARGV: fill_id ('' for none), fill payload, n, then n × (id, expected version, json), then
# ops, then the writes for other slots ('' for none: storage/outbox.py). -> {'ok', outbox id}
_COMMIT = (
    _APPLY_OPS
    + """
local fid = ARGV[1]
local n = tonumber(ARGV[3])
if fid ~= '' and redis.call('HEXISTS', KEYS[2], fid) == 1 then
  if n > 0 then return {'dup', ARGV[4], redis.call('HGET', KEYS[1], ARGV[4]) or false} end
  return {'dup', '', false}
end
local i = 4
for w = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if version(cur) ~= tonumber(ARGV[i + 1]) then return {'conflict', ARGV[i], cur or false} end
  i = i + 3
end
i = 4
local touched = {}
for w = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  touched[w] = ARGV[i]
  i = i + 3
end
if fid ~= '' then redis.call('HSET', KEYS[2], fid, ARGV[2]) end
apply_ops(cjson.decode(ARGV[i]))
log_change(table.concat(touched, ','), fid)
local box = ''
if ARGV[i + 1] ~= '' then box = redis.call('XADD', KEYS[5], '*', 'ops', ARGV[i + 1]) end
return {'ok', box}
"""
)

# Several independent commits of one session in one call (the coverage batch path).
# KEYS: documents hash, fills hash, session hash, changes stream, outbox stream.
# ARGV[1]: JSON list of groups, each [[[fill_id, payload], ...], [[id, expected version,
# json], ...], [op, ...], writes for other slots ('' for none)], where a payload and a json
# are the index of an ARGV that holds them (JSON in JSON costs Lua more than the rest of
# the commit: every quote escaped, then unescaped). A group applies only if
# none of its fills was recorded and no version moved. -> {statuses, outbox ids}: each
# group's 'ok', 'dup' or 'conflict', and the outbox entries written.
_COMMIT_MANY = (
    _APPLY_OPS
    + """
local out, boxes = {}, {}
for g, grp in ipairs(cjson.decode(ARGV[1])) do
  local status = 'ok'
  for _, f in ipairs(grp[1]) do
    if redis.call('HEXISTS', KEYS[2], f[1]) == 1 then status = 'dup'; break end
  end
  if status == 'ok' then
    for _, w in ipairs(grp[2]) do
      if version(redis.call('HGET', KEYS[1], w[1])) ~= w[2] then status = 'conflict'; break end
    end
  end
  if status == 'ok' then
    local ids, fids = {}, {}
    for k, w in ipairs(grp[2]) do redis.call('HSET', KEYS[1], w[1], ARGV[w[3]]); ids[k] = w[1] end
    for k, f in ipairs(grp[1]) do redis.call('HSET', KEYS[2], f[1], ARGV[f[2]]); fids[k] = f[1] end
    apply_ops(grp[3])
    log_change(table.concat(ids, ','), table.concat(fids, ','))
    if grp[4] ~= '' then boxes[#boxes + 1] = redis.call('XADD', KEYS[5], '*', 'ops', grp[4]) end
  end
  out[g] = status
end
return {out, boxes}
"""
)

_fill_encoder = msgspec.json.Encoder(decimal_format="string")
_fill_decoder = msgspec.json.Decoder(Fill)


def encode_fill(fill: Fill, entry: str = "") -> bytes:
    """The fill as stored in `fills:{sid}`: the event's JSON, plus `"entry"` (the stream id of
    its event) when known; the migration counts the fills before a session's end by it."""
    raw = _fill_encoder.encode(fill)
    if not entry:
        return raw
    return raw[:-1] + b',"entry":"' + entry.encode() + b'"}'


def decode_fill(raw: bytes) -> Fill:
    return _fill_decoder.decode(raw)


class Write(msgspec.Struct, frozen=True, gc=False):  # 2 per fill: a struct is built in C
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


class Group(msgspec.Struct, frozen=True):  # 2 per fill: a struct is built in C
    """One change of a `commit_many`: its fills (each recorded once: the group applies only
    if none was recorded before), its documents' next versions and its side effects."""

    fills: Sequence[Fill]
    writes: Sequence[Write]
    ops: Sequence[Op] = ()
    entries: Sequence[str] = ()  # the stream id of each fill's event (stored with it), if known


GroupStatus = str  # 'ok' | 'dup' (a fill was recorded before) | 'conflict' (a version moved)


@dataclass
class Ledger:
    """Compare-and-set commits on the documents hash of a session (`keys.positions(sid)`)."""

    redis: AnyRedis
    keys: Keys
    cluster: bool = False  # writes to global keys go through the session's outbox

    def __post_init__(self) -> None:
        self._commit = self.redis.register_script(_COMMIT)
        self._many = self.redis.register_script(_COMMIT_MANY)
        self._pipeliner = Pipeliner(self.redis)
        self.outbox = Outbox(self.redis, self.keys)

    def _session_keys(self, sid: str) -> list[str]:
        k = self.keys
        return [k.positions(sid), k.fills(sid), k.session(sid), k.changes(sid), k.outbox(sid)]

    def _route(self, sid: str, ops: Sequence[Op]) -> tuple[Sequence[Op], bytes]:
        """(ops the script runs, writes for other slots to put in the outbox)."""
        if not self.cluster:
            return ops, b""
        local, away = split(self.keys.positions(sid), ops)
        return local, Outbox.encode(away) if away else b""

    async def commit_many(
        self, changes: Mapping[str, Sequence[Group]]
    ) -> dict[str, list[GroupStatus]]:
        """Session -> its groups, each applied atomically on its own; one script call per
        session, all in one round trip. Session -> each group's status, in order. A failed
        call (connection, script error) raises."""
        calls = []
        for sid, groups in changes.items():
            body: list[object] = []
            payloads: list[bytes] = []
            for group in groups:
                local, away = self._route(sid, group.ops)
                fills = []
                for f, entry in zip(group.fills, _entries(group), strict=True):
                    payloads.append(encode_fill(f, entry))
                    fills.append([f.fill_id, len(payloads) + 1])
                writes = []
                for w in group.writes:
                    payloads.append(w.payload)
                    writes.append([w.id, w.expected, len(payloads) + 1])
                body.append([fills, writes, [op.wire() for op in local], away.decode()])
            args = [orjson.dumps(body), *payloads]
            calls.append((self._many, self._session_keys(sid), args))
        results = await self._pipeliner.run_many(calls)
        out: dict[str, list[GroupStatus]] = {}
        for sid, result in zip(changes, results, strict=True):
            if isinstance(result, Exception):
                raise result
            statuses, boxes = result
            out[sid] = [as_text(status) for status in statuses]
            if boxes:
                await self.outbox.drain(sid, [as_text(b) for b in boxes])
            elif self.cluster and "dup" in out[sid]:  # see commit()
                await self.outbox.drain(sid)
        return out

    async def commit(
        self,
        sid: str,
        writes: Sequence[Write],
        *,
        fill: Fill | None = None,
        ops: Sequence[Op] = (),
        entry: str = "",
    ) -> CommitReply:
        """Apply `writes` and `ops` atomically if no version moved. With `fill`, only if
        that fill id was never recorded for the session, and record it with the change
        (with `entry`, the stream id of its event)."""
        args: list[str | bytes | int] = [
            fill.fill_id if fill else "",
            encode_fill(fill, entry) if fill else b"",
            len(writes),
        ]
        for write in writes:
            args += [write.id, write.expected, write.payload]
        local, away = self._route(sid, ops)
        args += [orjson.dumps([op.wire() for op in local]), away]
        reply = await self._pipeliner.run(self._commit, self._session_keys(sid), args)
        status = as_text(reply[0])
        if status == "ok":
            if reply[1]:
                await self.outbox.drain(sid, [as_text(reply[1])])
            return Applied()
        doc_id = as_text(reply[1])
        current = bytes(reply[2]) if reply[2] else None
        if status == "dup":
            if self.cluster:  # a redelivery after a crash may find its writes still to move
                await self.outbox.drain(sid)
            return AlreadyRecorded(doc_id, current)
        return VersionMoved(doc_id, current)


def _entries(group: Group) -> Sequence[str]:
    return group.entries if group.entries else [""] * len(group.fills)
