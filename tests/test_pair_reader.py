"""The pair-keeping reader (storage/streams.py) on one Redis and on the cluster: a repeated
field survives XREADGROUP and XAUTOCLAIM, and the process's own client is left as it was."""

from __future__ import annotations

import pytest

from base.settings import Settings
from storage.keys import Keys
from storage.redis import AnyRedis
from storage.streams import autoclaim, pair_reader, read_group
from tests.cluster import ON_BOTH

pytestmark = ON_BOTH

REPEATED = ["type", "fill", "session_id", "s-1", "type", "order"]


async def test_a_repeated_field_is_kept_on_either_client(
    settings: Settings, redis: AnyRedis, keys: Keys
) -> None:
    stream = keys.stream
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    entry_id = await redis.execute_command("XADD", stream, "*", *REPEATED)
    reader = pair_reader(redis, settings.redis_url)
    try:
        [entry] = await read_group(reader, "g", "c-1", stream, ">", count=10, block_ms=None)
        expected = [(b"type", b"fill"), (b"session_id", b"s-1"), (b"type", b"order")]
        assert entry.fields == expected
        claimed = await autoclaim(reader, stream, "g", "c-2", min_idle_ms=0, start="0", count=10)
        assert [(e.id, e.fields) for e in claimed.entries] == [(entry.id, expected)]
        assert entry.id == entry_id.decode()
    finally:
        await reader.aclose()
    # the process's client still parses replies its own way (a dict: the last value wins)
    await redis.xgroup_create(stream, "h", id="0")
    reply = await redis.xreadgroup("h", "c-3", {stream: ">"}, count=10)
    [[_, [[_, fields]]]] = reply
    assert fields == {b"type": b"order", b"session_id": b"s-1"}
    await redis.ping()  # its pool is still open after the reader was closed


@pytest.mark.parametrize("count", [0, 3])
async def test_an_empty_read(settings: Settings, redis: AnyRedis, keys: Keys, count: int) -> None:
    await redis.xgroup_create(keys.stream, "g", id="$", mkstream=True)
    for n in range(count):
        await redis.xadd(keys.stream, {"n": str(n)})
    reader = pair_reader(redis, settings.redis_url)
    try:
        got = await read_group(reader, "g", "c", keys.stream, "0", count=10, block_ms=None)
        assert got == []  # nothing of ours pending
    finally:
        await reader.aclose()
