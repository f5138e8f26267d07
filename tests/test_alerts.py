"""The alerts webhook forwarder against a local HTTP server (aiohttp.web on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from base.settings import Settings
from mmops.app import App
from storage.keys import Keys
from storage.servers import free_port
from workers.alerts import GROUP, WebhookForwarder, alert_text, ensure_group, where
from workers.groups import GROUPS, runtime_for
from workers.runtime import Runtime


class Hook:
    """A webhook endpoint that answers with the scripted statuses, then 200."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.delays: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "boom")


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    endpoint = Hook()
    app = web.Application()
    app.router.add_post("/hooks/T000/B000/secret-token", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield endpoint, f"http://127.0.0.1:{port}/hooks/T000/B000/secret-token"
    await runner.cleanup()


Drain = Callable[..., Awaitable[WebhookForwarder]]


@pytest.fixture
def drain(app: App, hook: tuple[Hook, str]) -> Drain:
    async def run(**options: Any) -> WebhookForwarder:
        forwarder = WebhookForwarder(
            url=hook[1], keys=app.keys, stop=app.stop, backoff_s=0.01, **options
        )
        try:
            await Runtime(
                app.redis, app.keys, app.settings, forwarder, "alerts-1", stop=app.stop
            ).run(until_drained=True)
        finally:
            await forwarder.close()
        return forwarder

    return run


async def pending(redis: aioredis.Redis, keys: Keys) -> int:
    return int((await redis.xpending(keys.alerts, GROUP))["pending"])


async def test_500_then_success(
    app: App, hook: tuple[Hook, str], drain: Drain, redis: aioredis.Redis, keys: Keys
) -> None:
    endpoint, _ = hook
    await ensure_group(app)
    endpoint.statuses = [500]
    await app.alert(
        "stop_loss", "daily loss 1200.50 USD beyond the limit 1000", pnl="-1200.50", limit="1000"
    )
    forwarder = await drain()
    assert len(endpoint.received) == 2 and forwarder.sent == 1
    body = endpoint.received[1]
    assert body["text"] == body["content"]
    assert body["text"].startswith(
        "[mmops] stop_loss: daily loss 1200.50 USD beyond the limit 1000\npnl=-1200.50, "
        "limit=1000, at 20"
    )
    assert await pending(redis, keys) == 0


async def test_failing_webhook_leaves_the_alert_pending(
    app: App, hook: tuple[Hook, str], drain: Drain, redis: aioredis.Redis, keys: Keys
) -> None:
    endpoint, _ = hook
    await ensure_group(app)
    endpoint.statuses = [503, 502, 500, 429]  # every attempt of the first delivery fails
    await app.alert("circuit_open", "kraken unreachable")
    async with asyncio.timeout(20):
        forwarder = await drain(attempts=4)
    # the runtime handed the pending entry back once more before returning: delivered then
    assert len(endpoint.received) == 5 and forwarder.sent == 1
    assert await pending(redis, keys) == 0
    endpoint.statuses = [500] * 8
    await app.alert("circuit_open", "again")
    forwarder = await drain(attempts=2)
    assert forwarder.sent == 0 and await pending(redis, keys) == 1  # kept for a later delivery


async def test_refused_alert_is_not_retried(
    app: App, hook: tuple[Hook, str], drain: Drain, redis: aioredis.Redis, keys: Keys
) -> None:
    endpoint, _ = hook
    await ensure_group(app)
    endpoint.statuses = [400]
    await app.alert("migration_overdue", "s-1 ended 20 min ago")
    forwarder = await drain()
    assert len(endpoint.received) == 1 and forwarder.refused == 1
    assert await pending(redis, keys) == 0


async def test_timeouts_are_retried(app: App, hook: tuple[Hook, str], drain: Drain) -> None:
    endpoint, _ = hook
    await ensure_group(app)
    endpoint.delays = [0.5]  # the first request times out
    await app.alert("dead_letter", "x")
    forwarder = await drain(timeout_s=0.2, attempts=2)
    assert forwarder.sent == 1 and len(endpoint.received) == 2


async def test_old_alerts_and_own_dead_letters_are_not_sent(
    app: App, hook: tuple[Hook, str], drain: Drain, redis: aioredis.Redis, keys: Keys
) -> None:
    endpoint, _ = hook
    await app.alert("stop_loss", "before the forwarder existed")
    await ensure_group(app)
    await redis.xadd(
        keys.alerts, {"kind": "dead_letter", "message": "mm:alerts 1-0 -> mm:dead", "group": GROUP}
    )
    await redis.xadd(
        keys.alerts,
        {"kind": "dead_letter", "message": "mm:events 2-0 -> mm:dead", "group": "coverage"},
    )
    await drain()
    assert [b["text"].splitlines()[0] for b in endpoint.received] == [
        "[mmops] dead_letter: mm:events 2-0 -> mm:dead"
    ]


@pytest.mark.redis  # opens an App of its own
async def test_webhook_group_wiring(settings: Settings, hook: tuple[Hook, str]) -> None:
    """The registry runs the webhook group only with ALERT_WEBHOOK_URL, and it forwards."""
    endpoint, url = hook
    assert not GROUPS["webhook"].enabled(settings)
    app = await App.open(dataclasses.replace(settings, alert_webhook_url=url))
    assert GROUPS["webhook"].enabled(app.settings)
    try:
        runtime, close = await runtime_for("webhook", app, app.settings.consumer)
        await app.alert("risk_halt", "halted")
        await runtime.run(until_drained=True)
    finally:
        if close is not None:
            await close()
        await app.close()
    assert [b["content"].splitlines()[0] for b in endpoint.received] == [
        "[mmops] risk_halt: halted"
    ]


def test_text_and_redaction() -> None:
    assert where("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"
    long = alert_text({"kind": "k", "message": "m" * 5000})
    assert len(long) == 1900 and long.endswith("…")
    assert (
        alert_text({"kind": "k", "message": "m", "ts": "1763700000000"})
        == "[mmops] k: m\nat 2025-11-21T04:40:00.000Z"
    )
