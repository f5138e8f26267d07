"""A backlog of fills released to a group's consumers at one instant of Redis's clock.

The fills are queued before any consumer exists, then the group is created at `$` (so
nothing is delivered yet); once every consumer is blocked in XREADGROUP, one MULTI moves
the group back to the stream's start (XGROUP SETID 0) and XADDs the last fill, which
wakes them all at once. That XADD's stream id is the start of the drain on Redis's
clock: process start-up is not counted, and 2 or 4 processes start together.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from mmops.progress import Progress
from storage.redis import as_text, stream_id

Fields = dict[str, str]
PIPELINE = 5000  # XADDs per round trip while queueing


class WorkerDied(RuntimeError):
    """A consumer process exited while the bench waited for it."""


def entry_ms(entry_id: object) -> int:
    """The millisecond part of a stream id: when Redis appended the entry."""
    return stream_id(as_text(entry_id))[0]


async def xadd_all(redis: aioredis.Redis, stream: str, fills: Sequence[Fields]) -> list[str]:
    """XADD every fill, PIPELINE to a round trip; their stream ids, in order."""
    ids: list[str] = []
    for start in range(0, len(fills), PIPELINE):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in fills[start : start + PIPELINE]:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            ids += [as_text(i) for i in await pipe.execute()]
    return ids


@dataclass
class Backlog:
    """`count` fills on `stream` for `group`; all but the last queued by `queue()`."""

    redis: aioredis.Redis
    stream: str
    group: str
    fills: list[Fields]
    ids: list[str] = field(default_factory=list)  # the fills' stream ids, once queued/released

    @classmethod
    def of(
        cls,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        count: int,
        make: Callable[[int, random.Random], Fields],
        seed: int,
    ) -> Backlog:
        rng = random.Random(seed)
        return cls(redis, stream, group, [make(n, rng) for n in range(count)])

    async def queue(self) -> None:
        self.ids = await xadd_all(self.redis, self.stream, self.fills[:-1])
        await self.redis.xgroup_create(self.stream, self.group, id="$", mkstream=True)

    async def release(self) -> int:
        """Point the group at the stream's start and XADD the last fill: the start (ms)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xgroup_setid(self.stream, self.group, "0", entries_read=0)
            pipe.xadd(self.stream, self.fills[-1])  # type: ignore[arg-type]
            _, last = await pipe.execute()
        self.ids.append(as_text(last))
        return entry_ms(last)

    @property
    def released_id(self) -> str:
        return self.ids[-1]


async def wait_registered(
    redis: aioredis.Redis,
    stream: str,
    group: str,
    names: Sequence[str],
    workers: Sequence[subprocess.Popen[bytes]],
    *,
    timeout_s: float = 60,
) -> None:
    """Until every named consumer has read from the group, then a moment for each to block
    in XREADGROUP (a consumer that misses the wake starts at its next read, ms later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            seen = {as_text(c["name"]) for c in await redis.xinfo_consumers(stream, group)}
        except aioredis.ResponseError:  # the group is not there yet
            seen = set()
        if seen >= set(names):
            break
        _check_alive(workers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumers {sorted(set(names) - seen)} did not start in time")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


async def group_state(redis: aioredis.Redis, stream: str, group: str) -> tuple[str, int, int]:
    """(last delivered id, entries read, pending) of `group`."""
    for info in await redis.xinfo_groups(stream):
        if as_text(info["name"]) == group:
            return (
                as_text(info["last-delivered-id"]),
                int(info.get("entries-read") or 0),
                int(info["pending"]),
            )
    return "0-0", 0, 0


async def wait_drained(
    redis: aioredis.Redis,
    stream: str,
    group: str,
    last_id: str,
    workers: Sequence[subprocess.Popen[bytes]],
    *,
    label: str,
    total: int,
    timeout_s: float,
    before: int = 0,
) -> None:
    """Until the group has delivered `last_id` and nothing is pending (every entry acked),
    with a progress line on stderr (`total` entries, after the `before` done earlier); a
    worker that exits or a timeout raises."""
    deadline = time.monotonic() + timeout_s
    last = stream_id(last_id)
    with Progress(total, label) as progress:
        while True:
            delivered, read, pending = await group_state(redis, stream, group)
            progress.advance(max(0, min(total, read - pending - before) - progress.done))
            if stream_id(delivered) >= last and pending == 0:
                progress.advance(total - progress.done)
                return
            _check_alive(workers)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{label}: not drained in {timeout_s:.0f} s ({read - pending - before} of "
                    f"{total}, {pending} pending)"
                )
            await asyncio.sleep(0.05)


def _check_alive(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is not None:
            raise WorkerDied(f"worker {worker.pid} exited with {worker.returncode}")
