"""The one consumer runtime every stream worker plugs a handler into.

It owns everything at the Redis boundary: the consumer group, reading (own pending
entries first, then new ones, always with COUNT and BLOCK, every field pair kept),
per-lane ordering with bounded concurrency across lanes (workers/lanes.py), acking after
the handler returns, reclaiming idle entries (XAUTOCLAIM, cursor kept), dead-lettering
invalid or poison entries once (workers/dead_letters.py), heartbeats, metrics and
graceful shutdown. A fix here fixes every worker. Running a batch through the handler
(lane order, the bulk path, deferrals, retries) is its other half, workers/dispatch.py.

Poison is counted in handler failures, not in Redis deliveries: an entry is
dead-lettered after its handler raised MAX_DELIVERIES times. Reading an entry again
after a restart, reclaiming it, or holding it behind an earlier entry of its lane never
counts, so kill -9 and restarts cannot turn a valid entry into a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from base import logs, metrics
from base.faults import crash_point
from base.logs import one_line
from base.settings import Settings, redact_url
from events import EventError, decode
from storage.keys import Keys
from storage.redis import TRANSIENT_REDIS_ERRORS, AnyRedis, as_text, stream_id
from storage.streams import Entry, autoclaim, pair_reader, read_group
from workers.dead_letters import DeadLetters
from workers.dispatch import TRANSIENT_RETRIES, TRANSIENT_RETRY_S, Deferred, Dispatch
from workers.handler import ConsumerConfig, Handler, Invalid, Retry, RunStats, Transient
from workers.lanes import Lane, dependencies

log = logs.get("mmops.runtime")

TRIMMED = "entry payload is missing (trimmed from the stream)"


@dataclass
class Runtime(Dispatch):
    """Consumes one stream as `consumer` of `handler.group`: `stream`, else `handler.stream`,
    else the unsharded input stream. With MM_STREAM_SHARDS > 1 a group has one runtime per
    shard (workers/groups.py builds them), each with a handler of its own."""

    redis: AnyRedis
    keys: Keys
    settings: Settings
    handler: Handler
    consumer: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: RunStats = field(default_factory=RunStats)
    claim_every_s: float = 1.0
    heartbeat_every_s: float = 2.0
    draining: bool = False  # one pass: transient failures are left pending, not retried in-process
    config: ConsumerConfig | None = None  # default: from settings (CONSUMER_* settings)
    stream: str = ""
    # handlers in flight at once; a group's shard runtimes share one (CONSUMER_CONCURRENCY)
    limit: asyncio.Semaphore | None = None
    # leave the group's heartbeats when run() ends (a group's shard runtimes leave together)
    leaves: bool = True
    _claim_cursor: str = "0-0"
    _last_claim: float = 0.0
    _last_heartbeat: float = 0.0
    _deferred: dict[str, Deferred] = field(default_factory=dict)
    _transient_tries: dict[str, int] = field(default_factory=dict)
    _failed_ids: set[str] = field(default_factory=set)  # failures this process recorded
    handled: set[str] = field(default_factory=set)  # done in the batch at hand, not acked yet
    _reader: AnyRedis | None = None

    def __post_init__(self) -> None:
        self.cfg: ConsumerConfig = self.config or ConsumerConfig.from_settings(self.settings)
        self.stream = self.stream or getattr(self.handler, "stream", None) or self.keys.stream
        self.decode: Callable[..., Any] = getattr(self.handler, "decode", None) or (
            lambda fields: decode(fields, max_bytes=self.cfg.max_entry_bytes)
        )
        self.dead_letters = DeadLetters(
            self.redis,
            self.keys,
            self.cfg.max_entry_bytes,
            self.cfg.dead_maxlen,
            self.settings.alerts_maxlen,
        )
        self.failures_key = self.keys.failures(self.group, self.stream)
        attach = getattr(self.handler, "attach", None)
        if attach is not None:  # a handler that needs to know its stream and group
            attach(self)

    @property
    def reader(self) -> AnyRedis:
        """The pair-keeping client (storage/streams.py), made on first use."""
        if self._reader is None:
            self._reader = pair_reader(self.redis, self.settings.redis_url)
        return self._reader

    # --- lifecycle ---------------------------------------------------------------
    async def ensure_group(self) -> None:
        """Create the group (and the stream) if missing; it starts at the stream's beginning."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, *, until_drained: bool = False) -> RunStats:
        """Consume until `stop` is set (SIGTERM) or, with until_drained, nothing is left."""
        self.draining = until_drained
        await self._retrying(self.ensure_group)
        try:
            await self._consume(until_drained)
        finally:
            await self._leave()
        return self.stats

    async def _consume(self, until_drained: bool) -> None:
        backlog = True  # first our own pending entries (ID 0), then new ones (>)
        after = "0-0"
        while not self.stop.is_set():
            try:
                await self._housekeeping(force_claim=until_drained)
                if backlog:
                    entries = await self._read(after, block=False)
                    if entries:
                        after = entries[-1].id
                        entries = [e for e in entries if e.id not in self._deferred]
                        await self._process(await self._with_failures(entries))
                        continue
                    backlog = False
                entries = await self._read(">", block=not until_drained)
                entries = self._in_stream_order(entries + self._due_deferred())
                if entries:
                    await self._process(entries)
                    continue
                if until_drained and await self._drained():
                    break
                if until_drained:
                    await asyncio.sleep(0.02)
            except TRANSIENT_REDIS_ERRORS as exc:
                log.warning(
                    "Redis at %s unreachable (%s); retrying",
                    redact_url(self.settings.redis_url),
                    one_line(exc, 120),
                )
                await self._pause(1.0)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream or group was deleted (or Redis lost it)
                    log.warning("group %s missing on %s; re-creating it", self.group, self.stream)
                    await self._retrying(self.ensure_group)
                    backlog, after = True, "0-0"
                    continue
                raise

    async def _leave(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
                await reader.aclose()
        if self.leaves:
            await leave(self.redis, self.keys, self.group, self.consumer)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _retrying(self, call: Callable[[], Any]) -> None:
        delay = 0.2
        while True:
            try:
                await call()
                return
            except TRANSIENT_REDIS_ERRORS:
                if self.stop.is_set():
                    return
                log.warning(
                    "Redis at %s unreachable; retrying", redact_url(self.settings.redis_url)
                )
                await self._pause(delay)
                delay = min(delay * 2, 5.0)

    # --- reading -----------------------------------------------------------------
    async def _read(self, after: str, *, block: bool) -> list[Entry]:
        entries = await read_group(
            self.reader,
            self.group,
            self.consumer,
            self.stream,
            after,
            count=self.cfg.batch_size,
            block_ms=self.cfg.block_ms if block else None,
        )
        metrics.HEALTH.beat(self.group)
        return entries

    async def _with_failures(self, entries: list[Entry]) -> list[Entry]:
        """Attach the handler failures recorded for entries read again from a pending list."""
        if not entries:
            return entries
        counts = await self.redis.hmget(self.failures_key, [e.id for e in entries])
        return [
            Entry(e.id, e.fields, int(n)) if n is not None else e
            for e, n in zip(entries, counts, strict=True)
        ]

    async def _reclaim(self) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than RECLAIM_IDLE_MS (from dead or stuck consumers)."""
        start = self._claim_cursor
        claimed = await autoclaim(
            self.reader,
            self.stream,
            self.group,
            self.consumer,
            min_idle_ms=self.cfg.reclaim_idle_ms,
            start=start,
            count=self.cfg.batch_size,
        )
        self._claim_cursor = claimed.cursor
        deleted = list(claimed.deleted)
        if claimed.nils:  # Redis 6.2: a trimmed entry is a nil, still pending
            deleted += await self._trimmed(start, claimed.cursor, {e.id for e in claimed.entries})
        entries = [e for e in claimed.entries if e.id not in self._deferred]
        if deleted:  # Redis 7 drops trimmed entries from the PEL itself (the XACK is a no-op)
            await self._dead_letter([(Entry(mid, None), TRIMMED) for mid in deleted])
        if entries:
            self.stats.reclaimed += len(entries)
            metrics.RECLAIMED.labels(self.group).inc(len(entries))
            log.info("reclaimed %d idle entries", len(entries), extra={"group": self.group})
        return await self._with_failures(entries)

    async def _trimmed(self, start: str, cursor: str, claimed: set[str]) -> list[str]:
        """Our pending entries in [start, cursor) whose payload is gone from the stream.

        Redis 6.2's XAUTOCLAIM answers such an entry with a nil (no id) and leaves it in
        the PEL, now ours; XPENDING gives the ids back and XRANGE tells which are gone."""
        rows = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=start,
            max="+" if cursor == "0-0" else f"({cursor}",
            count=self.cfg.batch_size + len(self._deferred) + 100,
            consumername=self.consumer,
        )
        candidates = [
            mid
            for mid in (as_text(row["message_id"]) for row in rows)
            if mid not in claimed and mid not in self._deferred
        ]
        if not candidates:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for mid in candidates:
                pipe.xrange(self.stream, mid, mid)
            found = await pipe.execute()
        return [mid for mid, entries in zip(candidates, found, strict=True) if not entries]

    async def _housekeeping(self, *, force_claim: bool) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_every_s:
            self._last_heartbeat = now
            await self._heartbeat()
        if force_claim or now - self._last_claim >= self.claim_every_s:
            self._last_claim = now
            claimed = await self._reclaim()
            if claimed:
                await self._process(claimed)

    async def _heartbeat(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.heartbeats(self.group), {self.consumer: int(time.time() * 1000)})
            pipe.xpending(self.stream, self.group)
            pipe.xinfo_groups(self.stream)
            _, pending, groups = await pipe.execute()
        metrics.PENDING.labels(self.group, self.stream).set(int(pending["pending"]))
        for info in groups:
            if as_text(info["name"]) == self.group:
                lag = info.get("lag")
                metrics.LAG.labels(self.group, self.stream).set(-1 if lag is None else int(lag))
        if self._deferred:  # keep deferred entries ours: reset their idle time (JUSTID: no count)
            await self.redis.xclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=0,
                message_ids=list(self._deferred),
                justid=True,
            )

    async def _drained(self) -> bool:
        if self._deferred:
            return False
        rows = await self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=1, consumername=self.consumer
        )
        if not rows:
            return True
        # our own entries that failed: hand them back once more before giving up
        entries = await self._read("0-0", block=False)
        if not entries:
            return True
        before = self.stats.processed + self.stats.dead
        await self._process(await self._with_failures(entries))
        return self.stats.processed + self.stats.dead == before

    def _due_deferred(self) -> list[Entry]:
        now = time.monotonic()
        due = [d.entry for d in self._deferred.values() if d.at <= now]
        for entry in due:
            del self._deferred[entry.id]
        return due

    @staticmethod
    def _in_stream_order(entries: list[Entry]) -> list[Entry]:
        """New entries and deferred ones that are due, merged back into stream order."""
        return sorted(entries, key=lambda e: stream_id(e.id)) if len(entries) > 1 else entries

    # --- processing ------------------------------------------------------------
    async def _process(self, entries: Sequence[Entry]) -> None:
        dead: list[tuple[Entry, str]] = []
        items: list[tuple[Entry, Any]] = []
        for entry in entries:
            if entry.fields is None:
                dead.append((entry, TRIMMED))
                continue
            if entry.failures >= self.cfg.max_deliveries:
                reason = (
                    f"its handler failed {entry.failures} times "
                    f"(MAX_DELIVERIES={self.cfg.max_deliveries})"
                )
                dead.append((entry, reason))
                continue
            try:
                event = self.decode(entry.fields)
            except EventError as exc:
                dead.append((entry, str(exc)))
                continue
            items.append((entry, event))
        if dead:
            await self._dead_letter(dead)
        done = await self.handle_batch(items)
        if done:
            crash_point("before_ack")
            counted = {e.id for e, _ in items if e.failures} | self._failed_ids
            forget = [mid for mid in done if mid in counted]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, self.group, *done)
                if forget:
                    pipe.hdel(self.failures_key, *forget)
                await pipe.execute()
            self._failed_ids.difference_update(forget)
            self.handled.difference_update(done)
            self.stats.processed += len(done)
            metrics.PROCESSED.labels(self.group).inc(len(done))

    async def _dead_letter(self, dead: Sequence[tuple[Entry, str]]) -> None:
        await self.dead_letters.send(self.stream, self.group, dead)
        self.stats.dead += len(dead)


async def leave(redis: AnyRedis, keys: Keys, group: str, consumer: str) -> None:
    """The consumer is no longer live in the group (its heartbeat goes)."""
    with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
        await redis.zrem(keys.heartbeats(group), consumer)


def jittered(base: float) -> float:
    return base * (0.5 + random.random())


__all__ = [
    "TRANSIENT_RETRIES",
    "TRANSIENT_RETRY_S",
    "ConsumerConfig",
    "Deferred",
    "Entry",
    "Handler",
    "Invalid",
    "Lane",
    "Retry",
    "RunStats",
    "Runtime",
    "Transient",
    "dependencies",
    "jittered",
]
