"""Every session's figures for a pass, reading and decoding only what changed.

Per session, one script returns the session's version list, `b"<position id> <version>"`
joined by newlines (the stored JSON of a position starts with its version), instead of
the positions themselves. Equal to what the view last matched: nothing to do. Otherwise
the lines that differ name the positions that changed, appeared or went; only those are
read (HMGET) and decoded.

A new process starts from the snapshots the last one saved (`sweeper:view:{sid}`, a
`Snapshot` of the view: its indexes and sums as columns) instead of decoding every
position; positions changed since a snapshot was saved make that one session be read
whole (HGETALL) and decoded. Snapshots of views that changed are saved at the end of a
pass. A snapshot is only a cache: a missing, stale or unreadable one costs a read.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from base import logs
from storage.keys import Keys
from storage.redis import AnyRedis
from storage.scripts import Script, load, queue
from trading.positions import decode_position
from workers.session_view import FiguresCache, SessionView, figures_of

log = logs.get("mmops.sweeper")

CHUNK = 25  # sessions per pipeline

# KEYS: positions   Returns the version list: b"<position id> <version>" joined by "\n"
# (the stored JSON of every version starts with {"v":N,: docs/architecture.md)
_VERSIONS = """
local raw = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #raw, 2 do
  out[#out + 1] = raw[i] .. ' ' .. (string.match(raw[i + 1], '^{"v":(%d+),') or '-1')
end
return table.concat(out, '\\n')
"""


class FiguresReader:
    """Keeps `cache` in step with Redis for the sessions a pass looks at."""

    def __init__(self, redis: AnyRedis, keys: Keys, cache: FiguresCache) -> None:
        self.redis = redis
        self.keys = keys
        self.cache = cache
        self._versions = Script(_VERSIONS)
        self.read = 0  # positions read and decoded by the last `views` (a figure for reports)

    async def views(self, sids: list[str]) -> dict[str, SessionView]:
        """Every session's view, up to date."""
        self.read = 0
        for i in range(0, len(sids), CHUNK):
            await self._chunk(sids[i : i + CHUNK])
        self.cache.keep_only(sids)
        return {sid: self.cache.sessions[sid] for sid in sids}

    async def _chunk(self, sids: list[str]) -> None:
        cache, keys = self.cache, self.keys
        unknown = [sid for sid in sids if sid not in cache.sessions]
        await load(self.redis, self._versions)  # one round trip a chunk instead of NOSCRIPT care
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in unknown:
                pipe.get(keys.sweeper_view(sid))
            for sid in sids:
                queue(pipe, self._versions, [keys.positions(sid)], [])
            replies = await pipe.execute()
        for sid, raw in zip(unknown, replies, strict=False):
            cache.sessions[sid] = self._load(raw)
        digests: list[bytes] = replies[len(unknown) :]
        fetch: dict[str, list[str]] = {}  # sid -> positions to read (HMGET)
        rebuild: list[str] = []  # sessions to read whole (HGETALL)
        seen: dict[str, tuple[bytes, set[bytes]]] = {}
        for sid, digest in zip(sids, digests, strict=True):
            view = cache.sessions[sid]
            if view.digest == digest:
                continue
            lines = set(digest.split(b"\n")) if digest else set()
            seen[sid] = (digest, lines)
            changed = {line.partition(b" ")[0].decode() for line in lines - view.lines}
            gone = {line.partition(b" ")[0].decode() for line in view.lines - lines} - changed
            if not view.complete and not (changed | gone).isdisjoint(
                view.pids - view.figures.keys()
            ):
                rebuild.append(sid)
                continue
            for pid in gone:
                view.put(pid, None)
            if changed:
                fetch[sid] = sorted(changed)
            elif view.lines == lines:
                view.digest = digest
        if not fetch and not rebuild:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid, pids in fetch.items():
                pipe.hmget(keys.positions(sid), pids)
            for sid in rebuild:
                pipe.hgetall(keys.positions(sid))
            replies = await pipe.execute()
        for (sid, pids), values in zip(fetch.items(), replies, strict=False):
            view = cache.sessions[sid]
            for pid, value in zip(pids, values, strict=True):
                view.put(pid, figures_of(decode_position(value)) if value else None)
            self.read += len(pids)
            digest, lines = seen[sid]
            if view.lines == lines:  # nothing changed between the two reads
                view.digest = digest
        for sid, raw in zip(rebuild, replies[len(fetch) :], strict=True):
            cache.sessions.pop(sid, None)
            cache.refresh(sid, raw)
            self.read += len(raw)

    def _load(self, raw: bytes | None) -> SessionView:
        """The view of a saved snapshot; an empty one (everything is read) without one."""
        if raw is not None:
            try:
                return SessionView.from_snapshot(raw, self.cache.stale_after)
            except (msgspec.DecodeError, ValueError, TypeError) as exc:
                log.warning("an unreadable view snapshot is ignored: %s", exc)
        return SessionView(self.cache.stale_after)

    async def materialize(self, sids: Iterable[str]) -> None:
        """Read whole the sessions whose view came from a snapshot (before acting on them)."""
        partial = [sid for sid in sids if not self.cache.sessions[sid].complete]
        for i in range(0, len(partial), CHUNK):
            chunk = partial[i : i + CHUNK]
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in chunk:
                    pipe.hgetall(self.keys.positions(sid))
                stored = await pipe.execute()
            for sid, raw in zip(chunk, stored, strict=True):
                self.cache.sessions.pop(sid, None)
                self.cache.refresh(sid, raw)
                self.read += len(raw)

    async def save(self) -> int:
        """Save the snapshot of every view that changed since it was last saved."""
        dirty = [(sid, view) for sid, view in self.cache.sessions.items() if view.dirty]
        for i in range(0, len(dirty), CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid, view in dirty[i : i + CHUNK]:
                    pipe.set(self.keys.sweeper_view(sid), view.snapshot())
                await pipe.execute()
            for _, view in dirty[i : i + CHUNK]:
                view.dirty = False
        return len(dirty)
