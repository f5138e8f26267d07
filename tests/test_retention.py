"""Stream retention: trim by age, never past what a consumer group has not acked."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.clock import ManualClock
from base.settings import Settings
from mmops.app import App
from storage.keys import Keys
from tests.conftest import MakeApp
from workers.retention import trim, trim_outputs

NOW = 1_763_700_000_000
HOUR = 3_600_000
AGES_H = (10, 5, 3, 1, 0)  # entry ages in hours, oldest first


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    return await make_app(clock=ManualClock(NOW), stream_retention_hours=Decimal(2))


@pytest.fixture
async def ids(redis: aioredis.Redis, keys: Keys) -> list[str]:
    out = []
    for age in AGES_H:
        out.append(
            (await redis.xadd(keys.stream, {"type": "x"}, id=f"{NOW - age * HOUR}-0")).decode()
        )
    return out


async def remaining(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [i.decode() for i, _ in await redis.xrange(keys.stream)]


async def read_and_ack(redis: aioredis.Redis, keys: Keys, group: str, count: int, ack: int) -> None:
    """The group reads `count` entries and acks the first `ack` of them."""
    reply = await redis.xreadgroup(group, "c1", {keys.stream: ">"}, count=count)
    read = [i for i, _ in reply[0][1]] if reply else []
    if ack:
        await redis.xack(keys.stream, group, *read[:ack])


async def test_trims_by_age_when_everything_is_acked(
    app: App, redis: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    await redis.xgroup_create(keys.stream, "coverage", id="0")
    await read_and_ack(redis, keys, "coverage", 5, 5)
    result = await trim(app, approximate=False)
    assert (
        result.removed == 3
        and result.min_id == f"{NOW - 2 * HOUR}-0"
        and result.reason == "retention 2 h"
    )
    assert await remaining(redis, keys) == ids[3:]
    assert (await trim(app, approximate=False)).removed == 0


async def test_never_past_a_pending_entry(
    app: App, redis: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    await redis.xgroup_create(keys.stream, "coverage", id="0")
    await read_and_ack(redis, keys, "coverage", 5, 0)
    await redis.xack(
        keys.stream, "coverage", ids[0], ids[2], ids[3], ids[4]
    )  # ids[1] stays pending
    result = await trim(app, approximate=False)
    assert result.removed == 1 and result.min_id == ids[1]
    assert result.reason == f"group coverage still needs entries from {ids[1]}"
    assert await remaining(redis, keys) == ids[1:]


async def test_never_past_an_undelivered_entry(
    app: App, redis: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    await redis.xgroup_create(keys.stream, "coverage", id="0")
    await redis.xgroup_create(keys.stream, "migrator", id="0")
    await read_and_ack(redis, keys, "coverage", 5, 5)
    await read_and_ack(
        redis, keys, "migrator", 2, 2
    )  # the migrator is behind: read the 10 h and 5 h ones
    result = await trim(app, approximate=False)
    assert result.removed == 2 and result.min_id == f"{NOW - 5 * HOUR}-1"
    assert await remaining(redis, keys) == ids[2:]
    await redis.xgroup_create(keys.stream, "new", id="0")  # a group that has read nothing
    assert (await trim(app, approximate=False)).removed == 0


async def test_no_trim_without_groups_or_setting(
    app: App, settings: Settings, redis: aioredis.Redis, keys: Keys, ids: list[str]
) -> None:
    assert (await trim(app)).reason == "the stream has no consumer groups"
    plain = await App.open(settings)
    try:
        assert (await trim(plain)).reason == "MM_STREAM_RETENTION_HOURS is not set"
    finally:
        await plain.close()
    assert await remaining(redis, keys) == ids
    await redis.delete(keys.stream)
    assert (await trim(app)).reason == "the stream does not exist"


async def test_approximate_trim_keeps_what_is_needed(
    app: App, redis: aioredis.Redis, keys: Keys
) -> None:
    for n in range(1000):
        await redis.xadd(keys.stream, {"n": str(n)}, id=f"{NOW - 3 * HOUR + n}-0")
    await redis.xadd(keys.stream, {"n": "new"}, id=f"{NOW}-0")
    await redis.xgroup_create(keys.stream, "coverage", id="$")
    result = await trim(app)
    assert 0 < result.removed <= 1000
    assert (await remaining(redis, keys))[-1] == f"{NOW}-0"


async def test_the_output_streams_are_trimmed_to_their_caps(make_app: MakeApp) -> None:
    app = await make_app(takeprofits_maxlen=50, alerts_maxlen=50, dead_maxlen=50)
    for n in range(1000):  # written by a writer that does not cap them
        await app.redis.xadd(app.keys.takeprofits, {"n": n})
        await app.redis.xadd(app.keys.dead, {"n": n})
    removed = await trim_outputs(app)
    assert removed.keys() == {app.keys.takeprofits, app.keys.dead}
    for stream in (app.keys.takeprofits, app.keys.dead):  # ~: whole nodes of 100 entries
        assert 50 <= await app.redis.xlen(stream) < 200
