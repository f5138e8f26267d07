"""The one consumer runtime every stream worker plugs a handler into.

It owns everything at the Redis boundary: the consumer group, reading (own pending
entries first, then new ones, always with COUNT and BLOCK), per-lane ordering with
bounded concurrency across lanes, acking after the handler returns, reclaiming idle
entries (XAUTOCLAIM, cursor kept), dead-lettering invalid or poison entries,
heartbeats, metrics and graceful shutdown. A fix here fixes every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from base import logs, metrics
from base.faults import crash_point
from base.logs import one_line
from base.settings import Settings, redact_url
from events import Event, EventError, decode
from events.codec import session_of
from storage.keys import Keys
from storage.redis import TRANSIENT_REDIS_ERRORS, as_text, stream_id

log = logs.get("mmops.runtime")


Lane = tuple[str, ...]
"""A path, e.g. (session,), (session, symbol), (session, symbol, order): see `dependencies`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    """How one consumer group reads and handles its stream (each group has its own)."""

    batch_size: int  # COUNT of each XREADGROUP
    concurrency: int  # lanes handled at once
    block_ms: int
    max_deliveries: int
    reclaim_idle_ms: int
    max_entry_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: int) -> ConsumerConfig:
        values = {
            "batch_size": settings.batch_size,
            "concurrency": settings.concurrency,
            "block_ms": settings.block_ms,
            "max_deliveries": settings.max_deliveries,
            "reclaim_idle_ms": settings.reclaim_idle_ms,
            "max_entry_bytes": settings.max_entry_bytes,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes] | None  # None: the payload was trimmed from the stream
    deliveries: int = 1

    @property
    def ms(self) -> int:
        """The entry's XADD time (epoch ms), from its id."""
        return stream_id(self.id)[0]


class Retry(Exception):
    """Not yet: leave the entry pending and hand it back after `after_ms` (not a failure)."""

    def __init__(self, reason: str, after_ms: int = 500) -> None:
        super().__init__(reason)
        self.after_ms = after_ms


class Transient(Exception):
    """A dependency is unavailable; the entry stays pending and is retried later."""


TRANSIENT_RETRY_S = 1.0  # a transient failure is retried in-process after 1, 2, 4 s
TRANSIENT_RETRIES = 3
MAX_NOTED_ERRORS = 20

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (Transient, *TRANSIENT_REDIS_ERRORS)


class Handler(Protocol):
    """A worker's logic. Optional attributes: `stream` (a stream other than the input
    stream, e.g. mm:alerts) and `decode(fields)` (another payload format)."""

    group: str

    def lane(self, event: Event) -> Lane:
        """Entries of one lane (and its ancestor and descendant lanes, see `dependencies`)
        are handled in stream order; other lanes run concurrently."""
        ...

    async def handle(self, entry: Entry, event: Event) -> None:
        """Make the event's effects durable, then return. Raise Retry/Transient to leave it pending."""
        ...


@dataclass
class RunStats:
    processed: int = 0
    failed: int = 0
    dead: int = 0
    reclaimed: int = 0
    deferred: int = 0
    errors: list[str] = field(
        default_factory=list
    )  # the latest failures and deferrals, one line each

    def note(self, line: str) -> None:
        self.errors.append(line)
        del self.errors[:-MAX_NOTED_ERRORS]


