"""The Procfile under the real honcho: two coverage consumers, effects, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from mmops.app import App
from storage.keys import Keys
from tests.conftest import ROOT, wait_for
from tests.helpers import fill, now_ms, orders_per_client_id

HONCHO = ROOT / ".venv" / "bin" / "honcho"
NAMES = ("coverage.1", "coverage.2", "migrator.1", "sweeper.1")

pytestmark = pytest.mark.skipif(not HONCHO.exists(), reason="honcho is not installed in .venv")


def free_base_port() -> int:
    """A base port whose +0, +1 (coverage), +100 (migrator) and +200 (sweeper) are free."""
    for _ in range(50):
        base = random.randrange(20_000, 40_000)
        ports = (base, base + 1, base + 100, base + 200)
        with contextlib.ExitStack() as stack:
            try:
                for port in ports:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError("no free port range")


async def test_honcho_runs_the_procfile(
    tmp_path: Path,
    env: dict[str, str],
    app: App,
    redis: aioredis.Redis,
    keys: Keys,
    pg: asyncpg.Pool,
) -> None:
    base = free_base_port()
    (tmp_path / "empty.env").write_text("")
    output = tmp_path / "honcho.out"
    with output.open("ab") as sink:
        honcho = await asyncio.create_subprocess_exec(
            str(HONCHO),
            "start",
            "-f",
            str(ROOT / "Procfile"),
            "-e",
            str(tmp_path / "empty.env"),
            "-p",
            str(base),
            "-c",
            "coverage=2",
            "--no-colour",
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        async def consumers() -> bool:
            beats = {m.decode() for m in await redis.zrange(keys.heartbeats("coverage"), 0, -1)}
            return len(beats) == 2 and await redis.zcard(keys.heartbeats("migrator")) == 1

        await wait_for(consumers, timeout=30, interval=0.2)
        host = socket.gethostname()
        beats = {m.decode() for m in await redis.zrange(keys.heartbeats("coverage"), 0, -1)}
        assert beats == {f"{host}-coverage-{base}", f"{host}-coverage-{base + 1}"}

        ts = now_ms()
        events = [
            fill(
                "hc-1",
                f"f{n}",
                f"o{n}",
                symbol="SOL/USD",
                price="190.5",
                quantity="0.5",
                fee="0.24",
                ts=ts + n,
            )
            for n in range(20)
        ]
        events.append(
            {"type": "session_ended", "session_id": "hc-1", "ts": str(ts + 50), "fills": "20"}
        )
        for event in events:
            await redis.xadd(keys.stream, event)  # type: ignore[arg-type]

        async def migrated() -> bool:
            row = await pg.fetchrow("SELECT total_fills FROM sessions WHERE id = 'hc-1'")
            return row is not None and row["total_fills"] == 20

        await wait_for(migrated, timeout=30)
        per_client = await orders_per_client_id(app)
        assert len(per_client) == 20 and set(per_client.values()) == {1}
    finally:
        if honcho.returncode is None:
            honcho.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(honcho.wait(), 40)
        except TimeoutError:
            honcho.kill()
            await honcho.wait()
    log = output.read_text(errors="replace")
    for name in NAMES:
        assert f"{name} stopped (rc=0)" in log, log[-3000:]
    for group in ("coverage", "migrator"):
        assert (await redis.xpending(keys.stream, group))["pending"] == 0
