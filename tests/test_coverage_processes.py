"""No duplicate orders with real processes: SIGKILL at every step, and racing consumers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from decimal import Decimal

import pytest

from base.faults import POINTS
from mmops.app import App
from tests.conftest import MMOPS, wait_for
from tests.helpers import fill, orders_per_client_id, placed_by_position, takeprofit_entries


def start_worker(env: dict[str, str], name: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*MMOPS, "coverage"],
        env={**env, "CONSUMER_NAME": name, **extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    return code


async def pending(app: App) -> int:
    info = await app.redis.xpending(app.keys.stream, "coverage")
    return int(info["pending"])


@pytest.mark.parametrize("point", POINTS)
async def test_sigkill_at_each_step_then_restart_covers_exactly_once(
    app: App, env: dict[str, str], point: str
) -> None:
    sid = f"crash-{point}"
    await app.redis.xadd(app.keys.stream, fill(sid, "f-1", "o-1", quantity="0.02"))
    worker = start_worker(env, "c1", MMOPS_CRASH_POINT=point)
    try:
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        if worker.stderr:
            worker.stderr.close()
    assert code == -signal.SIGKILL, f"the worker should have died at {point}"
    assert await pending(app) == 1  # never acked before its effects

    restarted = start_worker(env, "c1", TP_PENDING_SETTLE_MS="300")
    try:

        async def covered() -> bool:
            position = await app.book.position(sid, "o-1", fresh=True)
            return (
                position is not None
                and position.uncovered == 0
                and position.pending is None
                and await pending(app) == 0
            )

        await wait_for(covered, timeout=30)
    finally:
        assert await stop(restarted) == 0
    orders = await orders_per_client_id(app)
    assert list(orders.values()) == [1], f"after a crash at {point}: {orders}"
    assert await placed_by_position(app, sid) == {"o-1": Decimal("0.02")}
    assert len(await takeprofit_entries(app, "created")) == 1


async def test_three_consumers_and_a_concurrent_caller_place_one_order_per_step(
    app: App, env: dict[str, str]
) -> None:
    sid = "race"
    positions = [f"o-{i}" for i in range(30)]
    workers = [start_worker(env, f"c{i}", CONSUMER_BATCH_SIZE="7") for i in range(3)]
    sent = 0
    try:
        finished = asyncio.Event()

        async def sweeper_like() -> None:
            """Covers the same positions concurrently, as the sweeper would."""
            while not finished.is_set():
                for pid in positions:
                    await app.engine.cover(sid, pid)
                await asyncio.sleep(0.001)

        racer = asyncio.create_task(sweeper_like())
        for round_ in range(3):  # partial fills: three per buy order
            for pid in positions:
                await app.redis.xadd(
                    app.keys.stream, fill(sid, f"{pid}-f{round_}", pid, quantity="0.01")
                )
                sent += 1

        async def done() -> bool:
            recorded = await app.redis.hlen(app.keys.fills(sid))
            if recorded != sent or await pending(app):
                return False
            all_positions = await app.book.positions(sid)
            return all(p.uncovered == 0 and p.pending is None for p in all_positions.values())

        await wait_for(done, timeout=60)
        finished.set()
        await asyncio.wait_for(racer, 30)
    finally:
        codes = [await stop(w) for w in workers]
    assert codes == [0, 0, 0]
    orders = await orders_per_client_id(app)
    assert max(orders.values()) == 1, "a client id was placed twice"
    placed = await placed_by_position(app, sid)
    assert placed == dict.fromkeys(positions, Decimal("0.03"))  # covered == filled, never more
    info = await app.redis.xinfo_consumers(app.keys.stream, "coverage")
    assert sum(1 for c in info if int(c["pending"]) == 0) == len(info)
