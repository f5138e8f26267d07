"""What a worker plugs into the consumer runtime: its handler, and how it reports back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from base.settings import Settings
from events import Event, EventError
from storage.redis import TRANSIENT_REDIS_ERRORS
from storage.streams import Entry
from workers.lanes import Lane

MAX_NOTED_ERRORS = 20


class Retry(Exception):
    """Not yet: leave the entry pending and hand it back after `after_ms` (not a failure)."""

    def __init__(self, reason: str, after_ms: int = 500) -> None:
        super().__init__(reason)
        self.after_ms = after_ms


class Invalid(EventError):
    """An event valid on the wire that the state it meets makes invalid (e.g. a session's
    MAX_PAIRS): the runtime dead-letters it at once with this one-line reason."""


class Transient(Exception):
    """A dependency is unavailable; the entry stays pending and is retried later."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (Transient, *TRANSIENT_REDIS_ERRORS)


class Handler(Protocol):
    """A worker's logic. Optional attributes: `stream` (a stream other than the input
    stream, e.g. mm:alerts), `decode(fields)` (another payload format) and
    `attach(runtime)` (called once with the runtime that consumes for it), and the bulk
    pair `bulk(event) -> bool` / `handle_bulk(items) -> outcomes` (entries it can handle
    together; per entry None when done or NOT_HANDLED to go the one-by-one way)."""

    group: str

    def lane(self, event: Any) -> Lane:
        """Entries of one lane (and its ancestor and descendant lanes, see workers/lanes.py)
        are handled in stream order; other lanes run concurrently."""
        ...

    async def handle(self, entry: Entry, event: Any) -> None:
        """Make the event's effects durable, then return. Raise Retry/Transient to leave it
        pending, Invalid to dead-letter it; any other exception counts as a failure of
        this entry."""
        ...


class BulkHandler(Handler, Protocol):
    """A handler that also takes some entries of a batch together."""

    def bulk(self, event: Any) -> bool: ...

    async def handle_bulk(self, items: Sequence[tuple[Entry, Any]]) -> list[float | None]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    """How one consumer group reads and handles its stream (each group has its own)."""

    batch_size: int  # COUNT of each XREADGROUP
    concurrency: int  # lanes handled at once
    block_ms: int
    max_deliveries: int  # handler failures after which an entry is dead-lettered
    reclaim_idle_ms: int
    max_entry_bytes: int
    dead_maxlen: int

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: int) -> ConsumerConfig:
        values = {
            "batch_size": settings.batch_size,
            "concurrency": settings.concurrency,
            "block_ms": settings.block_ms,
            "max_deliveries": settings.max_deliveries,
            "reclaim_idle_ms": settings.reclaim_idle_ms,
            "max_entry_bytes": settings.max_entry_bytes,
            "dead_maxlen": settings.dead_maxlen,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class RunStats:
    processed: int = 0
    failed: int = 0
    dead: int = 0
    reclaimed: int = 0
    deferred: int = 0
    errors: list[str] = field(default_factory=list)  # latest failures and deferrals, one line each

    def note(self, line: str) -> None:
        self.errors.append(line)
        del self.errors[:-MAX_NOTED_ERRORS]


__all__ = [
    "TRANSIENT_ERRORS",
    "ConsumerConfig",
    "Event",
    "Handler",
    "Invalid",
    "Lane",
    "Retry",
    "RunStats",
    "Transient",
]
