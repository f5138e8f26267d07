"""The shipped supervisord.conf under the real supervisord: effects, kill -9, graceful stop.

The config is copied unchanged into a temporary directory (its %(here)s paths then put
the control socket and pid file there) beside a symlink to the repo's .venv, so the
program definitions are exactly the shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from mmops.app import App
from storage.keys import Keys
from tests.conftest import ROOT, wait_for
from tests.helpers import fill, now_ms, orders_per_client_id

BIN = ROOT / ".venv" / "bin"
PROGRAMS = (
    "coverage:coverage-1",
    "coverage:coverage-2",
    "migrator",
    "sweeper",
)  # as supervisorctl names them
METRICS_PORTS = (9101, 9102, 9201, 9202)

pytestmark = pytest.mark.skipif(
    not (BIN / "supervisord").exists(), reason="supervisor is not installed in .venv"
)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Supervisor:
    conf: Path
    output: Path
    process: asyncio.subprocess.Process

    async def ctl(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "supervisorctl"),
            "-c",
            str(self.conf),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode()

    async def states(self) -> dict[str, tuple[str, int | None]]:
        """program -> (state, pid)."""
        out: dict[str, tuple[str, int | None]] = {}
        for line in (await self.ctl("status")).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in PROGRAMS:
                pid = re.search(r"pid (\d+)", line)
                out[parts[0]] = (parts[1], int(pid.group(1)) if pid else None)
        return out

    async def all_running(self) -> dict[str, tuple[str, int | None]] | None:
        states = await self.states()
        ok = len(states) == len(PROGRAMS) and all(s == "RUNNING" for s, _ in states.values())
        return states if ok else None

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture
async def supervisor(
    tmp_path: Path, env: dict[str, str], pg: asyncpg.Pool
) -> AsyncIterator[Supervisor]:
    busy = [p for p in METRICS_PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"the metrics ports of supervisord.conf are in use by another process: {busy}")
    shutil.copy(ROOT / "supervisord.conf", tmp_path / "supervisord.conf")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    output = tmp_path / "supervisord.out"
    with output.open("ab") as sink:  # O_APPEND: the programs reopen /dev/stdout
        process = await asyncio.create_subprocess_exec(
            str(BIN / "supervisord"),
            "-n",
            "-c",
            str(tmp_path / "supervisord.conf"),
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    sup = Supervisor(tmp_path / "supervisord.conf", output, process)
    try:
        yield sup
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 40)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.kill()
                await process.wait()


async def add(redis: aioredis.Redis, keys: Keys, events: list[dict[str, str]]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.stream, event)  # type: ignore[arg-type]
        await pipe.execute()


def session(sid: str, buys: int, *, end: bool) -> list[dict[str, str]]:
    ts = now_ms()
    out = [{"type": "session_started", "session_id": sid, "pairs": "ETH/USD", "ts": str(ts)}]
    out += [
        fill(
            sid,
            f"{sid}-f{n}",
            f"{sid}-o{n}",
            symbol="ETH/USD",
            price="3300.5",
            quantity="0.05",
            fee="0.41",
            ts=ts + n,
        )
        for n in range(buys)
    ]
    if end:
        out.append(
            {
                "type": "session_ended",
                "session_id": sid,
                "ts": str(ts + buys + 1),
                "fills": str(buys),
            }
        )
    return out


async def pending(redis: aioredis.Redis, keys: Keys, group: str) -> int:
    return int((await redis.xpending(keys.stream, group))["pending"])


async def test_supervisord_runs_the_workers(
    supervisor: Supervisor,
    app: App,
    redis: aioredis.Redis,
    keys: Keys,
    pg: asyncpg.Pool,
) -> None:
    first = await wait_for(supervisor.all_running, timeout=30, interval=0.3)
    # every process serves its own metrics port (RUNNING = up for startsecs; it may still be
    # starting)
    async with aiohttp.ClientSession() as http:

        async def serving() -> bool:
            for port in METRICS_PORTS:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert resp.status in (200, 503)
                except aiohttp.ClientConnectionError:
                    return False
            return True

        await wait_for(serving, timeout=20, interval=0.2)

    # effects: TPs for the buys, the ended session in PostgreSQL
    await add(redis, keys, session("sv-a", 10, end=True))

    async def migrated() -> bool:
        row = await pg.fetchrow("SELECT total_fills, migrated_at FROM sessions WHERE id = 'sv-a'")
        return row is not None and row["total_fills"] == 10 and row["migrated_at"] is not None

    await wait_for(migrated, timeout=30)
    assert sum((await orders_per_client_id(app)).values()) == 10

    # kill -9 one coverage process while it works: restarted, nothing lost or doubled
    await add(redis, keys, session("sv-b", 400, end=False))
    killed = first["coverage:coverage-1"][1]
    assert killed is not None
    consumer = f"{platform.node()}-coverage-1"  # CONSUMER_NAME from the config
    for _ in range(200):  # kill it while it holds entries, if we catch it at that
        if await redis.xpending_range(
            keys.stream, "coverage", min="-", max="+", count=1, consumername=consumer
        ):
            break
        await asyncio.sleep(0.005)
    os.kill(killed, signal.SIGKILL)

    async def restarted() -> bool:
        states = await supervisor.all_running()
        return states is not None and states["coverage:coverage-1"][1] != killed

    await wait_for(restarted, timeout=30, interval=0.3)

    async def covered() -> bool:
        return (
            await redis.hlen(keys.fills("sv-b")) == 400
            and sum((await orders_per_client_id(app)).values()) == 410
            and await pending(redis, keys, "coverage") == 0
        )

    await wait_for(covered, timeout=30, interval=0.1)
    per_client = await orders_per_client_id(app)
    assert len(per_client) == 410 and set(per_client.values()) == {1}
    for position in (await app.book.positions("sv-b")).values():
        assert position.covered == position.filled and position.uncovered == 0

    # graceful stop: every worker exits 0 with nothing left pending
    out = await supervisor.ctl("stop", "all")
    assert all(f"{name}: stopped" in out for name in PROGRAMS), out
    log = supervisor.log()
    for name in ("coverage-1", "coverage-2", "migrator", "sweeper"):
        assert re.search(rf"stopped: {name} \(exit status 0\)", log), log[-3000:]
    assert "exited: coverage-1 (terminated by SIGKILL" in log
    assert await pending(redis, keys, "coverage") == 0
    assert await pending(redis, keys, "migrator") == 0
    await supervisor.ctl("shutdown")
    assert await asyncio.wait_for(supervisor.process.wait(), 30) == 0
