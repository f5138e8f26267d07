"""The workers with MM_STREAM_SHARDS=3 (contract §6), on a single Redis and on the cluster:
every group consumes every shard (a runtime per shard), a session's order is kept in its
shard, and reclaim, dead letters, replay, retention, stream care and the migrator's
readiness check all work per shard."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal

import asyncpg
import pytest

from base.clock import ManualClock
from base.settings import Settings
from events import encode
from events.schema import SessionEnded, SessionStarted
from events.shards import shard_of
from mmops.app import App
from mmops.commands.dead import dead_letters, retry
from mmops.commands.replay import replay
from storage.redis import as_text
from tests.cluster import ON_BOTH
from tests.conftest import MMOPS, ROOT
from tests.helpers import drain, drain_coverage, fill, now_ms
from workers.groups import runtimes_for
from workers.migration import coverage_backlog
from workers.retention import trim_all
from workers.stream_care import StreamCare, StreamReport

pytestmark = ON_BOTH  # single Redis and the local Redis Cluster (tests/cluster.py)

SHARDS = 3
HOUR = 3_600_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings with the input stream in 3 shards (keys, env and apps follow)."""
    return dataclasses.replace(settings, stream_shards=SHARDS)


def sessions(per_shard: int) -> dict[int, list[str]]:
    """Session ids, `per_shard` of them in each shard."""
    out: dict[int, list[str]] = {n: [] for n in range(SHARDS)}
    i = 0
    while any(len(v) < per_shard for v in out.values()):
        sid = f"s-{i}"
        if len(out[shard_of(sid, SHARDS)]) < per_shard:
            out[shard_of(sid, SHARDS)].append(sid)
        i += 1
    return out


async def add(app: App, sid: str, fields: dict[str, str]) -> str:
    return as_text(await app.redis.xadd(app.keys.stream_for(sid), fields))  # type: ignore[arg-type]


def started(sid: str, ts: int = 1) -> dict[str, str]:
    return encode(SessionStarted(session_id=sid, pairs=("BTC/USD",), ts=ts))


async def group_info(app: App, stream: str, group: str) -> dict[str, object]:
    infos = {as_text(g["name"]): g for g in await app.redis.xinfo_groups(stream)}
    return infos[group]


# --- coverage over every shard ------------------------------------------------------------
async def test_coverage_consumes_every_shard_and_keeps_each_sessions_order(app: App) -> None:
    sids = [sid for group in sessions(2).values() for sid in group]
    t0 = now_ms() - 10_000
    for sid in sids:  # a FIFO sell needs the session's earlier buys: its order is the stream's
        await add(app, sid, fill(sid, "f-1", "o-1", price="100", quantity="1", fee="0", ts=t0))
        await add(app, sid, fill(sid, "f-2", "o-2", price="110", quantity="1", fee="0", ts=t0 + 1))
        sell = fill(sid, "f-3", "manual", side="sell", price="120", quantity="1.5", fee="0")
        await add(app, sid, sell)
    runtimes = await runtimes_for("coverage", app, "c-1")
    assert [r.stream for r in runtimes.runtimes] == app.keys.streams
    await runtimes.aclose()
    stats = await drain_coverage(app)
    assert stats.processed == 3 * len(sids) and stats.failed == 0
    for stream in app.keys.streams:
        info = await group_info(app, stream, "coverage")
        assert info["pending"] == 0
        newest = await app.redis.xrevrange(stream, count=1)
        assert as_text(info["last-delivered-id"]) == as_text(newest[0][0])
    for sid in sids:
        assert await app.redis.hlen(app.keys.fills(sid)) == 3
        old = await app.book.position(sid, "o-1", fresh=True)
        new = await app.book.position(sid, "o-2", fresh=True)
        assert old is not None and new is not None
        assert old.closed_other == Decimal(1) and new.closed_other == Decimal("0.5")


