"""Stream care, the first phase of a sweep pass: the input stream's consumer groups.

Entries stuck in the `coverage`/`migrator` groups, consumers long dead, growth of the
dead-letter stream, on every shard of the input stream (MM_STREAM_SHARDS): each shard's
groups are looked at on their own. A group with no live consumer and work waiting on a
shard is taken over there: the sweeper consumes that shard itself, as one of the group's
consumers, through the group's own registration (`workers.groups.runtime_for`), within
a time budget. The migrator's undelivered backlog is left to the migration safety net:
only its stuck entries are taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from base import logs
from base.logs import one_line
from storage.redis import as_text, stream_id
from workers.groups import INPUT_GROUPS, runtime_for
from workers.lease import Guard
from workers.parts import TradingParts

log = logs.get("mmops.sweeper")

HEARTBEAT_FRESH_MS = 10_000  # the runtime beats every 2 s
DEAD_CONSUMER_IDLE_FACTOR = 10  # x RECLAIM_IDLE_MS without activity and nothing pending
SWEEPER_CONSUMER_PREFIX = "sweeper-"

# KEYS: stream   ARGV: group, consumer — XGROUP DELCONSUMER only if nothing is pending
# (DELCONSUMER drops a consumer's pending entries; checked and done atomically)
_DELCONSUMER_IF_IDLE = """
local info = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(info) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) > 0 then return 0 end
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  end
end
return 0
"""


@dataclass
class StreamReport:
    live: dict[str, int] = field(default_factory=dict)  # group -> live consumers
    taken_over: dict[str, int] = field(default_factory=dict)  # group -> entries the sweeper handled
    stuck: dict[str, int] = field(default_factory=dict)  # group -> idle pending entries left
    removed_consumers: list[str] = field(default_factory=list)
    dead_len: int = 0
    dead_growth: int = 0


class StreamCare:
    """Stuck entries, dead consumers and dead letters of the input stream's groups."""

    groups: tuple[str, ...] = INPUT_GROUPS

    def __init__(self, app: TradingParts, consumer: str, guard: Guard | None = None) -> None:
        self.app = app
        self.guard = guard if guard is not None else Guard(app.stop)
        self.redis = app.redis
        self.keys = app.keys
        self.settings = app.settings
        self.consumer = consumer
        self._alerted: set[str] = set()
        self._deadline = 0.0  # loop time by which this pass's takeovers stop
        self._delconsumer = app.redis.register_script(_DELCONSUMER_IF_IDLE)

    async def check(self, report: StreamReport) -> None:
        now = time.time_ns() // 1_000_000  # stream ids and heartbeats are wall-clock times
        # one time budget for the takeovers of a pass, whatever the number of shards
        budget = min(60.0, max(5.0, self.settings.interval_seconds / 2))
        self._deadline = asyncio.get_running_loop().time() + budget
        live = {group: await self._live(group, now) for group in self.groups}
        report.live.update({group: len(names) for group, names in live.items()})
        for stream in self.keys.streams:
            await self._check_stream(stream, live, now, report)
        await self._dead_letters(report)

    async def _check_stream(
        self, stream: str, live: dict[str, list[str]], now: int, report: StreamReport
    ) -> None:
        try:
            infos = {as_text(g["name"]): g for g in await self.redis.xinfo_groups(stream)}
            exists = True
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            infos, exists = {}, False
        where = "" if self.keys.shards == 1 else f" on {stream}"
        for group in self.groups:
            info = infos.get(group)
            if info is not None:
                await self._forget_dead(stream, group, live[group], report)
            if live[group] or not exists:
                continue
            idle = await self._idle_pending(stream, group) if info is not None else 0
            # the migrator's undelivered backlog is the migration safety net's: reclaim only
            if idle > 0 or (group == "coverage" and await self._behind(stream, info, now)):
                await self._take_over(stream, group, report)
                if (left := await self._idle_pending(stream, group)) > 0:
                    report.stuck[group] = report.stuck.get(group, 0) + left
                    await self._alert_once(
                        f"stuck:{group}:{stream}",
                        "stuck_entries",
                        f"{left} entries of group {group}{where} pending longer than "
                        f"{self.settings.reclaim_idle_ms} ms and no live consumer",
                        group=group,
                        stream=stream,
                        entries=left,
                    )

    async def _live(self, group: str, now: int) -> list[str]:
        members = await self.redis.zrangebyscore(
            self.keys.heartbeats(group), now - HEARTBEAT_FRESH_MS, "+inf"
        )
        names = [as_text(m) for m in members]
        return [n for n in names if not n.startswith(SWEEPER_CONSUMER_PREFIX)]

    async def _forget_dead(
        self, stream: str, group: str, live: list[str], report: StreamReport
    ) -> None:
        """XGROUP DELCONSUMER consumers long idle with nothing pending (on this stream).

        A consumer reads every shard, so it is forgotten on each shard where it is idle;
        its heartbeat goes only once no shard's group knows it any more."""
        idle_limit = DEAD_CONSUMER_IDLE_FACTOR * self.settings.reclaim_idle_ms
        for consumer in await self.redis.xinfo_consumers(stream, group):
            name = as_text(consumer["name"])
            if name in live or int(consumer["pending"]) or int(consumer["idle"]) < idle_limit:
                continue
            self.guard.check()
            await self._delconsumer(keys=[stream], args=[group, name])
            if not await self._known_elsewhere(group, name):
                await self.redis.zrem(self.keys.heartbeats(group), name)
            shown = f"{group}/{name}" if self.keys.shards == 1 else f"{group}/{name} on {stream}"
            report.removed_consumers.append(shown)
            log.info("removed consumer %s of %s on %s: idle, nothing pending", name, group, stream)

    async def _known_elsewhere(self, group: str, name: str) -> bool:
        """Whether `name` is still a consumer of `group` on some shard."""
        if self.keys.shards == 1:
            return False
        for stream in self.keys.streams:
            try:
                consumers = await self.redis.xinfo_consumers(stream, group)
            except ResponseError:  # no such stream or group
                continue
            if any(as_text(c["name"]) == name for c in consumers):
                return True
        return False

    async def _idle_pending(self, stream: str, group: str) -> int:
        rows = await self.redis.xpending_range(
            stream,
            group,
            min="-",
            max="+",
            count=1000,
            idle=self.settings.reclaim_idle_ms,
        )
        return len(rows)

    async def _behind(self, stream: str, info: dict[Any, Any] | None, now: int) -> bool:
        """The group is missing, or its oldest undelivered entry is older than one interval."""
        if info is None:
            return bool(await self.redis.xlen(stream))
        if info.get("lag") == 0:
            return False
        after = as_text(info.get("last-delivered-id") or b"0-0")
        first = await self.redis.xrange(stream, min="(" + after, max="+", count=1)
        if not first:
            return False
        ms, _ = stream_id(as_text(first[0][0]))
        return now - ms > self.settings.interval_seconds * 1000

    async def _take_over(self, stream: str, group: str, report: StreamReport) -> None:
        """Handle the group's entries on `stream` as one of its consumers, within a time
        budget; it ends early when the guard would stop the pass (lease lost, SIGTERM)."""
        self.guard.check()
        stop = asyncio.Event()
        try:
            runtime, close = await runtime_for(
                group, self.app, self.consumer, stop=stop, stream=stream
            )
        except Exception as exc:  # e.g. the migrator is not installed, PostgreSQL is down
            report.stuck[group] = report.stuck.get(group, 0) + await self._idle_pending(
                stream, group
            )
            await self._alert_once(
                f"nohandler:{group}",
                "stuck_entries",
                f"group {group} has entries waiting and no live consumer; the sweeper cannot take "
                f"them: {one_line(exc)}",
                group=group,
            )
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(1.0, self._deadline - loop.time()), stop.set)
        mirror = asyncio.ensure_future(self.guard.watch(stop))
        try:
            stats = await runtime.run(until_drained=True)
        finally:
            timer.cancel()
            mirror.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mirror
            if close is not None:
                await close()
        report.taken_over[group] = report.taken_over.get(group, 0) + stats.processed + stats.dead
        log.info(
            "no live %s consumer: the sweeper handled %d entries of %s (%d dead-lettered)",
            group,
            stats.processed,
            stream,
            stats.dead,
            extra={"group": group},
        )
        await self._delconsumer(keys=[stream], args=[group, self.consumer])

    async def _dead_letters(self, report: StreamReport) -> None:
        """Alert when mm:dead grew since the last pass."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.dead)
            pipe.hget(self.keys.sweeper_state, "dead_len")
            length, before = await pipe.execute()
        report.dead_len = int(length)
        self.guard.check()
        if before is not None and int(length) > int(before):
            report.dead_growth = int(length) - int(before)
            await self.app.alert(
                "dead_letters",
                f"{report.dead_growth} new dead letters in {self.keys.dead} ({length} in all)",
                new=report.dead_growth,
                total=length,
            )
        await self.redis.hset(self.keys.sweeper_state, "dead_len", int(length))

    async def _alert_once(self, key: str, kind: str, message: str, **figures: object) -> None:
        if key not in self._alerted:
            self._alerted.add(key)
            await self.app.alert(kind, message, **figures)
