"""The sweeper's figures (workers/figures.py): read only what changed, start from snapshots.

Whatever path a view took (kept in memory, loaded from a snapshot by a new process,
partly re-read, rebuilt), it must equal the view computed from scratch from the stored
positions: a seeded random walk of position changes checks it at every step.
"""

from __future__ import annotations

import random
from decimal import Decimal

import msgspec

from mmops.app import App
from tests.helpers import drain_coverage, fill, now_ms
from trading.positions import Buy, Close, Step, StepStatus, encode_position, new_position
from workers.figures import FiguresReader
from workers.session_view import FiguresCache, SessionView
from workers.sweeper import Sweeper

D = Decimal
HOUR = 3_600_000


def summary(view: SessionView) -> dict[str, object]:
    """Everything a pass reads from a view."""
    return {
        "positions": view.positions,
        "lines": sorted(view.lines),
        "needs_cover": sorted(view.needs_cover),
        "needs_trim": sorted(view.needs_trim),
        "dust": sorted(view.dust_ids),
        "open": sorted(view.open_ids),
        "live": sorted(view.live.items()),
        "step_orders": sorted(view.step_orders),
        "clients": sorted(view.clients),
        "symbols": sorted(view.symbols.items()),
        "open_qty": sorted((k, v) for k, v in view.open_qty.items() if v),
        "open_cost": sorted((k, v) for k, v in view.open_cost.items() if v),
        "stale_now": sorted(view.stale(now_ms() + 2 * HOUR)),
        "sells": sorted(view.sells()),
    }


async def from_scratch(app: App, sid: str) -> dict[str, object]:
    cache = FiguresCache(app.settings.tier_hours)
    view, _ = cache.refresh(sid, await app.redis.hgetall(app.keys.positions(sid)))
    return summary(view)


def position(sid: str, pid: str, rng: random.Random, v: int) -> bytes:
    """A position with a random history: buys, maybe a close, maybe a live or filled TP."""
    ts = now_ms() - rng.randrange(0, 3) * HOUR
    pos = new_position(
        session_id=sid, position_id=pid, symbol=rng.choice(["BTC/USD", "ETH/USD"]), opened_at=ts
    )
    for n in range(rng.randrange(1, 3)):
        pos = pos.with_buy(
            Buy(f"f-{pid}-{v}-{n}", D(rng.randrange(90, 110)), D("0.5"), D("0.1"), ts)
        )
    if rng.random() < 0.3:
        pos = pos.with_close(Close(f"s-{pid}-{v}", D("0.25"), D("105"), D("0.1"), ts + 1))
    if rng.random() < 0.7:
        status = rng.choice(
            [StepStatus.LIVE, StepStatus.LIVE, StepStatus.FILLED, StepStatus.PENDING]
        )
        fills = (
            (Close(f"t-{pid}-{v}", D("0.5"), D("111"), D("0.1"), ts + 2),)
            if status == StepStatus.FILLED
            else ()
        )
        pos = pos.with_step(
            Step(
                n=1,
                client_id=f"6d6d6f70-{pid}-{v}",
                qty=D("0.5"),
                price=D("111"),
                tier=rng.randrange(0, 2),
                status=status,
                claimed_at=ts,
                order_id="" if status == StepStatus.PENDING else f"O-{pid}-{v}",
                fills=fills,
            )
        )
    return encode_position(msgspec.structs.replace(pos, v=v))  # a version is never reused


async def test_every_path_to_a_view_gives_the_view_computed_from_scratch(app: App) -> None:
    rng = random.Random(20261121)
    sids = ["s-a", "s-b", "s-c"]
    versions: dict[tuple[str, str], int] = {}  # the last version of each position ever written
    for sid in sids:
        for p in range(12):
            versions[(sid, f"p-{p}")] = 1
            await app.redis.hset(app.keys.positions(sid), f"p-{p}", position(sid, f"p-{p}", rng, 1))
    reader = FiguresReader(app.redis, app.keys, FiguresCache(app.settings.tier_hours))
    await reader.views(sids)
    await reader.save()
    for step in range(60):
        for _ in range(rng.randrange(0, 4)):  # change, add or delete a few positions
            sid = rng.choice(sids)
            pid = f"p-{rng.randrange(0, 16)}"
            v = versions[(sid, pid)] = versions.get((sid, pid), 0) + 1
            if rng.random() < 0.15:
                await app.redis.hdel(app.keys.positions(sid), pid)
                continue
            await app.redis.hset(app.keys.positions(sid), pid, position(sid, pid, rng, v))
        if rng.random() < 0.3:  # a new process: from the snapshots the last one saved
            reader = FiguresReader(app.redis, app.keys, FiguresCache(app.settings.tier_hours))
        views = await reader.views(sids)
        for sid in sids:
            assert summary(views[sid]) == await from_scratch(app, sid), (step, sid)
        if rng.random() < 0.5:
            await reader.materialize(sids)
            for sid in sids:
                assert reader.cache.sessions[sid].complete
                assert summary(reader.cache.sessions[sid]) == await from_scratch(app, sid)
        if rng.random() < 0.7:
            await reader.save()


async def test_a_new_sweeper_starts_from_the_snapshots_and_reads_only_what_changed(
    app: App,
) -> None:
    for n in range(3):
        for i in range(5):
            await app.redis.xadd(app.keys.stream, fill(f"s-{n}", f"f-{i}", f"o-{i}"))
    await drain_coverage(app)
    first = await Sweeper.create(app)
    try:
        report = await first.run_once()
        assert (report.positions, report.decoded) == (15, 15)
        again = await first.run_once()
        assert again.decoded == 0  # nothing changed: the versions say so, nothing is read
    finally:
        await first.close()

    later = await Sweeper.create(app)  # as a new process: nothing in memory
    try:
        report = await later.run_once()
        assert (report.positions, report.decoded) == (15, 0)  # all from the snapshots
        await app.redis.xadd(app.keys.stream, fill("s-1", "f-9", "o-9"))  # a new position
        await drain_coverage(app)
        report = await later.run_once()
        assert report.decoded == 1  # only it: s-1's other positions are known
        await app.redis.xadd(app.keys.stream, fill("s-2", "f-1b", "o-1"))  # tops up o-1 of s-2
        await drain_coverage(app)
        report = await later.run_once()
        assert report.decoded == 5  # a snapshot position changed: s-2 read whole, once
        for sid in ("s-0", "s-1", "s-2"):
            assert summary(later.cache.sessions[sid]) == await from_scratch(app, sid)
    finally:
        await later.close()