async def test_the_worker_commands_run_every_shard(
    app: App, env: dict[str, str], pg: asyncpg.Pool
) -> None:
    """`mmops coverage --drain` then `mmops migrator --drain` (MM_STREAM_SHARDS=3 in env):
    each session reaches PostgreSQL once coverage processed it in its own shard."""
    by_shard = sessions(1)
    for sids in by_shard.values():
        for sid in sids:
            await add(app, sid, started(sid))
            await add(app, sid, fill(sid, "f-1", "o-1"))
            await add(app, sid, encode(SessionEnded(session_id=sid, ts=now_ms(), fills=1)))
    for worker in ("coverage", "migrator"):
        proc = await asyncio.create_subprocess_exec(
            *MMOPS, worker, "--drain", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
    sids = sorted(sid for v in by_shard.values() for sid in v)
    rows = await pg.fetch("SELECT id, total_fills FROM sessions ORDER BY id")
    assert [(r["id"], r["total_fills"]) for r in rows] == [(sid, 1) for sid in sids]
    for sid in sids:
        assert await app.redis.exists(app.keys.migration_completed(sid))


# --- per shard: readiness, reclaim, dead letters --------------------------------------------
async def test_the_migrator_waits_for_coverage_on_the_sessions_shard_only(app: App) -> None:
    by_shard = sessions(1)
    [mine], [other] = by_shard[0], by_shard[1]
    for stream in app.keys.streams:
        await app.redis.xgroup_create(stream, "coverage", id="0", mkstream=True)
    await add(app, other, started(other))  # read by a consumer that died: pending on shard 1
    await app.redis.xreadgroup("coverage", "dead", {app.keys.stream_for(other): ">"})
    first = await add(app, mine, started(mine))
    end = await add(app, mine, encode(SessionEnded(session_id=mine, ts=2)))
    stream = app.keys.stream_for(mine)
    assert await coverage_backlog(app.redis, app.keys, mine, end) == (
        f"coverage has not read up to {end} yet (last delivered 0-0)"
    )
    await app.redis.xreadgroup("coverage", "c-1", {stream: ">"})
    assert await coverage_backlog(app.redis, app.keys, mine, end) == (
        f"coverage has entry {first} of session {mine} pending"
    )
    await app.redis.xack(stream, "coverage", first, end)
    assert await coverage_backlog(app.redis, app.keys, mine, end) is None  # shard 1 is not its


async def test_reclaim_and_dead_letters_per_shard(app: App, pg: asyncpg.Pool) -> None:
    by_shard = sessions(1)
    [one], [two] = by_shard[1], by_shard[2]
    await add(app, one, started(one))
    for stream in app.keys.streams:
        await app.redis.xgroup_create(stream, "migrator", id="0", mkstream=True)
    # a consumer read shard 1's entry and died: the shard-1 runtime reclaims it once idle
    await app.redis.xreadgroup("migrator", "died", {app.keys.stream_for(one): ">"})
    bad = await add(app, two, {"type": "fill", "session_id": two})  # invalid, in shard 2
    await asyncio.sleep(app.settings.reclaim_idle_ms / 1000 + 0.1)
    stats = await drain(app, "migrator")
    assert stats.reclaimed == 1 and stats.processed == 1 and stats.dead == 1
    assert await pg.fetchval("SELECT id FROM sessions") == one
    [(_, record)] = await dead_letters(app.redis, app.keys)
    assert record[b"stream"] == app.keys.stream_for(two).encode()
    assert record[b"id"] == bad.encode() and record[b"group"] == b"migrator"
    await drain_coverage(app)  # the coverage group finds it invalid too: still one record
    assert len(await dead_letters(app.redis, app.keys)) == 1
    for stream in app.keys.streams:
        assert (await app.redis.xpending(stream, "migrator"))["pending"] == 0
    # `mmops dead retry` puts it back on its own shard
    [[dead_id, fields]] = await dead_letters(app.redis, app.keys)
    retried, skipped = await retry(app.redis, app.keys, [(dead_id, fields)])
    assert skipped == [] and [r[1] for r in retried] == [app.keys.stream_for(two)]
    assert await app.redis.xlen(app.keys.dead) == 0


async def test_replay_one_shard_or_all(app: App, pg: asyncpg.Pool) -> None:
    by_shard = sessions(1)
    for sids in by_shard.values():
        await add(app, sids[0], started(sids[0], ts=now_ms()))
    result = await replay(app, "migrator", "-", shard=1)
    assert result.stream == app.keys.shard_stream(1) and result.entries == 1
    assert [r["id"] for r in await pg.fetch("SELECT id FROM sessions")] == by_shard[1]
    result = await replay(app, "migrator", "-")
    assert result.stream == ", ".join(app.keys.streams) and result.entries == SHARDS
    assert result.handled == SHARDS and result.effects["sessions rows"] == SHARDS - 1
    for stream in app.keys.streams:  # replay never reads through the group
        assert await app.redis.xinfo_groups(stream) == []


async def test_the_replay_command_checks_the_shard(env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        *("replay", "--group", "coverage", "--from", "-", "--shard", "3"),
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip() == "mmops replay: --shard: expected 0..2 (MM_STREAM_SHARDS=3)"


# --- the sweeper's duties per shard ---------------------------------------------------------
async def test_retention_trims_each_shard_to_what_its_groups_acked(settings: Settings) -> None:
    now = now_ms()
    app = await App.open(
        dataclasses.replace(settings, stream_retention_hours=Decimal(2)), clock=ManualClock(now)
    )
    try:
        for stream in app.keys.streams:
            for age in (5, 4, 3, 1):
                await app.redis.xadd(stream, {"type": "x"}, id=f"{now - age * HOUR}-0")
            await app.redis.xgroup_create(stream, "coverage", id="0")
        # shard 0 acked everything, shard 1 nothing, shard 2 has no group read yet at all
        await app.redis.xreadgroup("coverage", "c", {app.keys.streams[0]: ">"})
        ids = [i for i, _ in await app.redis.xrange(app.keys.streams[0])]
        await app.redis.xack(app.keys.streams[0], "coverage", *ids)
        await app.redis.xreadgroup("coverage", "c", {app.keys.streams[1]: ">"}, count=2)
        results = await trim_all(app, approximate=False)
        assert [r.stream for r in results] == app.keys.streams
        assert [r.removed for r in results] == [3, 0, 0]
        assert [await app.redis.xlen(s) for s in app.keys.streams] == [1, 4, 4]
    finally:
        await app.close()


async def test_stream_care_takes_over_each_shard_without_a_live_consumer(
    app: App, pg: asyncpg.Pool
) -> None:
    by_shard = sessions(1)
    for n in (0, 2):
        [sid] = by_shard[n]
        await add(app, sid, started(sid))
        stream = app.keys.stream_for(sid)
        await app.redis.xgroup_create(stream, "migrator", id="0")
        await app.redis.xreadgroup("migrator", "died", {stream: ">"})
    await app.redis.xgroup_create(app.keys.shard_stream(1), "migrator", id="0", mkstream=True)
    await app.redis.zadd(app.keys.heartbeats("coverage"), {"c-1": now_ms()})  # coverage is live
    await asyncio.sleep(app.settings.reclaim_idle_ms / 1000 + 0.1)
    report = StreamReport()
    await StreamCare(app, "sweeper-test").check(report)
    assert report.live == {"coverage": 1, "migrator": 0}
    assert report.taken_over == {"migrator": 2} and report.stuck == {}
    rows = await pg.fetch("SELECT id FROM sessions ORDER BY id")
    assert [r["id"] for r in rows] == sorted(by_shard[0] + by_shard[2])
    for stream in app.keys.streams:
        assert (await app.redis.xpending(stream, "migrator"))["pending"] == 0
        consumers = await app.redis.xinfo_consumers(stream, "migrator")
        assert "sweeper-test" not in {as_text(c["name"]) for c in consumers}
