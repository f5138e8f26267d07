"""The HTTP endpoint of a worker process: GET /metrics (Prometheus text), GET /healthz (JSON).

It shares the event loop with the worker, so every client is bounded (issue 11):

* at most `max_connections` at once; when all are taken, a new connection takes the
  slot of the one open longest, so idle or slow clients cannot lock out the scraper;
* the request head (request line and headers) must arrive whole within `deadline_s`,
  with at most `max_header_lines` header lines and `max_head_bytes` in all (one line
  longer than that is refused as soon as it is seen); the response must be written
  within the same deadline;
* a client that breaks a bound is dropped without an answer, and counted in
  `mmops_metrics_http_dropped{reason}`.

Binding is checked at start: a METRICS_PORT in use (or a METRICS_HOST that is not
local) stops the process with one line naming the setting and the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from dataclasses import dataclass, field

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from base import metrics
from base.metrics import HEALTH, HTTP_DROPPED, REGISTRY, Health
from base.settings import Settings, SettingsError


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_connections: int = 32
    deadline_s: float = 5.0  # for the whole exchange: the head in, the response out
    max_header_lines: int = 64
    max_head_bytes: int = 8192


class Oversized(Exception):
    """The request head broke a size bound."""


@dataclass
class MetricsServer:
    health: Health = HEALTH
    limits: Limits = field(default_factory=Limits)
    # open connections, oldest first: the handler's task and its writer
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return len(self._open)

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on host:port; SettingsError naming METRICS_PORT or METRICS_HOST if it cannot."""
        try:
            return await asyncio.start_server(
                self._handle, host, port, limit=self.limits.max_head_bytes
            )
        except OSError as exc:
            raise bind_error(host, port, exc) from None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._open) >= self.limits.max_connections:
            self._evict_oldest()
        self._open[task] = writer
        try:
            async with asyncio.timeout(self.limits.deadline_s):
                path = await self._read_head(reader)
                writer.write(self._respond(path))
                await writer.drain()
        except TimeoutError:
            HTTP_DROPPED.labels("deadline").inc()
        except (Oversized, ValueError):  # ValueError: StreamReader's line over the limit
            HTTP_DROPPED.labels("oversized").inc()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.pop(task, None)
            writer.close()

    def _evict_oldest(self) -> None:
        oldest, writer = next(iter(self._open.items()))
        del self._open[oldest]
        HTTP_DROPPED.labels("evicted").inc()
        writer.transport.abort()
        oldest.cancel()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request's path, once its head has arrived within the bounds."""
        request = await reader.readline()
        size, lines = len(request), 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            size += len(line)
            lines += 1
            if lines > self.limits.max_header_lines or size > self.limits.max_head_bytes:
                raise Oversized
        parts = request.split(b" ")
        return parts[1] if len(parts) >= 3 else b"/"

    def _respond(self, path: bytes) -> bytes:
        if path.startswith(b"/healthz"):
            healthy, ages = self.health.report()
            body = orjson.dumps({"healthy": healthy, "heartbeat_age_seconds": ages})
            status = "200 OK" if healthy else "503 Service Unavailable"
            ctype = "application/json"
        elif path.startswith(b"/metrics"):
            self.health.report()
            body, status, ctype = generate_latest(REGISTRY), "200 OK", CONTENT_TYPE_LATEST
        else:
            body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body


def bind_error(host: str, port: int, exc: OSError) -> SettingsError:
    """A failed bind as one line naming the setting to change and the address."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror) or not exc.errno:
        reason = exc.strerror or str(exc)
    else:
        reason = os.strerror(exc.errno)
    reason = reason.lower()
    if exc.errno == errno.EADDRINUSE:
        return SettingsError(
            f"METRICS_PORT: {where} is already in use (another mmops process?); "
            "give each process its own METRICS_PORT"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SettingsError(f"METRICS_PORT: not allowed to listen on {where} ({reason})")
    return SettingsError(f"METRICS_HOST: cannot listen on {where} ({reason})")


async def serve(settings: Settings, limits: Limits | None = None) -> asyncio.Server | None:
    """The process's endpoint on METRICS_HOST:METRICS_PORT (None when METRICS_PORT is unset)."""
    if settings.metrics_port is None:
        return None
    server = MetricsServer(metrics.HEALTH, limits or Limits())
    return await server.start(settings.metrics_host, settings.metrics_port)


async def close(server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)
