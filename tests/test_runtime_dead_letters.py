"""The shared consumer runtime's dead letters: malformed and poison entries, payloads trimmed
away, an invalid entry recorded once whatever the groups. Fixtures and helpers:
tests/test_runtime.py."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from storage.keys import Keys
from tests.test_runtime import (
    GROUP,
    Recorder,
    add,
    dead_letters,
    fill,
    idle_for,
    make,  # noqa: F401 - a fixture
    pending,
)
from workers.runtime import Runtime

# --- invalid entries --------------------------------------------------------------------------
MALFORMED: dict[str, tuple[dict[str, str], str]] = {
    "missing field": ({k: v for k, v in fill(10).items() if k != "price"}, "price: missing"),
    "NaN price": (fill(11, price="NaN"), "price: not a finite decimal"),
    "big field": (fill(12, order_type="x" * 10_000_000), "order_type: entry larger than"),
    "unknown type": ({"type": "trade", "session_id": "s-1"}, "type: unknown event type"),
    "JSON as a value": (fill(13, quantity='{"value": "1"}'), "quantity: not a decimal number"),
    "list as a value": (fill(14, symbol='["BTC/USD"]'), "symbol: expected a BASE/QUOTE"),
    "reserved names": (fill(15, error="x", id="y"), "unknown field"),
}


async def test_malformed_entries_are_dead_lettered_and_the_valid_ones_around_them_handled(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    entries: list[dict[str, str]] = [fill(1)]
    for bad, _ in MALFORMED.values():
        entries += [bad, fill(len(entries) + 1)]
    ids = await add(redis, keys, *entries)
    handler = Recorder()
    stats = await make(handler, batch_size=4).run(until_drained=True)

    good = [
        i for i, e in zip(ids, entries, strict=True) if e not in [b for b, _ in MALFORMED.values()]
    ]
    assert [entry_id for entry_id, _ in handler.handled] == good
    assert stats.processed == len(good) and stats.dead == len(MALFORMED)
    records = await dead_letters(redis, keys)
    assert len(records) == len(MALFORMED)
    by_id = {r["id"].decode(): r for r in records}
    for index, (name, (bad, reason)) in enumerate(MALFORMED.items()):
        record = by_id[ids[1 + 2 * index]]
        assert record["stream"] == keys.stream.encode(), name
        assert record["group"] == GROUP.encode()
        assert record["deliveries"] == b"0"  # invalid: no handler ever ran on it
        assert reason in record["error"].decode(), (name, record["error"][:200])
        originals = {
            (
                f"orig_{k}" if k in ("stream", "id", "group", "error", "deliveries") else k
            ): v.encode()
            for k, v in bad.items()
        }
        if name == "big field":  # at most MAX_ENTRY_BYTES of the original fields are kept
            assert b"first 4096 kept" in record["truncated"]
            assert sum(len(k) + len(v) for k, v in record.items() if k in originals) <= 4096
            assert record["order_type"] == b"x" * len(record["order_type"])
            continue
        assert {k: record[k] for k in originals} == originals, name
    alerts = [fields for _, fields in await redis.xrange(keys.alerts)]
    assert len(alerts) == len(MALFORMED)
    assert {a[b"kind"] for a in alerts} == {b"dead_letter"}
    assert await pending(redis, keys) == []


async def test_a_poison_entry_in_a_backlog_does_not_block_its_lane(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    """Invalid entries are dead-lettered before the lane runs: same lane, still in order."""
    ids = await add(redis, keys, fill(1), fill(2, price="-1"), fill(3))
    handler = Recorder()
    await make(handler).run(until_drained=True)
    assert handler.handled == [(ids[0], "f-1"), (ids[2], "f-3")]
    [record] = await dead_letters(redis, keys)
    assert record["error"] == b"price: must be > 0, got '-1'"


# --- trimmed payloads --------------------------------------------------------------------------
async def test_an_entry_trimmed_while_another_consumer_held_it_is_dead_lettered(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    runtime = make(Recorder(), reclaim_idle_ms=100)
    await runtime.ensure_group()
    ids = await add(redis, keys, fill(1), fill(2), fill(3))
    await redis.xreadgroup(GROUP, "dead-consumer", {keys.stream: ">"}, count=10)
    await redis.xdel(keys.stream, ids[1])
    await idle_for(redis, keys, 100)

    handler = Recorder()
    stats = await make(handler, reclaim_idle_ms=100).run(until_drained=True)
    assert handler.handled == [(ids[0], "f-1"), (ids[2], "f-3")]
    assert stats.dead == 1
    [record] = await dead_letters(redis, keys)
    assert record["id"] == ids[1].encode()
    assert b"trimmed" in record["error"]
    assert await pending(redis, keys) == []  # Redis 6.2 keeps it in the PEL: acked


async def test_an_entry_trimmed_by_xtrim_is_dead_lettered_after_a_restart(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    runtime = make(Recorder())
    await runtime.ensure_group()
    ids = await add(redis, keys, fill(1), fill(2))
    await redis.xreadgroup(GROUP, "c1", {keys.stream: ">"}, count=10)  # c1's previous life
    await redis.xtrim(keys.stream, maxlen=1, approximate=False)  # drops the first entry
    new = await add(redis, keys, fill(3))

    handler = Recorder()
    stats = await make(handler).run(until_drained=True)
    assert handler.handled == [(ids[1], "f-2"), (new[0], "f-3")]
    assert stats.dead == 1
    [record] = await dead_letters(redis, keys)
    assert record["id"] == ids[0].encode()
    assert b"trimmed" in record["error"]
    assert await pending(redis, keys) == []


async def test_an_invalid_entry_is_dead_lettered_once_whatever_the_groups(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    """Every group reads every entry; the first that finds it invalid records it, the others ack."""
    [bad] = await add(redis, keys, fill(1, price="NaN"))
    first, second = Recorder(), Recorder()
    second.group = "another-group"
    stats_a = await make(first).run(until_drained=True)
    stats_b = await make(second).run(until_drained=True)
    [record] = await dead_letters(redis, keys)
    assert record["id"] == bad.encode() and record["group"] == GROUP.encode()
    assert stats_a.dead == 1 and stats_b.dead == 1  # both acked it
    assert await pending(redis, keys) == []
    assert await redis.xpending(keys.stream, "another-group") == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }
