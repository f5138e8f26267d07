"""The alerts webhook: every `mm:alerts` entry is also POSTed to ALERT_WEBHOOK_URL.

A handler for the shared consumer runtime (group `webhook` on the alerts stream), so
workers never wait on HTTP: they only XADD to mm:alerts. The body is Slack- and
Discord-compatible JSON, `{"text": ..., "content": ...}`. A 5xx, a 429 or a network
error is retried with backoff; when every attempt failed the entry stays pending and
the runtime hands it back later (after RECLAIM_IDLE_MS), until MAX_DELIVERIES sends it
to mm:dead. Any other 4xx is a permanent refusal: logged, and the entry is acked.

The group is created at the end of the stream: alerts raised before the forwarder
first ran are not sent. Dead-letter alerts about this group itself are not forwarded
(that would loop while the webhook is down).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from redis.exceptions import ResponseError

from base import logs
from base.clock import iso
from base.logs import one_line, redact
from storage.keys import Keys
from storage.redis import as_text
from storage.streams import Pairs
from workers.parts import Parts
from workers.runtime import Entry, Lane, Transient, jittered

log = logs.get("mmops.alerts")

GROUP = "webhook"
MAX_TEXT = 1900  # Discord refuses content over 2000 characters
RETRY_AFTER_CAP_S = 30.0


def where(url: str) -> str:
    """The webhook named without its secret (Slack and Discord put the token in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"


def alert_text(alert: Mapping[str, str]) -> str:
    """`[mmops] kind: message`, then the figures and the time on a second line."""
    kind = alert.get("kind", "alert")
    message = alert.get("message", "")
    figures = [
        f"{k}={v}" for k, v in alert.items() if k not in ("kind", "message", "ts") and v != ""
    ]
    ts = alert.get("ts", "")
    if ts.isdigit():
        figures.append(f"at {iso(int(ts))}")
    text = f"[mmops] {kind}: {message}"
    if figures:
        text += "\n" + ", ".join(figures)
    text = redact(text)  # whoever wrote the alert, no secret leaves for the chat
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


class WebhookForwarder:
    """Runtime handler: decode an alert entry to a dict, POST it, retry with backoff."""

    group = GROUP

    def __init__(
        self,
        *,
        url: str,
        keys: Keys,
        stop: asyncio.Event | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.stream = keys.alerts
        self.stop = stop or asyncio.Event()
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.sent = 0
        self.refused = 0
        self._session: aiohttp.ClientSession | None = None

    def decode(self, fields: Pairs) -> dict[str, str]:
        return {as_text(k): as_text(v) for k, v in fields}

    def lane(self, event: Any) -> Lane:
        return (GROUP,)  # one lane: alerts arrive in the order they were raised

    async def handle(self, entry: Entry, event: Any) -> None:
        alert: dict[str, str] = event
        if alert.get("kind") == "dead_letter" and alert.get("group") == GROUP:
            log.warning(
                "not forwarding a dead letter of the webhook group itself: %s",
                alert.get("message", ""),
            )
            return
        await self.post({"text": alert_text(alert), "content": alert_text(alert)}, entry.id)

    async def post(self, payload: dict[str, str], entry_id: str = "") -> None:
        """POST once successfully, or raise Transient after `attempts` tries."""
        body = orjson.dumps(payload)
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = jittered(self.backoff_s * 2 ** (attempt - 1))
                if self.stop.is_set():
                    break  # shutting down: leave the entry pending for the next start
                await self._sleep(delay)
            try:
                async with self._client().post(
                    self.url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return
                    detail = redact((await resp.text())[:200].replace("\n", " "))
                    if resp.status != 429 and resp.status < 500:
                        self.refused += 1
                        log.warning(
                            "webhook %s refused alert %s: HTTP %d %s",
                            where(self.url),
                            entry_id,
                            resp.status,
                            detail,
                        )
                        return
                    problem = f"HTTP {resp.status} {detail}".strip()
                    retry_after = _seconds(resp.headers.get("Retry-After"))
                    if retry_after is not None and attempt + 1 < self.attempts:
                        await self._sleep(min(retry_after, RETRY_AFTER_CAP_S))
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = one_line(exc, 200)
        raise Transient(
            f"webhook {where(self.url)} failed {self.attempts} times: {problem or 'stopping'}"
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def ensure_group(app: Parts) -> None:
    """Create the webhook group at the end of mm:alerts (old alerts are not sent)."""
    try:
        await app.redis.xgroup_create(app.keys.alerts, GROUP, id="$", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _seconds(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None
