"""The metrics endpoint (mmops/metrics_http.py) with real sockets: bounded against floods,
endless headers, oversized lines and slowloris clients, and a port in use is one line."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator

import orjson
import pytest

from base.metrics import HTTP_DROPPED, REGISTRY, Health
from mmops.metrics_http import Limits, MetricsServer
from tests.conftest import MMOPS


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("mmops_metrics_http_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[MetricsServer, int]]:
    """A server on a free loopback port with small bounds: 8 connections, 1 s deadline."""
    health = Health()
    health.beat("coverage")
    server = MetricsServer(
        health, Limits(max_connections=8, deadline_s=1.0, max_header_lines=20, max_head_bytes=2048)
    )
    listening = await server.start("127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    yield server, port
    listening.close()


async def get(port: int, path: str = "/healthz") -> tuple[str, bytes]:
    """A normal client: (status line, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """The server closed (or reset) the connection without an HTTP answer."""
    try:
        data = await reader.read()
    except ConnectionError:
        return True
    return not data.startswith(b"HTTP/")


async def test_healthz_and_metrics_answer(endpoint: tuple[MetricsServer, int]) -> None:
    _, port = endpoint
    status, body = await get(port)
    assert status == "HTTP/1.1 200 OK"
    assert orjson.loads(body)["healthy"] is True
    status, body = await get(port, "/metrics")
    assert status == "HTTP/1.1 200 OK" and b"mmops_entries_processed" in body
    assert (await get(port, "/nope"))[0] == "HTTP/1.1 404 Not Found"


async def test_a_flood_of_idle_connections_cannot_lock_out_healthz(
    endpoint: tuple[MetricsServer, int],
) -> None:
    server, port = endpoint
    before = dropped("evicted")
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    try:
        await asyncio.sleep(0)  # let the server take them in
        status, _ = await get(port)
        assert status == "HTTP/1.1 200 OK"
        assert server.connections <= 8
        assert dropped("evicted") - before >= 200 - 8
        # the flood's oldest connections were dropped without an answer
        assert await closed_by_server(flood[0][0])
    finally:
        for _, writer in flood:
            writer.close()


async def test_endless_headers_are_dropped(endpoint: tuple[MetricsServer, int]) -> None:
    _, port = endpoint
    before = dropped("oversized")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    with contextlib.suppress(ConnectionError):
        for n in range(10_000):  # far more lines than the bound; the server drops us first
            writer.write(f"X-Header-{n}: y\r\n".encode())
            await writer.drain()
            if reader.at_eof():
                break
    assert await closed_by_server(reader)
    writer.close()
    assert dropped("oversized") > before
    assert (await get(port))[0] == "HTTP/1.1 200 OK"


async def test_an_oversized_line_is_dropped(endpoint: tuple[MetricsServer, int]) -> None:
    _, port = endpoint
    before = dropped("oversized")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(ConnectionError):
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        await writer.drain()
    assert await closed_by_server(reader)
    writer.close()
    assert dropped("oversized") > before
    assert (await get(port))[0] == "HTTP/1.1 200 OK"


async def test_a_slowloris_client_is_dropped_and_others_are_served(
    endpoint: tuple[MetricsServer, int],
) -> None:
    _, port = endpoint
    before = dropped("deadline")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            while not reader.at_eof():  # one header byte at a time, never finishing
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.05)

    slow = asyncio.ensure_future(trickle())
    try:
        for _ in range(3):  # served meanwhile
            assert (await get(port))[0] == "HTTP/1.1 200 OK"
        assert await closed_by_server(reader)  # the deadline drops it
        assert dropped("deadline") > before
    finally:
        slow.cancel()
        writer.close()


async def test_many_slowloris_clients_cannot_lock_out_healthz(
    endpoint: tuple[MetricsServer, int],
) -> None:
    _, port = endpoint
    clients = []
    for _ in range(30):  # more than the 8 connections allowed, each sending a partial head
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        clients.append((reader, writer))
    try:
        assert (await get(port))[0] == "HTTP/1.1 200 OK"
    finally:
        for _, writer in clients:
            writer.close()


def test_a_metrics_port_in_use_is_one_line_naming_it(env: dict[str, str]) -> None:
    """Through the real command, with a port this test holds."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [*MMOPS, "coverage", "--drain"],
            env={**env, "METRICS_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"mmops: METRICS_PORT: 127.0.0.1:{port} is already in use (another mmops process?); "
        "give each process its own METRICS_PORT\n"
    )


def test_a_metrics_host_that_is_not_local_is_one_line_naming_it(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*MMOPS, "coverage", "--drain"],
        env={**env, "METRICS_PORT": "0", "METRICS_HOST": "192.0.2.1"},  # TEST-NET-1
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("mmops: METRICS_HOST: cannot listen on 192.0.2.1:0 (")
    assert len(done.stderr.splitlines()) == 1


async def test_the_worker_serves_healthz_on_a_free_port(env: dict[str, str]) -> None:
    """`mmops coverage` with METRICS_PORT: the endpoint is the bounded one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        *MMOPS,
        "coverage",
        env={**env, "METRICS_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            with contextlib.suppress(OSError):
                status, _ = await get(port)
                if status == "HTTP/1.1 200 OK":
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the worker's /healthz never answered 200")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 1000)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        assert await closed_by_server(reader)
        writer.close()
    finally:
        process.terminate()
        await process.wait()
    assert process.returncode == 0


def test_dropped_counter_is_registered() -> None:
    HTTP_DROPPED.labels("deadline")
    assert "mmops_metrics_http_dropped" in {m.name for m in REGISTRY.collect()}
