"""MM_STREAM_SHARDS (contract §6): shard = crc32(session_id as UTF-8) mod N, streams
`mm:events:{n}` when N > 1 and `mm:events` when N = 1; `mmops emit`, `mmops simulate` and
`mmops status` follow it, on a single Redis and on the cluster."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import zlib

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from base.settings import Settings
from events.shards import shard_of
from mmops.commands import status
from mmops.commands.simulate import simulate
from mmops.simulator import SimConfig
from storage.keys import Keys
from storage.redis import AnyRedis, as_text
from tests.conftest import MMOPS, ROOT

# session id -> its shard for N = 1, 2, 3, 4, 8, 16 (worked out by hand from zlib.crc32)
TABLE: dict[str, tuple[int, int, int, int, int, int]] = {
    "s-42": (0, 0, 2, 2, 2, 10),  # crc32 463906730
    "s-1": (0, 0, 2, 2, 6, 14),  # 3624031694
    "sim-0-abc-001": (0, 0, 1, 0, 4, 12),  # 2664735868
    "session.2026-11-21:7": (0, 0, 1, 2, 2, 2),  # 1274082322
    "A": (0, 1, 2, 3, 3, 11),  # 3554254475
    "B": (0, 1, 1, 1, 1, 1),  # 1255198513
    "mm_0042": (0, 1, 2, 3, 3, 3),  # 3734571395
    "trader-7:s-99": (0, 0, 0, 2, 2, 2),  # 1216733202
}
COUNTS = (1, 2, 3, 4, 8, 16)


@pytest.mark.parametrize("sid", list(TABLE))
def test_the_shard_of_a_session(sid: str) -> None:
    assert tuple(shard_of(sid, n) for n in COUNTS) == TABLE[sid]
    assert tuple(zlib.crc32(sid.encode()) % n for n in COUNTS) == TABLE[sid]


def test_the_crc_is_the_standard_crc32() -> None:
    """CRC-32/ISO-HDLC's published check value: crc32("123456789") = 0xCBF43926."""
    assert shard_of("123456789", 2**32) == 0xCBF43926
    with pytest.raises(ValueError):
        shard_of("s-1", 0)


def test_stream_names() -> None:
    one = Keys("p:", "mm:events")
    assert one.streams == ["p:mm:events"] == [one.stream_for("s-42")] == [one.stream]
    four = Keys("p:", "mm:events", 4)
    assert four.streams == [f"p:mm:events:{{{n}}}" for n in range(4)]
    assert (
        four.stream_for("s-42") == "p:mm:events:{2}" and four.stream_for("A") == "p:mm:events:{3}"
    )
    assert len({key_slot(s.encode()) for s in Keys("", "mm:events", 8).streams}) == 8
    assert Keys("", "trader:in", 2).streams == ["trader:in:{0}", "trader:in:{1}"]
    with pytest.raises(ValueError):
        four.shard_stream(4)
    settings = Settings.from_env(
        {"MM_STREAM_SHARDS": "3", "MM_STREAM": "ev", "MM_KEY_PREFIX": "x:"}
    )
    assert Keys.of(settings) == Keys("x:", "ev", 3)


def mmops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*MMOPS, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def emit(env: dict[str, str], sid: str) -> str:
    args = ("emit", "type=session_started", f"session_id={sid}", "pairs=BTC/USD", "ts=1")
    return mmops(env, *args).stdout.strip()


async def stream_sessions(client: AnyRedis, stream: str) -> list[str]:
    return [as_text(fields[b"session_id"]) for _, fields in await client.xrange(stream)]


async def test_emit_routes_to_the_shard(
    env: dict[str, str], redis: aioredis.Redis, keys: Keys
) -> None:
    sids = ["s-42", "A", "B", "s-1"]  # shards 2, 3, 1, 2 of 4
    for sid in sids:
        emit({**env, "MM_STREAM_SHARDS": "4"}, sid)
    sharded = Keys(keys.prefix, keys.events, 4)
    assert [await stream_sessions(redis, s) for s in sharded.streams] == [
        [],
        ["B"],
        ["s-42", "s-1"],
        ["A"],
    ]
    assert not await redis.exists(keys.stream)
    emit({**env, "MM_STREAM_SHARDS": "1"}, "A")
    assert await stream_sessions(redis, keys.stream) == ["A"]


async def test_emit_on_the_cluster(
    cluster_env: dict[str, str], cluster_redis: RedisCluster, keys: Keys
) -> None:
    for sid in ("s-42", "A", "B"):
        emit({**cluster_env, "MM_STREAM_SHARDS": "4"}, sid)
    sharded = Keys(keys.prefix, keys.events, 4)
    assert [await stream_sessions(cluster_redis, s) for s in sharded.streams] == [
        [],
        ["B"],
        ["s-42"],
        ["A"],
    ]
    done = mmops({**cluster_env, "MM_STREAM_SHARDS": "4"}, "status", "--json")
    shards = json.loads(done.stdout)["shards"]
    assert [(s["stream"], s["length"]) for s in shards] == list(
        zip(sharded.streams, [0, 1, 1, 1], strict=True)
    )


async def test_simulate_routes_every_event_to_its_session_shard(
    settings: Settings, redis: aioredis.Redis
) -> None:
    sharded = dataclasses.replace(settings, stream_shards=3)
    config = SimConfig(sessions=6, pairs=2, rate=60, duration=0.5, seed=7, tag="shards")
    stats = await simulate(sharded, config)
    keys = Keys.of(sharded)
    seen: dict[int, list[str]] = {
        n: await stream_sessions(redis, keys.shard_stream(n)) for n in range(3)
    }
    assert sum(len(v) for v in seen.values()) == stats.events
    for shard, sids in seen.items():
        assert all(shard_of(sid, 3) == shard for sid in sids)
    assert set().union(*map(set, seen.values())) == set(stats.session_ids)
    assert not await redis.exists(keys.stream)


async def fill_shards(client: AnyRedis, keys: Keys) -> None:
    """Shard n holds n + 1 entries; the coverage group has read none of shard 2's."""
    for n, stream in enumerate(keys.streams):
        for i in range(n + 1):
            await client.xadd(stream, {"type": "x", "i": str(i)})
        await client.xgroup_create(stream, "coverage", id="$" if n < 2 else "0")


async def test_status_has_a_row_per_shard(settings: Settings, any_redis: AnyRedis) -> None:
    client = any_redis
    keys = Keys(settings.key_prefix, settings.stream, 3)
    await fill_shards(client, keys)
    report = await status.collect(client, keys, settings)
    assert [
        (r["shard"], r["length"], r["groups"], r["pending"], r["lag"]) for r in report["shards"]
    ] == [
        (0, 1, 1, 0, 0),
        (1, 2, 1, 0, 0),
        (2, 3, 1, 0, 3),
    ]
    assert [s["stream"] for s in report["streams"]] == [*keys.streams, keys.alerts]
    assert any("no live consumer (lag 3, 0 pending)" in p for p in report["problems"])
    text = status.render(report)
    assert "input stream: 3 shards" in text
    header = next(line for line in text.splitlines() if "SHARD" in line)
    assert header.split() == ["SHARD", "STREAM", "LENGTH", "GROUPS", "PENDING", "LAG"]
    assert any(line.split()[:2] == ["2", keys.shard_stream(2)] for line in text.splitlines())


async def test_status_of_one_shard_looks_as_before(
    settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    await redis.xadd(keys.stream, {"type": "x"})
    report = await status.collect(redis, keys, settings)
    assert [r["stream"] for r in report["shards"]] == [keys.stream]
    assert "SHARD" not in status.render(report)
