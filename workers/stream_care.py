"""Stream care, the first phase of a sweep pass: the input stream's consumer groups.

Entries stuck in the `coverage`/`migrator` groups, consumers long dead, growth of the
dead-letter stream. A group with no live consumer and work waiting is taken over: the
sweeper consumes it itself, as one of its consumers, through the group's own registration
(`workers.groups.runtime_for`), within a time budget. The migrator's undelivered backlog
is left to the migration safety net: only its stuck entries are taken over.
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
        self._delconsumer = app.redis.register_script(_DELCONSUMER_IF_IDLE)

    async def check(self, report: StreamReport) -> None:
        now = time.time_ns() // 1_000_000  # stream ids and heartbeats are wall-clock times
        stream = self.keys.stream
        try:
            infos = {as_text(g["name"]): g for g in await self.redis.xinfo_groups(stream)}
            exists = True
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            infos, exists = {}, False
        for group in self.groups:
            live = await self._live(group, now)
            report.live[group] = len(live)
            info = infos.get(group)
            if info is not None:
                await self._forget_dead(group, live, report)
            if live or not exists:
                continue
            idle = await self._idle_pending(group) if info is not None else 0
            # the migrator's undelivered backlog is the migration safety net's: reclaim only
            if idle > 0 or (group == "coverage" and await self._behind(info, now)):
                await self._take_over(group, report)
                if (left := await self._idle_pending(group)) > 0:
                    report.stuck[group] = left
                    await self._alert_once(
                        f"stuck:{group}",
                        "stuck_entries",
                        f"{left} entries of group {group} pending longer than {self.settings.reclaim_idle_ms} ms "
                        "and no live consumer",
                        group=group,
                        entries=left,
                    )
        await self._dead_letters(report)

    async def _live(self, group: str, now: int) -> list[str]:
        members = await self.redis.zrangebyscore(
            self.keys.heartbeats(group), now - HEARTBEAT_FRESH_MS, "+inf"
        )
        names = [as_text(m) for m in members]
        return [n for n in names if not n.startswith(SWEEPER_CONSUMER_PREFIX)]

    async def _forget_dead(self, group: str, live: list[str], report: StreamReport) -> None:
        """XGROUP DELCONSUMER consumers long idle with nothing pending."""
        idle_limit = DEAD_CONSUMER_IDLE_FACTOR * self.settings.reclaim_idle_ms
        for consumer in await self.redis.xinfo_consumers(self.keys.stream, group):
            name = as_text(consumer["name"])
            if name in live or int(consumer["pending"]) or int(consumer["idle"]) < idle_limit:
                continue
            self.guard.check()
            await self._delconsumer(keys=[self.keys.stream], args=[group, name])
            await self.redis.zrem(self.keys.heartbeats(group), name)
            report.removed_consumers.append(f"{group}/{name}")
            log.info("removed consumer %s of %s: idle, nothing pending", name, group)

    async def _idle_pending(self, group: str) -> int:
        rows = await self.redis.xpending_range(
            self.keys.stream,
            group,
            min="-",
            max="+",
            count=1000,
            idle=self.settings.reclaim_idle_ms,
        )
        return len(rows)

    async def _behind(self, info: dict[Any, Any] | None, now: int) -> bool:
        """The group is missing, or its oldest undelivered entry is older than one interval."""
        if info is None:
            return bool(await self.redis.xlen(self.keys.stream))
        if info.get("lag") == 0:
            return False
        after = as_text(info.get("last-delivered-id") or b"0-0")
        first = await self.redis.xrange(self.keys.stream, min="(" + after, max="+", count=1)
        if not first:
            return False
        ms, _ = stream_id(as_text(first[0][0]))
        return now - ms > self.settings.interval_seconds * 1000

    async def _take_over(self, group: str, report: StreamReport) -> None:
        """Handle the group's entries as one of its consumers, within a time budget; it ends
        early when the guard would stop the pass (lease lost, SIGTERM)."""
        self.guard.check()
        stop = asyncio.Event()
        try:
            runtime, close = await runtime_for(group, self.app, self.consumer, stop=stop)
        except Exception as exc:  # e.g. the migrator is not installed, PostgreSQL is down
            report.stuck[group] = await self._idle_pending(group)
            await self._alert_once(
                f"nohandler:{group}",
                "stuck_entries",
                f"group {group} has entries waiting and no live consumer; the sweeper cannot take "
                f"them: {one_line(exc)}",
                group=group,
            )
            return
        loop = asyncio.get_running_loop()
        budget = min(60.0, max(5.0, self.settings.interval_seconds / 2))
        timer = loop.call_later(budget, stop.set)
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
        report.taken_over[group] = stats.processed + stats.dead
        log.info(
            "no live %s consumer: the sweeper handled %d entries (%d dead-lettered)",
            group,
            stats.processed,
            stats.dead,
            extra={"group": group},
        )
        await self._delconsumer(keys=[self.keys.stream], args=[group, self.consumer])

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
