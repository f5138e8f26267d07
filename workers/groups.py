"""The registry of consumer groups: each group's handler factory and its own configuration.

Registered once here, read by every way of running a group: `mmops up` and the
single-worker commands (mmops/commands/run.py), `mmops replay`, the sweeper's takeover
of a group with no live consumer (workers/stream_care.py) and the tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from base import logs
from base.settings import Settings
from workers.parts import TradingParts
from workers.runtime import ConsumerConfig, Handler, Runtime

log = logs.get("mmops.groups")

Close = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Consumer:
    """A built handler and what closes the resources it opened (a pool, a session)."""

    handler: Handler
    close: Close | None = None


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    build: Callable[[TradingParts], Awaitable[Consumer]]
    config: Callable[[Settings], ConsumerConfig]
    on_input: bool = True  # consumes the event stream (else its own, e.g. mm:alerts)

    def enabled(self, settings: Settings) -> bool:
        return self.on_input or bool(settings.alert_webhook_url)


async def _coverage(parts: TradingParts) -> Consumer:
    from workers.coverage import CoverageHandler

    return Consumer(CoverageHandler(parts))


async def _migrator(parts: TradingParts) -> Consumer:
    from workers.migrator import MigratorHandler

    handler = await MigratorHandler.create(parts)
    return Consumer(handler, handler.close)


async def _webhook(parts: TradingParts) -> Consumer:
    from workers.alerts import WebhookForwarder, ensure_group, where

    url = parts.settings.alert_webhook_url
    assert url, "the webhook group runs only with ALERT_WEBHOOK_URL"
    await ensure_group(parts)
    forwarder = WebhookForwarder(url=url, keys=parts.keys, stop=parts.stop)
    log.info("forwarding alerts to %s", where(url))
    return Consumer(forwarder, forwarder.close)


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


async def runtime_for(
    name: str,
    parts: TradingParts,
    consumer: str,
    *,
    stop: asyncio.Event | None = None,
    draining: bool = False,
) -> tuple[Runtime, Close | None]:
    """A runtime consuming group `name` as `consumer`, with the group's own configuration;
    and what to close once it is done."""
    group = GROUPS[name]
    built = await group.build(parts)
    runtime = Runtime(
        parts.redis,
        parts.keys,
        parts.settings,
        built.handler,
        consumer,
        stop=stop if stop is not None else parts.stop,
        draining=draining,
        config=group.config(parts.settings),
    )
    return runtime, built.close
