"""`mmops status`: healthy with a live worker; each unhealthy condition is named."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from base.settings import Settings
from events import encode
from events.schema import SessionStarted
from mmops.app import App
from mmops.commands.status import fmt_ms, render_table
from storage.keys import Keys
from tests.conftest import MMOPS, ROOT, wait_for
from workers.coverage import CoverageHandler
from workers.runtime import Runtime


async def mmops(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def live_coverage(settings: Settings) -> AsyncIterator[None]:
    app = await App.open(settings)
    handler = CoverageHandler(app)
    runtime = Runtime(
        app.redis, app.keys, settings, handler, "worker-1", stop=app.stop, heartbeat_every_s=0.2
    )
    task = asyncio.ensure_future(runtime.run())
    try:
        yield
    finally:
        app.stop.set()
        await task
        await app.close()


def event(n: int) -> dict[str, str]:
    return encode(SessionStarted(session_id=f"s-{n}", pairs=("BTC/USD",), ts=1_763_700_000_000))


async def test_healthy_with_a_live_worker(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    await redis.set(keys.sweeper_lease, "host-1-42", px=60_000)
    async with live_coverage(settings):
        for n in range(3):
            await redis.xadd(keys.stream, event(n))  # type: ignore[arg-type]

        async def processed() -> bool:
            groups = await redis.xinfo_groups(keys.stream)
            return (
                bool(groups)
                and groups[0].get("lag") in (0, None)
                and groups[0]["pending"] == 0
                and groups[0]["last-delivered-id"]
                == (await redis.xinfo_stream(keys.stream))["last-generated-id"]
            )

        await wait_for(processed)
        code, out, err = await mmops(env, "status")
        assert code == 0, out + err
        assert out.rstrip().endswith("healthy")
        assert "sweeper lease: host-1-42 (expires in" in out
        assert "risk halt: off" in out
        group_line = next(line for line in out.splitlines() if line.strip().startswith("coverage"))
        columns = group_line.split()
        assert columns[:5] + columns[6:] == ["coverage", "1", "1", "0", "-", "0"]
        assert columns[5] in ("0", "?")  # lag: Redis 6.2 does not report it
        assert any("worker-1" in line and "live" in line for line in out.splitlines())
        code, out, _ = await mmops(env, "status", "--json")
        report = json.loads(out)
        assert code == 0 and report["healthy"] and report["problems"] == []
        stream = report["streams"][0]
        assert stream["stream"] == keys.stream and stream["length"] == 3
        assert stream["groups"][0]["consumers"][0]["name"] == "worker-1"


async def test_unhealthy_reasons(
    env: dict[str, str], settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    ids = [await redis.xadd(keys.stream, event(n)) for n in range(4)]  # type: ignore[arg-type]
    await redis.xgroup_create(keys.stream, "coverage", id="0")
    # a consumer took two entries and died: they stay pending; the rest is lag with nobody reading
    await redis.xreadgroup("coverage", "ghost", {keys.stream: ">"}, count=2)
    await redis.xdel(keys.stream, ids[3])  # a deleted entry makes the lag unknown
    await redis.set(keys.risk_halt, json.dumps({"pnl": "-1200.50", "limit": "1000"}))
    await redis.xadd(
        keys.dead,
        {
            "stream": keys.stream,
            "id": "1-0",
            "group": "coverage",
            "error": "type: missing",
            "deliveries": "1",
        },
    )
    await asyncio.sleep(3 * settings.reclaim_idle_ms / 1000 + 0.2)
    code, out, err = await mmops(env, "status")
    assert code == 1, out + err
    problems = out[out.index("UNHEALTHY:") :]
    assert (
        f"{keys.stream}/coverage: 2 pending entries idle longer than 3 x RECLAIM_IDLE_MS (1.5s)"
        in problems
    )
    assert f"{keys.stream}/coverage: no live consumer (lag ?, 2 pending)" in problems
    assert "risk halt is set" in problems
    assert "dead letter" in problems
    assert "risk halt: ON" in out and "-1200.50" in out
    assert "warning: no live sweeper lease" in out
    group_line = next(line for line in out.splitlines() if line.strip().startswith("coverage"))
    assert group_line.split()[:4] == ["coverage", "1", "0", "2"] and group_line.split()[-2:] == [
        "?",
        "1",
    ]
    code, out, _ = await mmops(env, "status", "--json", "--dead-window", "0")
    report = json.loads(out)
    assert (
        code == 1 and not report["healthy"] and len(report["problems"]) == 3
    )  # the dead letter is now too old
    assert report["risk_halt"] == {"pnl": "-1200.50", "limit": "1000"}
    assert report["streams"][0]["groups"][0]["lag"] is None


def test_table_and_durations() -> None:
    table = render_table(["NAME", "N"], [["a", 1], ["long name", 100]])
    assert table.splitlines() == ["NAME         N", "a            1", "long name  100"]
    assert [fmt_ms(v) for v in (5, 1500, 65_000, 7_500_000, 200_000_000)] == [
        "5ms",
        "1.5s",
        "1m05s",
        "2h05m",
        "2d07h",
    ]