@dataclass
class Runtime:
    """Consumes `keys.stream` as `consumer` of `handler.group`."""

    redis: aioredis.Redis
    keys: Keys
    settings: Settings
    handler: Handler
    consumer: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stats: RunStats = field(default_factory=RunStats)
    claim_every_s: float = 1.0
    heartbeat_every_s: float = 2.0
    _claim_cursor: str = "0-0"
    _last_claim: float = 0.0
    _last_heartbeat: float = 0.0
    _deferred: dict[str, tuple[float, Entry]] = field(default_factory=dict)
    _transient_tries: dict[str, int] = field(default_factory=dict)
    draining: bool = False  # one pass: transient failures are left pending, not retried in-process
    config: ConsumerConfig | None = None  # default: from settings (CONSUMER_* settings)
    _in_flight: int = 0

    def __post_init__(self) -> None:
        self.cfg: ConsumerConfig = self.config or ConsumerConfig.from_settings(self.settings)
        self.stream: str = getattr(self.handler, "stream", None) or self.keys.stream
        self.decode: Callable[..., Any] = getattr(self.handler, "decode", None) or (
            lambda fields: decode(fields, max_bytes=self.cfg.max_entry_bytes)
        )

    @property
    def group(self) -> str:
        return self.handler.group

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
                        await self._with_deliveries_and_process(entries)
                        continue
                    backlog = False
                entries = await self._read(">", block=not until_drained)
                entries += self._due_deferred()
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
        await self._leave()
        return self.stats

    async def _leave(self) -> None:
        with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
            await self.redis.zrem(self.keys.heartbeats(self.group), self.consumer)

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
        reply = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: after},
            count=self.cfg.batch_size,
            block=self.cfg.block_ms if block else None,
        )
        metrics.HEALTH.beat(self.group)
        if not reply:
            return []
        messages = cast(list[tuple[bytes, dict[bytes, bytes] | None]], reply[0][1])  # type: ignore[index]
        return [Entry(as_text(mid), fields or None) for mid, fields in messages]

    async def _with_deliveries_and_process(self, entries: list[Entry]) -> None:
        await self._process(await self._with_deliveries(entries))

    async def _with_deliveries(self, entries: list[Entry]) -> list[Entry]:
        """Attach delivery counts (XPENDING) to entries read from a pending list."""
        if not entries:
            return entries
        rows = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=entries[0].id,
            max=entries[-1].id,
            count=len(entries) * 4 + 10,
            consumername=self.consumer,
        )
        counts = {as_text(row["message_id"]): int(row["times_delivered"]) for row in rows}
        return [Entry(e.id, e.fields, counts.get(e.id, e.deliveries)) for e in entries]

    async def _reclaim(self) -> list[Entry]:
        """XAUTOCLAIM entries idle longer than RECLAIM_IDLE_MS (from dead or stuck consumers)."""
        reply = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.cfg.reclaim_idle_ms,
            start_id=self._claim_cursor,
            count=self.cfg.batch_size,
        )
        start, self._claim_cursor = self._claim_cursor, as_text(reply[0])
        claimed = [
            Entry(as_text(mid), fields or None) for mid, fields in reply[1] if mid is not None
        ]
        deleted = [as_text(mid) for mid in reply[2]] if len(reply) > 2 and reply[2] else []
        if len(claimed) < len(reply[1]):  # Redis 6.2: a trimmed entry is a nil, still pending
            deleted += await self._trimmed(start, self._claim_cursor, {e.id for e in claimed})
        claimed = [e for e in claimed if e.id not in self._deferred]
        if deleted:  # Redis 7 drops trimmed entries from the PEL itself (the XACK is a no-op)
            await self._dead_letter(
                [
                    (Entry(mid, None), "entry payload is missing (trimmed from the stream)")
                    for mid in deleted
                ]
            )
        if claimed:
            self.stats.reclaimed += len(claimed)
            metrics.RECLAIMED.labels(self.group).inc(len(claimed))
            log.info("reclaimed %d idle entries", len(claimed), extra={"group": self.group})
        return await self._with_deliveries(claimed)

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
        metrics.PENDING.labels(self.group).set(int(pending["pending"]))
        for info in groups:
            if as_text(info["name"]) == self.group:
                lag = info.get("lag")
                metrics.LAG.labels(self.group).set(-1 if lag is None else int(lag))
        if self._deferred:  # keep deferred entries ours: reset their idle time, not their count
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
        await self._with_deliveries_and_process(entries)
        return self.stats.processed + self.stats.dead == before

    def _due_deferred(self) -> list[Entry]:
        now = time.monotonic()
        due = [entry for at, entry in self._deferred.values() if at <= now]
        for entry in due:
            del self._deferred[entry.id]
        return due

    # --- processing ------------------------------------------------------------
    async def _process(self, entries: Sequence[Entry]) -> None:
        dead: list[tuple[Entry, str]] = []
        items: list[tuple[Entry, Event]] = []
        for entry in entries:
            if entry.fields is None:
                dead.append((entry, "entry payload is missing (trimmed from the stream)"))
                continue
            if entry.deliveries > self.cfg.max_deliveries:
                dead.append(
                    (
                        entry,
                        f"delivered {entry.deliveries} times (MAX_DELIVERIES={self.cfg.max_deliveries})",
                    )
                )
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
            await self.redis.xack(self.stream, self.group, *done)
            self.stats.processed += len(done)
            metrics.PROCESSED.labels(self.group).inc(len(done))

    async def handle_batch(self, items: Sequence[tuple[Entry, Event]]) -> list[str]:
        """Run decoded entries through the handler in lane order, concurrently across lanes;
        the ids whose effects are done. Acks nothing (replay uses it as it is)."""
        if not items:
            return []
        waits = dependencies([self.handler.lane(event) for _, event in items])
        loop = asyncio.get_running_loop()
        finished: list[asyncio.Future[float | None]] = [loop.create_future() for _ in items]
        limit = asyncio.Semaphore(self.cfg.concurrency)
        done: list[str] = []
        await asyncio.gather(
            *(self._run_entry(i, items, waits[i], finished, limit, done) for i in range(len(items)))
        )
        return done

    async def _run_entry(
        self,
        index: int,
        items: Sequence[tuple[Entry, Event]],
        waits: list[int],
        finished: list[asyncio.Future[float | None]],
        limit: asyncio.Semaphore,
        done: list[str],
    ) -> None:
        """Handle one entry once the earlier entries of its lane family are through.

        An entry behind one that was deferred is deferred with it; behind one left
        pending (a failure), it is left pending too, so lane order survives retries.
        """
        entry, event = items[index]
        outcome: float | None = None
        try:
            for earlier in waits:
                held = await finished[earlier]
                if held is not None:
                    if held != LEFT_PENDING:
                        self._deferred[entry.id] = (held, entry)
                    outcome = held
                    return
            async with limit:
                outcome = await self._handle(entry, event)
            if outcome is None:
                done.append(entry.id)
        finally:
            finished[index].set_result(outcome if outcome is not None else None)

    async def _handle(self, entry: Entry, event: Event) -> float | None:
        """Run the handler: None when done, else when to retry (or LEFT_PENDING)."""
        started = time.perf_counter()
        try:
            await self.handler.handle(entry, event)
        except Retry as exc:
            at = time.monotonic() + exc.after_ms / 1000
            self._deferred[entry.id] = (at, entry)
            self.stats.deferred += 1
            self.stats.note(f"{entry.id} not ready: {exc}")
            log.debug("deferred %s: %s", entry.id, exc, extra={"group": self.group})
            return at
        except TRANSIENT_ERRORS as exc:
            # a dependency hiccup (e.g. a stale connection after a Redis restart): try again
            # shortly, a few times, instead of waiting RECLAIM_IDLE_MS; then it is left to the
            # reclaim, whose deliveries count towards MAX_DELIVERIES
            self._failed(entry, exc, trace=False)
            tries = self._transient_tries.get(entry.id, 0)
            if tries >= TRANSIENT_RETRIES or self.draining:  # a drain makes one pass, no waiting
                self._transient_tries.pop(entry.id, None)
                return LEFT_PENDING
            self._transient_tries[entry.id] = tries + 1
            at = time.monotonic() + TRANSIENT_RETRY_S * (1 << tries)
            self._deferred[entry.id] = (at, entry)
            return at
        except Exception as exc:  # a bug or an unexpected error: keep it pending, count deliveries
            self._failed(entry, exc, trace=True)
            return LEFT_PENDING
        metrics.LATENCY.labels(self.group).observe(time.perf_counter() - started)
        if self._transient_tries:
            self._transient_tries.pop(entry.id, None)
        return None

    def _failed(self, entry: Entry, exc: BaseException, *, trace: bool) -> None:
        self.stats.failed += 1
        metrics.FAILED.labels(self.group).inc()
        message = one_line(exc)
        self.stats.note(f"{entry.id}: {message}")
        log.warning(
            "entry %s left pending: %s",
            entry.id,
            message,
            exc_info=exc if trace else None,
            extra={
                "group": self.group,
                "deliveries": entry.deliveries,
                "error_type": type(exc).__name__,
            },
        )

    async def _dead_letter(self, dead: Iterable[tuple[Entry, str]], *, ack: bool = True) -> None:
        """XADD each entry with its reason to mm:dead and XACK it, in one transaction."""
        items = list(dead)
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry, reason in items:
                record: dict[str | bytes, str | bytes] = {
                    "stream": self.stream,
                    "id": entry.id,
                    "group": self.group,
                    "error": reason,
                    "deliveries": str(entry.deliveries),
                }
                for key, value in (entry.fields or {}).items():
                    name = (
                        key
                        if key not in (b"stream", b"id", b"group", b"error", b"deliveries")
                        else b"orig_" + key
                    )
                    record[name] = value
                pipe.xadd(self.keys.dead, record)  # type: ignore[arg-type]
                pipe.xadd(
                    self.keys.alerts,
                    {
                        "kind": "dead_letter",
                        "message": f"{self.stream} {entry.id} -> {self.keys.dead}: {reason}",
                        "group": self.group,
                        "entry_id": entry.id,
                        "session_id": session_of(entry.fields) or "",
                    },
                )
            if ack:
                pipe.xack(self.stream, self.group, *[e.id for e, _ in items])
            await pipe.execute()
        self.stats.dead += len(items)
        metrics.DEAD.labels(self.group).inc(len(items))
        for entry, reason in items:
            log.warning("dead-lettered %s: %s", entry.id, reason, extra={"group": self.group})


LEFT_PENDING = -1.0  # an entry failed: it and the entries behind it wait for a reclaim


def dependencies(lanes: Sequence[Lane]) -> list[list[int]]:
    """For each entry, the earlier entries it must wait for.

    A lane is a path: (session,), (session, symbol), (session, symbol, order). An entry
    waits for the latest earlier entry of its own lane, of each ancestor lane (a prefix)
    and of each descendant lane: a pair's sell waits for the pair's buys before it, buys
    of different orders run side by side.
    """
    last: dict[Lane, int] = {}
    below: dict[Lane, set[Lane]] = {}
    waits: list[list[int]] = []
    for index, lane in enumerate(lanes):
        ancestors = [lane[:k] for k in range(1, len(lane))]
        found = {last[a] for a in ancestors if a in last}
        if lane in last:
            found.add(last[lane])
        found.update(last[d] for d in below.get(lane, ()))
        waits.append(sorted(found))
        last[lane] = index
        for ancestor in ancestors:
            below.setdefault(ancestor, set()).add(lane)
    return waits


def jittered(base: float) -> float:
    return base * (0.5 + random.random())
