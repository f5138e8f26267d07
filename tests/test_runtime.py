"""The shared consumer runtime against a real Redis: group creation, pending-first reads,
lane ordering, ack-after-handle, reclaim, retries, dead letters and trimmed payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from events import Event, Fill, encode
from storage.keys import Keys
from tests.conftest import wait_for
from workers.runtime import TRANSIENT_RETRY_S, Entry, Retry, Runtime, Transient

GROUP = "test-group"
Hook = Callable[[Entry, Event], Awaitable[None]]


def fill(n: int, session: str = "s-1", **changes: Any) -> dict[str, str]:
    event = Fill(
        session_id=session,
        fill_id=f"f-{n}",
        order_id=f"o-{n}",
        symbol="BTC/USD",
        side="buy",
        price=Decimal("64000.5"),
        quantity=Decimal("0.01"),
        fee=Decimal("0.16"),
        ts=1_000 + n,
    )
    return {**encode(event), **changes}


class Recorder:
    """A handler that records what it handled (entry id, fill id) and can be given a hook
    that runs before an entry counts as handled (to block, fail or defer it)."""

    group = GROUP

    def __init__(self, hook: Hook | None = None) -> None:
        self.hook = hook
        self.handled: list[tuple[str, str]] = []
        self.calls: list[tuple[str, int]] = []  # (entry id, failures before) of every attempt

    def lane(self, event: Event) -> tuple[str, ...]:
        return (event.session_id,)

    async def handle(self, entry: Entry, event: Event) -> None:
        self.calls.append((entry.id, entry.failures))
        if self.hook is not None:
            await self.hook(entry, event)
        assert isinstance(event, Fill)
        self.handled.append((entry.id, event.fill_id))


@pytest.fixture
def make(redis: aioredis.Redis, keys: Keys, settings: Settings) -> Callable[..., Runtime]:
    def build(handler: Recorder, consumer: str = "c1", **changes: Any) -> Runtime:
        runtime = Runtime(redis, keys, dataclasses.replace(settings, **changes), handler, consumer)
        runtime.claim_every_s = 0.05
        return runtime

    return build


@pytest.fixture
async def background() -> AsyncIterator[Callable[[Runtime], asyncio.Task[Any]]]:
    """Start runtimes in the background; stop them and surface their errors afterwards."""
    started: list[tuple[Runtime, asyncio.Task[Any]]] = []

    def start(runtime: Runtime) -> asyncio.Task[Any]:
        task = asyncio.create_task(runtime.run())
        started.append((runtime, task))
        return task

    yield start
    for runtime, _ in started:
        runtime.stop.set()
    for _, task in started:
        await asyncio.wait_for(task, 10)


async def add(redis: aioredis.Redis, keys: Keys, *entries: dict[str, str]) -> list[str]:
    return [(await redis.xadd(keys.stream, e)).decode() for e in entries]  # type: ignore[arg-type]


async def pending(redis: aioredis.Redis, keys: Keys, consumer: str | None = None) -> list[str]:
    rows = await redis.xpending_range(
        keys.stream,
        GROUP,
        min="-",
        max="+",
        count=1000,
        consumername=consumer,
    )
    return [row["message_id"].decode() for row in rows]


async def dead_letters(redis: aioredis.Redis, keys: Keys) -> list[dict[str, bytes]]:
    return [
        {k.decode(): v for k, v in fields.items()} for _, fields in await redis.xrange(keys.dead)
    ]


async def idle_for(redis: aioredis.Redis, keys: Keys, ms: int) -> None:
    """Wait until every pending entry of the group has been idle at least `ms`."""

    async def idle() -> bool:
        rows = await redis.xpending_range(keys.stream, GROUP, min="-", max="+", count=1000)
        return bool(rows) and all(row["time_since_delivered"] >= ms for row in rows)

    await wait_for(idle)


# --- the group ------------------------------------------------------------------------
async def test_group_is_created_with_mkstream_on_a_missing_stream(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    assert not await redis.exists(keys.stream)
    stats = await make(Recorder()).run(until_drained=True)
    assert stats.processed == 0
    assert await redis.exists(keys.stream)
    groups = await redis.xinfo_groups(keys.stream)
    assert [g["name"] for g in groups] == [GROUP.encode()]
    # a second runtime (another process) finds the group there: BUSYGROUP is not an error
    await make(Recorder(), "c2").run(until_drained=True)


async def test_group_starts_at_the_beginning_of_an_existing_stream(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    ids = await add(redis, keys, fill(1), fill(2))
    handler = Recorder()
    stats = await make(handler).run(until_drained=True)
    assert [entry_id for entry_id, _ in handler.handled] == ids
    assert stats.processed == 2
    assert await pending(redis, keys) == []


# --- reading ----------------------------------------------------------------------------
async def test_own_pending_entries_are_read_before_new_ones_after_a_restart(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    old = await add(redis, keys, fill(1, "s-a"), fill(2, "s-b"))
    runtime = make(Recorder())
    await runtime.ensure_group()
    # the previous life of consumer c1 read them and died before acking
    await redis.xreadgroup(GROUP, "c1", {keys.stream: ">"}, count=10)
    assert await pending(redis, keys, "c1") == old
    new = await add(redis, keys, fill(3, "s-a"), fill(4, "s-b"))

    handler = Recorder()
    stats = await make(handler).run(until_drained=True)
    assert [entry_id for entry_id, _ in handler.handled] == old + new
    assert stats.reclaimed == 0  # its own entries, read back by ID, not reclaimed
    failures = dict(handler.calls)
    # read again after a restart: a redelivery that never reached a handler is no failure
    assert [failures[i] for i in old] == [0, 0]
    assert [failures[i] for i in new] == [0, 0]
    assert await pending(redis, keys) == []


async def test_entries_of_one_lane_run_in_stream_order_and_lanes_interleave(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    # a: 0..9, b: 0..9, interleaved in the stream
    ids = await add(redis, keys, *(fill(i, f"s-{'ab'[i % 2]}") for i in range(20)))
    lane_b_moved_on = asyncio.Event()

    async def hook(entry: Entry, event: Event) -> None:
        assert isinstance(event, Fill)
        if event.fill_id == "f-5":  # lane b's third entry: its first two are done
            lane_b_moved_on.set()
        elif entry.id == ids[0]:
            # lane a's first entry waits for lane b: lanes must not wait for each other
            await asyncio.wait_for(lane_b_moved_on.wait(), 5)
        await asyncio.sleep(0.001 * (int(event.fill_id[2:]) % 3))

    handler = Recorder(hook)
    stats = await make(handler, batch_size=7).run(until_drained=True)
    assert stats.processed == 20
    order = [fill_id for _, fill_id in handler.handled]
    assert [f for f in order if int(f[2:]) % 2 == 0] == [f"f-{i}" for i in range(0, 20, 2)]
    assert [f for f in order if int(f[2:]) % 2 == 1] == [f"f-{i}" for i in range(1, 20, 2)]
    assert order[:2] == ["f-1", "f-3"]  # lane b went ahead while lane a's first entry waited
    assert await pending(redis, keys) == []


async def test_lanes_are_bounded_by_concurrency(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    await add(redis, keys, *(fill(i, f"s-{i}") for i in range(12)))
    running = 0
    peak = 0

    async def hook(entry: Entry, event: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    stats = await make(Recorder(hook), concurrency=3).run(until_drained=True)
    assert stats.processed == 12
    assert peak == 3


# --- acking --------------------------------------------------------------------------------
async def test_an_entry_is_acked_only_after_its_handler_returns(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
    background: Callable[[Runtime], asyncio.Task[Any]],
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hook(entry: Entry, event: Event) -> None:
        entered.set()
        await release.wait()

    handler = Recorder(hook)
    background(make(handler))
    [entry_id] = await add(redis, keys, fill(1))
    await asyncio.wait_for(entered.wait(), 5)
    for _ in range(5):  # however long the handler takes, the entry stays pending
        assert await pending(redis, keys, "c1") == [entry_id]
        await asyncio.sleep(0.02)
    assert handler.handled == []
    release.set()
    await wait_for(lambda: _empty(pending(redis, keys)))
    assert handler.handled == [(entry_id, "f-1")]


async def _empty(result: Awaitable[list[str]]) -> bool:
    return not await result


async def test_stop_lets_the_in_flight_entry_finish_and_be_acked(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hook(entry: Entry, event: Event) -> None:
        entered.set()
        await release.wait()

    runtime = make(Recorder(hook))
    task = asyncio.create_task(runtime.run())
    await add(redis, keys, fill(1))
    await asyncio.wait_for(entered.wait(), 5)
    runtime.stop.set()
    release.set()
    stats = await asyncio.wait_for(task, 5)
    assert stats.processed == 1
    assert await pending(redis, keys) == []
    assert not await redis.zscore(keys.heartbeats(GROUP), "c1")  # left the heartbeat set


# --- failures --------------------------------------------------------------------------------
async def test_a_transient_error_leaves_the_entry_pending_and_retries_it_shortly(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
    background: Callable[[Runtime], asyncio.Task[Any]],
) -> None:
    failed_at: list[float] = []

    async def hook(entry: Entry, event: Event) -> None:
        if not failed_at:
            failed_at.append(time.monotonic())
            raise Transient("exchange unreachable")

    handler = Recorder(hook)
    runtime = make(handler, reclaim_idle_ms=60_000)
    background(runtime)
    [entry_id] = await add(redis, keys, fill(1))
    await wait_for(lambda: _true(bool(failed_at)))
    assert await pending(redis, keys, "c1") == [entry_id]  # not acked
    await wait_for(lambda: _true(bool(handler.handled)))
    handled_after = time.monotonic() - failed_at[0]
    # retried in-process after TRANSIENT_RETRY_S, long before RECLAIM_IDLE_MS
    assert TRANSIENT_RETRY_S * 0.9 <= handled_after < 10
    assert handler.calls == [
        (entry_id, 0),
        (entry_id, 0),
    ]  # a transient error is no failure of the entry: no count towards MAX_DELIVERIES
    assert runtime.stats.failed == 1 and runtime.stats.reclaimed == 0
    await wait_for(lambda: _empty(pending(redis, keys)))
    assert await redis.xlen(keys.dead) == 0


async def _true(value: bool) -> bool:
    return value


async def test_an_entry_failing_more_than_max_deliveries_is_dead_lettered_and_acked(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
    background: Callable[[Runtime], asyncio.Task[Any]],
) -> None:
    async def hook(entry: Entry, event: Event) -> None:
        if event.session_id == "s-poison":
            raise RuntimeError("handler bug")

    handler = Recorder(hook)
    runtime = make(handler, max_deliveries=3, reclaim_idle_ms=50)
    background(runtime)
    poison, good = await add(redis, keys, fill(1, "s-poison"), fill(2, "s-ok"))
    await wait_for(lambda: redis.xlen(keys.dead))
    [record] = await dead_letters(redis, keys)
    assert record["id"] == poison.encode()
    assert b"MAX_DELIVERIES=3" in record["error"]
    assert record["deliveries"] == b"3"  # its handler failed 3 times
    assert record["fill_id"] == b"f-1"
    assert [d for i, d in handler.calls if i == poison] == [0, 1, 2]  # tried exactly 3 times
    assert handler.handled == [(good, "f-2")]  # the entry behind it was not blocked
    await wait_for(lambda: _empty(pending(redis, keys)))
    assert runtime.stats.dead == 1 and runtime.stats.failed == 3


async def test_retry_defers_without_counting_as_a_failure(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    tries: dict[str, int] = {}

    async def hook(entry: Entry, event: Event) -> None:
        tries[entry.id] = tries.get(entry.id, 0) + 1
        if event.fill_id == "f-1" and tries[entry.id] <= 3:
            raise Retry("not yet", after_ms=20)

    handler = Recorder(hook)
    # MAX_DELIVERIES=1: a deferral that counted as a delivery would dead-letter it
    runtime = make(handler, max_deliveries=1)
    ids = await add(redis, keys, fill(1), fill(2), fill(3, "s-other"))
    stats = await runtime.run(until_drained=True)
    assert stats.deferred == 3
    assert stats.failed == 0 and stats.dead == 0
    assert stats.processed == 3
    order = [fill_id for _, fill_id in handler.handled]
    assert order.index("f-1") < order.index("f-2")  # its lane waited behind it
    assert order[0] == "f-3"  # another lane did not
    assert tries[ids[0]] == 4 and tries[ids[1]] == 1
    assert await pending(redis, keys) == []
    assert await redis.xlen(keys.dead) == 0


async def test_reclaim_takes_only_idle_entries_of_other_consumers(
    redis: aioredis.Redis,
    keys: Keys,
    make: Callable[..., Runtime],
) -> None:
    runtime = make(Recorder(), reclaim_idle_ms=400)
    await runtime.ensure_group()
    stale = await add(redis, keys, fill(1), fill(2))
    await redis.xreadgroup(GROUP, "dead-consumer", {keys.stream: ">"}, count=10)
    await idle_for(redis, keys, 400)
    fresh = await add(redis, keys, fill(3))
    await redis.xreadgroup(GROUP, "live-consumer", {keys.stream: ">"}, count=10)

    handler = Recorder()
    reclaimer = make(handler, reclaim_idle_ms=400)
    stats = await reclaimer.run(until_drained=True)
    assert [entry_id for entry_id, _ in handler.handled] == stale
    assert stats.reclaimed == 2
    assert [d for _, d in handler.calls] == [0, 0]  # reclaimed: delivered again, never failed
    assert await pending(redis, keys) == fresh  # the live consumer's entry is left alone


def test_lane_dependencies_order_only_what_conflicts() -> None:
    from workers.runtime import Lane, dependencies

    def lane(*parts: str) -> Lane:
        return parts

    lanes = [
        lane("s", "BTC", "o1"),  # 0 buy
        lane("s", "BTC", "o2"),  # 1 buy, another order: independent of 0
        lane("s", "BTC", "o1"),  # 2 buy, same order: after 0
        lane("s", "BTC"),  # 3 sell on the pair: after every earlier BTC fill
        lane("s", "ETH", "o3"),  # 4 other pair: independent
        lane("s", "BTC", "o4"),  # 5 buy after the sell: after 3
        lane("s"),  # 6 session event: after the latest entry of every lane of the session
        lane("t", "BTC", "o1"),  # 7 another session: independent
    ]
    assert dependencies(lanes) == [[], [], [0], [1, 2], [], [3], [1, 2, 3, 4, 5], []]


async def test_an_entry_deferred_earlier_keeps_its_place_in_its_lane(
    redis: aioredis.Redis, keys: Keys, make: Callable[..., Runtime]
) -> None:
    """A lane's later entry, read in a later batch, still waits for the earlier one that was
    deferred (FIFO needs the pair's earlier buys); other lanes go on."""
    deferred_once: list[str] = []

    async def hook(entry: Entry, event: Event) -> None:
        if event.session_id == "s-a" and not deferred_once:
            deferred_once.append(entry.id)
            raise Retry("not yet", after_ms=100)

    handler = Recorder(hook)
    runtime = make(handler, batch_size=1)  # one entry per batch: the later ones come later
    first, other, second = await add(redis, keys, fill(1, "s-a"), fill(2, "s-b"), fill(3, "s-a"))
    await runtime.run(until_drained=True)
    order = [entry_id for entry_id, _ in handler.handled]
    assert order.index(first) < order.index(second)
    assert set(order) == {first, other, second}
    assert deferred_once == [first]
