"""A TCP proxy in front of PostgreSQL that a test or the chaos run can cut and restore.

Cutting drops every proxied connection at once and refuses new ones (the listening
socket is closed), which is what a client sees when the server goes away; restoring
listens again on the same port. `cut_when` cuts the moment the client sends bytes
that match, so a test can cut at an exact point of a transaction (the bytes that
matched are not forwarded). The machine's PostgreSQL itself is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


class PgProxy:
    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        query = dict(parse_qsl(parts.query))
        # a unix-socket server (pgserver: ?host=/dir) is reached through its socket file
        socket_dir = query.pop("host", "") if not parts.hostname else ""
        self.socket = (
            f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir.startswith("/") else ""
        )
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts._replace(query=urlencode(query))
        self.port = 0
        self.cut_when: Callable[[bytes], bool] | None = None
        self.cuts = 0
        self.was_cut = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """DATABASE_URL through the proxy (same user, database and query)."""
        netloc = self._parts.netloc.rsplit("@", 1)
        user = netloc[0] + "@" if len(netloc) == 2 else ""
        return urlunsplit(self._parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore`."""
        self.cuts += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self.was_cut.set()

    async def restore(self) -> None:
        self.cut_when = None
        self.was_cut.clear()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if self.socket:
                server_r, server_w = await asyncio.open_unix_connection(self.socket)
            else:
                server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        for task in (
            asyncio.ensure_future(self._pipe(client_r, server_w, inspect=True)),
            asyncio.ensure_future(self._pipe(server_r, client_w, inspect=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, inspect: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if inspect and self.cut_when is not None and self.cut_when(data):
                    await self.cut()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
