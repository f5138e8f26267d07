"""The registry of consumer groups: each group's handler factory and its own configuration.

Registered once here, read by every way of running a group: `mmops up` and the
single-worker commands (mmops/commands/run.py), `mmops replay`, the sweeper's takeover
of a group with no live consumer (workers/stream_care.py) and the tests.

A group consumes one runtime per stream: the input groups one per shard of the input
stream (MM_STREAM_SHARDS, contract §6), each with a handler of its own (its `attach`
hook learns its runtime, so its stream), sharing what the group's factory opened (the
migrator's PostgreSQL pool) and one bound on the handlers in flight. A session's entries
all lie in one shard, so one runtime sees them in stream order: order within a session
is kept by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from base import logs
from base.settings import Settings
from storage.keys import Keys
from workers.parts import TradingParts
from workers.runtime import ConsumerConfig, Handler, RunStats, Runtime, leave

log = logs.get("mmops.groups")

Close = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Consumer:
    """Makes the group's handler (one per stream it consumes) and closes what they share
    (a pool, a session)."""

    make: Callable[[], Handler]
    close: Close | None = None


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    build: Callable[[TradingParts], Awaitable[Consumer]]
    config: Callable[[Settings], ConsumerConfig]
    on_input: bool = True  # consumes the event stream (else its own, e.g. mm:alerts)

    def enabled(self, settings: Settings) -> bool:
        return self.on_input or bool(settings.alert_webhook_url)

    def streams(self, keys: Keys) -> list[str]:
        """The streams the group consumes: every shard of the input stream, or mm:alerts."""
        return keys.streams if self.on_input else [keys.alerts]


async def _coverage(parts: TradingParts) -> Consumer:
    from workers.coverage import CoverageHandler

    return Consumer(lambda: CoverageHandler(parts))


async def _migrator(parts: TradingParts) -> Consumer:
    from workers.migration import Migrator
    from workers.migrator import MigratorHandler

    migrator = await Migrator.open(parts)  # one pool for every shard's handler
    return Consumer(lambda: MigratorHandler(migrator), migrator.close)


async def _webhook(parts: TradingParts) -> Consumer:
    from workers.alerts import WebhookForwarder, ensure_group, where

    url = parts.settings.alert_webhook_url
    assert url, "the webhook group runs only with ALERT_WEBHOOK_URL"
    await ensure_group(parts)
    forwarder = WebhookForwarder(url=url, keys=parts.keys, stop=parts.stop)
    log.info("forwarding alerts to %s", where(url))
    return Consumer(lambda: forwarder, forwarder.close)


GROUPS: dict[str, Group] = {
    group.name: group
    for group in (
        Group("coverage", _coverage, ConsumerConfig.from_settings),
        # one lane per session and one PostgreSQL connection per lane in flight
        Group(
            "migrator",
            _migrator,
            lambda s: ConsumerConfig.from_settings(s, concurrency=s.migration_pool_size),
        ),
        # alerts are forwarded one at a time, in the order they were raised
        Group(
            "webhook",
            _webhook,
            lambda s: ConsumerConfig.from_settings(s, concurrency=1),
            on_input=False,
        ),
    )
}
INPUT_GROUPS = tuple(name for name, group in GROUPS.items() if group.on_input)


@dataclass
class GroupRuntimes:
    """A group's runtimes, one per stream, run together as one consumer."""

    name: str
    consumer: str
    parts: TradingParts
    runtimes: list[Runtime]
    close: Close | None = None
    _closed: bool = field(default=False, repr=False)

    async def run(self, *, until_drained: bool = False) -> RunStats:
        """Run every runtime until stop (or, draining, until each has nothing left); the
        first that raises stops the others. Stats summed over the streams."""
        try:
            await run_all([partial(r.run, until_drained=until_drained) for r in self.runtimes])
        finally:
            await leave(self.parts.redis, self.parts.keys, self.name, self.consumer)
        return self.stats

    @property
    def stats(self) -> RunStats:
        total = RunStats()
        for runtime in self.runtimes:
            for name in ("processed", "failed", "dead", "reclaimed", "deferred"):
                setattr(total, name, getattr(total, name) + getattr(runtime.stats, name))
            for line in runtime.stats.errors:
                total.note(line)
        return total

    async def aclose(self) -> None:
        if self.close is not None and not self._closed:
            self._closed = True
            await self.close()


async def run_all(loops: list[Callable[[], Awaitable[object]]]) -> None:
    """Run the loops concurrently; the first that raises cancels the others, then is raised."""
    tasks = [asyncio.ensure_future(loop()) for loop in loops]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def runtimes_for(
    name: str,
    parts: TradingParts,
    consumer: str,
    *,
    stop: asyncio.Event | None = None,
    draining: bool = False,
    streams: list[str] | None = None,
) -> GroupRuntimes:
    """Runtimes consuming group `name` as `consumer` on each of its streams (or `streams`),
    with the group's own configuration; `aclose()` once they are done."""
    group = GROUPS[name]
    built = await group.build(parts)
    config = group.config(parts.settings)
    limit = asyncio.Semaphore(config.concurrency)
    runtimes = [
        Runtime(
            parts.redis,
            parts.keys,
            parts.settings,
            built.make(),
            consumer,
            stop=stop if stop is not None else parts.stop,
            draining=draining,
            config=config,
            stream=stream,
            limit=limit,
            leaves=False,
        )
        for stream in (streams if streams is not None else group.streams(parts.keys))
    ]
    return GroupRuntimes(name, consumer, parts, runtimes, built.close)


async def runtime_for(
    name: str,
    parts: TradingParts,
    consumer: str,
    *,
    stop: asyncio.Event | None = None,
    draining: bool = False,
    stream: str | None = None,
) -> tuple[Runtime, Close | None]:
    """One runtime of group `name` on one stream: `stream`, or the group's only one (an
    input group with MM_STREAM_SHARDS > 1 has several: name the shard's stream, or use
    runtimes_for); and what to close once it is done."""
    if stream is None:
        streams = GROUPS[name].streams(parts.keys)
        if len(streams) > 1:
            raise ValueError(f"group {name} consumes {len(streams)} shards: name one stream")
        stream = streams[0]
    group = await runtimes_for(
        name, parts, consumer, stop=stop, draining=draining, streams=[stream]
    )
    [runtime] = group.runtimes
    runtime.leaves = True  # alone in its group: it leaves the heartbeats itself
    return runtime, group.close
