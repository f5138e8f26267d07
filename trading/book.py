"""Positions as stored: read (with a small per-process cache) and changed only by the ledger.

`PositionBook.commit` encodes new position versions for the ledger's compare-and-set
(storage/ledger.py) and decodes what it answers. A stale cached read is harmless: the
CAS refuses it and hands back the stored version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from events.schema import Fill
from storage.keys import Keys
from storage.ledger import AlreadyRecorded, Applied, Group, Ledger, Write
from storage.ops import Op
from storage.redis import AnyRedis, as_text
from trading.positions import Position, decode_position, encode_position


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
class PositionBook:
    ledger: Ledger
    cache_size: int = 10_000  # recent positions; a miss costs one CAS round trip, not correctness
    _cache: OrderedDict[tuple[str, str], Position] = field(default_factory=OrderedDict)

    @property
    def redis(self) -> AnyRedis:
        return self.ledger.redis

    @property
    def keys(self) -> Keys:
        return self.ledger.keys

    # --- reads -----------------------------------------------------------------
    async def position(self, sid: str, pid: str, *, fresh: bool = False) -> Position | None:
        """The position, from this process' cache unless `fresh`."""
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
        entry: str = "",
    ) -> CommitResult:
        """Store new versions of `writes` (each one version above what is stored) with
        `ops`, atomically; with `fill`, only if that fill was never recorded (`entry`: the
        stream id of its event, stored with it)."""
        reply = await self.ledger.commit(
            sid,
            [Write(p.id, p.v - 1, encode_position(p)) for p in writes],
            fill=fill,
            ops=ops,
            entry=entry,
        )
        if isinstance(reply, Applied):
            for position in writes:
                self._remember(sid, position.id, position)
            return Committed(tuple(writes))
        current = decode_position(reply.current) if reply.current else None
        if reply.id:
            self._remember(sid, reply.id, current)
        if isinstance(reply, AlreadyRecorded):
            return Duplicate(current)
        return Conflict(reply.id, current)

    def write(self, position: Position) -> Write:
        """The ledger write of a position's next version."""
        return Write(position.id, position.v - 1, encode_position(position))

    def remember(self, position: Position) -> None:
        """A version this process committed (through `commit_many`)."""
        self._remember(position.session_id, position.id, position)

    async def commit_many(self, changes: Mapping[str, Sequence[Group]]) -> dict[str, list[str]]:
        """The ledger's `commit_many`: per session, each group's status ('ok', 'dup',
        'conflict'); the caller remembers what it committed."""
        return await self.ledger.commit_many(changes) if changes else {}

    def _remember(self, sid: str, pid: str, position: Position | None) -> None:
        key = (sid, pid)
        if position is None:
            self._cache.pop(key, None)
            return
        self._cache[key] = position
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
