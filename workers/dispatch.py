"""Running one batch of decoded entries through a handler (the runtime's dispatch).

Lane order is kept (workers/lanes.py): an entry waits for the earlier entries of its
lane family; lanes run concurrently up to CONSUMER_CONCURRENCY. The entries a bulk
handler takes and that wait for nothing go in one call (the coverage hot path); the
rest go one by one. An entry that is not ready is deferred (it comes back merged into
stream order); a transient failure is retried in-process a few times, then left to the
reclaim; any other failure is counted towards poison (MAX_DELIVERIES) and left pending.
Nothing here acks: workers/runtime.py acks what this returns as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from base import logs, metrics
from base.logs import one_line
from storage.redis import TRANSIENT_REDIS_ERRORS, AnyRedis
from storage.streams import Entry
from workers.handler import (
    TRANSIENT_ERRORS,
    BulkHandler,
    ConsumerConfig,
    Handler,
    Invalid,
    Retry,
    RunStats,
)
from workers.lanes import LEFT_PENDING, NOT_HANDLED, Lane, dependencies

log = logs.get("mmops.runtime")

TRANSIENT_RETRY_S = 1.0  # a transient failure is retried in-process after 1, 2, 4 s
TRANSIENT_RETRIES = 3


@dataclass
class Deferred:
    at: float  # time.monotonic() when it is due
    entry: Entry
    lane: Lane


class Dispatch:
    """The dispatch half of workers.runtime.Runtime (which holds these attributes)."""

    redis: AnyRedis
    handler: Handler
    stats: RunStats
    cfg: ConsumerConfig
    draining: bool
    limit: asyncio.Semaphore | None
    failures_key: str
    handled: set[str]
    _deferred: dict[str, Deferred]
    _transient_tries: dict[str, int]
    _failed_ids: set[str]

    @property
    def group(self) -> str:
        return self.handler.group

    async def _dead_letter(self, dead: Sequence[tuple[Entry, str]]) -> None:
        raise NotImplementedError

    async def handle_batch(self, items: Sequence[tuple[Entry, Any]]) -> list[str]:
        """Run decoded entries through the handler in lane order, concurrently across lanes;
        the ids whose effects are done. Acks nothing (replay uses it as it is).

        Entries this runtime deferred earlier are still in front of their lanes: an entry
        whose lane conflicts with one of them is deferred with it, so a lane's order
        survives a deferral (the deferred entry comes back merged into stream order)."""
        if not items:
            return []
        held = list(self._deferred.values())
        lanes = [d.lane for d in held] + [self.handler.lane(event) for _, event in items]
        waits = dependencies(lanes)[len(held) :]
        loop = asyncio.get_running_loop()
        finished: list[asyncio.Future[float | None]] = [loop.create_future() for _ in lanes]
        for index, deferred in enumerate(held):
            finished[index].set_result(deferred.at)
        limit = self.limit or asyncio.Semaphore(self.cfg.concurrency)
        done: list[str] = []
        first = len(held)
        if getattr(self.handler, "handle_bulk", None) is not None:
            await self._bulk(cast(BulkHandler, self.handler), items, waits, finished, first, done)
        await asyncio.gather(
            *(
                self._run_entry(
                    k + first, items[k], lanes[k + first], waits[k], finished, limit, done
                )
                for k in range(len(items))
                if not finished[k + first].done()
            )
        )
        return done

    async def _bulk(
        self,
        handler: BulkHandler,
        items: Sequence[tuple[Entry, Any]],
        waits: list[list[int]],
        finished: list[asyncio.Future[float | None]],
        first: int,
        done: list[str],
    ) -> None:
        """The entries the handler takes in bulk and that wait for nothing else of the batch
        (nor for a deferred entry): handled together, in one call (the coverage hot path).
        What the handler leaves (NOT_HANDLED) goes the one-by-one way with the rest."""
        bulk: list[int] = []
        taken: set[int] = set()
        for k, (_, event) in enumerate(items):
            if handler.bulk(event) and all(w in taken for w in waits[k]):
                bulk.append(k)
                taken.add(k + first)
        if not bulk:
            return
        started = time.perf_counter()
        batch = [items[k] for k in bulk]
        try:
            outcomes = await handler.handle_bulk(batch)
        except TRANSIENT_ERRORS as exc:  # nothing is lost: the entries go one by one
            log.warning("bulk handling of %d entries failed: %s", len(bulk), one_line(exc))
            return
        elapsed = time.perf_counter() - started
        latency = metrics.LATENCY.labels(self.group)
        for k, outcome in zip(bulk, outcomes, strict=True):
            if outcome == NOT_HANDLED:
                continue
            finished[k + first].set_result(outcome)
            if outcome is None:
                entry = items[k][0]
                done.append(entry.id)
                self.handled.add(entry.id)
                latency.observe(elapsed / len(bulk))

    async def _run_entry(
        self,
        index: int,
        item: tuple[Entry, Any],
        lane: Lane,
        waits: list[int],
        finished: list[asyncio.Future[float | None]],
        limit: asyncio.Semaphore,
        done: list[str],
    ) -> None:
        """Handle one entry once the earlier entries of its lane family are through.

        An entry behind one that was deferred is deferred with it; behind one left
        pending (a failure), it is left pending too, so lane order survives retries.
        """
        entry, event = item
        outcome: float | None = None
        try:
            for earlier in waits:
                held = await finished[earlier]
                if held is not None:
                    if held != LEFT_PENDING:
                        self._deferred[entry.id] = Deferred(held, entry, lane)
                    outcome = held
                    return
            async with limit:
                outcome = await self._handle(entry, event, lane)
            if outcome is None:
                done.append(entry.id)
                self.handled.add(entry.id)
        finally:
            finished[index].set_result(outcome)

    async def _handle(self, entry: Entry, event: Any, lane: Lane) -> float | None:
        """Run the handler: None when done, else when to retry (or LEFT_PENDING)."""
        started = time.perf_counter()
        try:
            await self.handler.handle(entry, event)
        except Retry as exc:
            at = time.monotonic() + exc.after_ms / 1000
            self._deferred[entry.id] = Deferred(at, entry, lane)
            self.stats.deferred += 1
            self.stats.note(f"{entry.id} not ready: {exc}")
            log.debug("deferred %s: %s", entry.id, exc, extra={"group": self.group})
            return at
        except Invalid as exc:  # invalid for the state it met: a dead letter, not a failure
            await self._dead_letter([(entry, str(exc))])
            return None
        except TRANSIENT_ERRORS as exc:
            # a dependency hiccup (e.g. a stale connection after a Redis restart): try again
            # shortly, a few times; then it is left to the reclaim. Not a failure of the entry.
            self._failed(entry, exc, trace=False)
            tries = self._transient_tries.get(entry.id, 0)
            if tries >= TRANSIENT_RETRIES or self.draining:  # a drain makes one pass, no waiting
                self._transient_tries.pop(entry.id, None)
                return LEFT_PENDING
            self._transient_tries[entry.id] = tries + 1
            at = time.monotonic() + TRANSIENT_RETRY_S * (1 << tries)
            self._deferred[entry.id] = Deferred(at, entry, lane)
            return at
        except Exception as exc:  # a bug or bad data: keep it pending, count the failure
            self._failed(entry, exc, trace=True)
            await self._count_failure(entry)
            return LEFT_PENDING
        metrics.LATENCY.labels(self.group).observe(time.perf_counter() - started)
        if self._transient_tries:
            self._transient_tries.pop(entry.id, None)
        return None

    async def _count_failure(self, entry: Entry) -> None:
        self._failed_ids.add(entry.id)
        with contextlib.suppress(*TRANSIENT_REDIS_ERRORS):
            await self.redis.hincrby(self.failures_key, entry.id, 1)

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
                "failures": entry.failures,
                "error_type": type(exc).__name__,
            },
        )
