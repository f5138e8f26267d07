"""A master dies while the workers run (3 masters with a replica each, MM_STREAM_SHARDS=3).

The trader keeps sending buy fills (a write that fails is sent again, as a trader would);
two coverage workers consume every shard in this process; the master that serves input
shard 0 is killed with SIGKILL halfway and its replica takes over. The workers carry on.
Then the recovery the README gives for a failover runs: a replay of the shards from
before the failover and one sweeper pass. The invariants hold: every fill that is in the
stream is recorded once, no client id has two orders, covered quantity never exceeds the
filled one, nothing is left uncovered or pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from decimal import Decimal

import pytest
from redis.asyncio.cluster import RedisCluster

from base.settings import Settings
from mmops.app import App
from mmops.commands.replay import replay
from storage.local_cluster import LocalCluster
from storage.redis import TRANSIENT_REDIS_ERRORS, as_text
from tests.cluster import check_commit_slots
from tests.conftest import wait_for
from tests.helpers import fill
from trading.paper import PaperExchange
from workers.groups import GroupRuntimes, runtimes_for
from workers.sweeper import Sweeper

SESSIONS = 6
FILLS = 40  # per session
PAIRS = ("BTC/USD", "ETH/USD")


@pytest.fixture
def failover_settings(settings: Settings, replicated_cluster: LocalCluster) -> Settings:
    return dataclasses.replace(
        settings, redis_url=replicated_cluster.url, redis_cluster=True, stream_shards=3
    )


class Trader:
    """Buy fills for SESSIONS sessions, each sent until Redis acknowledged it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.sent: list[tuple[str, str]] = []  # (session, fill id) acknowledged
        self.retried = 0

    async def run(self, fills: range, pause_s: float) -> None:
        for n in fills:
            for s in range(SESSIONS):
                sid, fid = f"s-{s}", f"f-{n}"
                # two buy fills per order: the second tops its TP up
                fields = fill(sid, fid, f"o-{n // 2}", symbol=PAIRS[n // 2 % 2], quantity="0.01")
                await self._send(sid, fields)
                self.sent.append((sid, fid))
            await asyncio.sleep(pause_s)

    async def _send(self, sid: str, fields: dict[str, str]) -> None:
        while True:
            try:
                await self.app.redis.xadd(self.app.keys.stream_for(sid), fields)  # type: ignore[arg-type]
                return
            except TRANSIENT_REDIS_ERRORS:
                self.retried += 1
                await asyncio.sleep(0.2)


async def drained(app: App) -> bool:
    for stream in app.keys.streams:
        info = {as_text(g["name"]): g for g in await app.redis.xinfo_groups(stream)}["coverage"]
        newest = await app.redis.xrevrange(stream, count=1)
        if int(info["pending"]) or as_text(info["last-delivered-id"]) != as_text(newest[0][0]):
            return False
    return True


async def stream_fills(app: App) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for stream in app.keys.streams:
        for _, fields in await app.redis.xrange(stream):
            out.add((as_text(fields[b"session_id"]), as_text(fields[b"fill_id"])))
    return out


@pytest.mark.cluster
@pytest.mark.timeout(300)
async def test_the_workers_carry_on_through_a_failover_and_the_invariants_hold(
    failover_settings: Settings,
    replicated_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_commit_slots(monkeypatch)  # what a managed cluster refuses, refused here too
    app = await App.open(failover_settings)
    try:
        assert isinstance(app.redis, RedisCluster)
        trader = await run_through_a_failover(app, replicated_cluster)
        await check_invariants(app, trader)
    finally:
        await app.close()


async def run_through_a_failover(app: App, cluster: LocalCluster) -> Trader:
    """Two coverage workers run while the master of shard 0 dies; then the recovery."""
    assert isinstance(app.redis, RedisCluster)
    workers: list[tuple[App, GroupRuntimes, asyncio.Future[object]]] = []
    try:
        for name in ("c-1", "c-2"):
            worker = await App.open(app.settings)
            runtimes = await runtimes_for("coverage", worker, name)
            workers.append((worker, runtimes, asyncio.ensure_future(runtimes.run())))
        trader = Trader(app)
        await trader.run(range(FILLS // 2), pause_s=0.02)
        await wait_for(lambda: drained(app), timeout=60)

        # the master that serves input shard 0 dies; its replica takes over
        node = app.redis.get_node_from_key(app.keys.streams[0])
        [master] = [m for m in cluster.live_masters() if m.port == node.port]
        killed_at = time.time_ns() // 1_000_000
        sending = asyncio.ensure_future(trader.run(range(FILLS // 2, FILLS), pause_s=0.05))
        promoted = await cluster.fail_over_async(master)
        await sending
        assert promoted.port != master.port and cluster.state_ok()

        await wait_for(lambda: drained(app), timeout=120)
        assert not any(task.done() for _, _, task in workers)  # they carried on
        processed = sum(r.stats.processed for _, r, _ in workers)
        assert processed >= len(await stream_fills(app))
    finally:
        for worker, runtimes, task in workers:
            worker.stop.set()
            with contextlib.suppress(Exception):
                await task
            await runtimes.aclose()
            await worker.close()

    # the recovery of a failover (README): replay from before it, then a sweeper pass
    await replay(app, "coverage", f"{killed_at - 10_000}")
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
    assert report.ok, [(s.session_id, s.status, s.errors) for s in report.sessions]
    return trader


async def check_invariants(app: App, trader: Trader) -> None:
    in_stream = await stream_fills(app)
    lost = {f for f in trader.sent if f not in in_stream}
    print(f"failover: {len(trader.sent)} fills sent, {trader.retried} sends retried, "
          f"{len(lost)} lost with the old master")  # fmt: skip
    recorded: set[tuple[str, str]] = set()
    for s in range(SESSIONS):
        sid = f"s-{s}"
        recorded |= {(sid, as_text(f)) for f in await app.redis.hkeys(app.keys.fills(sid))}
        for pos in (await app.book.positions(sid)).values():
            buys = [b.fill_id for b in pos.buys]
            assert len(buys) == len(set(buys))  # each fill counted once in its position
            assert pos.filled == Decimal("0.01") * len(buys)
            assert pos.covered <= pos.filled
            assert pos.uncovered == 0 and pos.pending is None
    assert in_stream <= recorded  # every fill in the stream recorded (once: a hash)
    assert isinstance(app.exchange, PaperExchange)
    orders = Counter(o.client_id for o in await app.exchange.orders())
    assert orders and max(orders.values()) == 1  # no client id placed twice
    for stream in app.keys.streams:
        assert (await app.redis.xpending(stream, "coverage"))["pending"] == 0
