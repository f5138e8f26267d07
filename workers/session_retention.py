"""Session retention (docs/contract.md §3 Retention): Redis holds open work, not history.

A session's Redis state is kept while any of its positions is open (or a TP of it may
still sell), while any of its changes is not yet in PostgreSQL (`storage.changes.is_synced`), and
for SESSION_RETENTION_DAYS after it closed; then every per-session key is removed
(`Keys.session_keys`), the session leaves the indexes, and an exchange that keeps
history in mmops' Redis (the paper one) forgets its finished orders and fill records.

"Closed at" is the session's last activity (`mm:sessions`, set by every event the
coverage worker processed): the event that closed its last position is its last one.
Each sweeper pass looks at up to RETENTION_BATCH sessions idle longer than the
retention, oldest first, going on from where the last pass stopped (`retention_offset`
in `mm:sweeper:state`) while older ones are kept. The check and the removal are one
optimistic transaction (WATCH on the session's keys): an event that arrives meanwhile
cancels the removal.

Until the migration writes an ended session's later changes through to PostgreSQL, an
ended session that is closed and past its retention but not (or not fully) in
PostgreSQL is migrated once more (`migrate_session(force=True)`, through the sweeper)
before it is removed: its changes after the migration, or the whole session when the
migrator held it back because fills recorded after its end made the count differ from
the end's `fills` (issue 10 #1). A session that never ended is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.exceptions import WatchError

from base import logs
from storage.changes import is_synced
from storage.redis import as_text
from trading.exchange import KeepsHistory
from trading.positions import MAY_SELL, decode_position
from workers.lease import Guard
from workers.parts import TradingParts

log = logs.get("mmops.retention")

MS_PER_DAY = 86_400_000
RETENTION_BATCH = 200  # sessions looked at per pass


@dataclass
class RetentionReport:
    looked_at: int = 0
    removed: list[str] = field(default_factory=list)
    open: int = 0  # kept: a position is open or a TP may still sell
    unsynced: int = 0  # kept: a change is not in PostgreSQL yet
    resynced: int = 0  # migrated once more before being removed
    changed: int = 0  # an event arrived during the check: looked at again next pass

    def note(self) -> str:
        return (
            f"session retention: {self.looked_at} sessions past SESSION_RETENTION_DAYS, "
            f"removed {len(self.removed)}, kept {self.open} open and {self.unsynced} not yet "
            f"in PostgreSQL" + (f", {self.resynced} migrated once more" if self.resynced else "")
        )


class SessionRetention:
    """Removes the Redis state of sessions closed longer than SESSION_RETENTION_DAYS."""

    def __init__(
        self,
        app: TradingParts,
        guard: Guard,
        resync: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.app = app
        self.redis = app.redis
        self.keys = app.keys
        self.guard = guard
        self.resync = resync  # migrate a session once more; None if it could, else why not

    async def run(self) -> RetentionReport:
        report = RetentionReport()
        days = self.app.settings.session_retention_days
        cutoff = self.app.clock.now_ms() - int(days * MS_PER_DAY)
        state = self.keys.sweeper_state
        offset = int(await self.redis.hget(state, "retention_offset") or 0)
        sids = [
            as_text(m)
            for m in await self.redis.zrangebyscore(
                self.keys.sessions, "-inf", cutoff, start=offset, num=RETENTION_BATCH
            )
        ]
        for sid in sids:
            self.guard.check()
            report.looked_at += 1
            await self.expire(sid, report)
        kept = len(sids) - len(report.removed)
        self.guard.check()
        await self.redis.hset(
            state, "retention_offset", offset + kept if len(sids) == RETENTION_BATCH else 0
        )
        if report.removed:
            log.info(report.note())
        return report

    async def expire(self, sid: str, report: RetentionReport) -> None:
        """Remove the session's state if it is closed and in PostgreSQL (else count why not)."""
        keys = self.keys
        watched = [keys.positions(sid), keys.fills(sid), keys.session(sid), keys.orders(sid)]
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(*watched, keys.migration_completed(sid))
                if not await pipe.exists(keys.positions(sid), keys.fills(sid), keys.session(sid)):
                    await pipe.reset()  # type: ignore[no-untyped-call]  # its state is gone already
                    await self._forget(sid, [], [])
                    report.removed.append(sid)
                    return
                raw = await pipe.hgetall(keys.positions(sid))
                positions = [decode_position(value) for value in raw.values()]
                if any(p.is_open or any(s.status in MAY_SELL for s in p.steps) for p in positions):
                    report.open += 1
                    return
                if not await is_synced(self.redis, keys, sid):
                    if (
                        attempt == 1
                        and self.resync is not None
                        and await pipe.hexists(keys.session(sid), "ended_at")
                    ):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        why = await self.resync(sid)
                        if why is None:
                            report.resynced += 1
                            continue  # in PostgreSQL now: check again and remove
                        log.info("session %s kept: %s", sid, why, extra={"session_id": sid})
                    report.unsynced += 1
                    return
                order_ids = {s.order_id for p in positions for s in p.steps if s.order_id}
                order_ids |= {as_text(m) for m in await pipe.smembers(keys.tp_orders(sid))}
                fill_ids = [as_text(f) for f in await pipe.hkeys(keys.fills(sid))]
                self.guard.check()
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.unlink(*keys.session_keys(sid, order_ids, (p.id for p in positions)))
                try:
                    await pipe.execute()
                except WatchError:
                    report.changed += 1
                    return
            await self._forget(sid, sorted(order_ids), fill_ids)
            report.removed.append(sid)
            return

    async def _forget(self, sid: str, order_ids: list[str], fill_ids: list[str]) -> None:
        """The session is gone from Redis: its index entries, and the exchange's records."""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.sessions, sid)
            pipe.zrem(keys.sessions_ended, sid)
            pipe.zrem(keys.sweeper_open_sessions, sid)
            await pipe.execute()
        exchange = self.app.exchange
        if isinstance(exchange, KeepsHistory):
            await exchange.forget(order_ids=order_ids, fill_ids=[f"{sid}/{f}" for f in fill_ids])
        log.info("session %s removed from Redis (retention)", sid, extra={"session_id": sid})
