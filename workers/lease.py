"""The sweeper's lease, and the guard that stops a pass the moment it may no longer act.

The key `keys.sweeper_lease` is a `storage.locks.Lease` (`<consumer>/<token>`); the
`LeaseKeeper` sizes its TTL from the sweep interval and keeps it in the background:
renewed every third of the TTL, taken when free, its changes logged. Any failed
renewal counts as a loss, whatever the error (a timeout, OOM, READONLY, NOPERM): the
keeper never dies and never assumes it still holds the lease.

Fencing. `valid_until` is when the lease may expire at the earliest, as this process
sees it: the start of the last successful renewal + TTL - a margin (a third of the
TTL) left for an action already under way to finish. The lease key cannot expire
before then, so no other sweeper can take it before then. A pass checks its `Guard`
before every action (each phase, each session, each position): past `valid_until`, or
once SIGTERM set the stop event, the check raises `PassStopped` and the pass ends
early without another write. So at no time do two sweepers act: the old holder
stops at `valid_until`, the new one can start only when the key expired, later.

A sweeper whose renewal failed stands by for one TTL before it may take the lease
again, so that a healthy standby takes over rather than the sweeper that cannot renew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from base import logs
from base.logs import one_line
from storage.locks import Lease

log = logs.get("mmops.sweeper")

T = TypeVar("T")


def lease_ttl_ms(interval_s: float) -> int:
    """A few intervals, between 1 s and 30 s: a crashed sweeper is replaced within that."""
    return int(min(30_000, max(1_000, 3 * interval_s * 1000)))


class PassStopped(Exception):
    """The pass must stop now: the lease is lost, or the process is asked to stop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseKeeper:
    """Refreshes the lease (`refresh` once, `run` forever) and knows until when it holds it."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.every = lease.ttl_ms / 3000  # seconds between refreshes
        self.margin = lease.ttl_ms / 3000  # seconds of the TTL kept for an action under way
        self.valid_until = 0.0  # event-loop time; 0: not held
        self.standby_until = 0.0  # after a failed renewal: no taking the lease before this

    def valid(self) -> bool:
        """Whether this process may act as the sweeper now."""
        return self.lease.held and asyncio.get_running_loop().time() < self.valid_until

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.refresh()

    async def refresh(self) -> None:
        lease = self.lease
        was = self.valid_until > 0
        sent = asyncio.get_running_loop().time()  # the key's TTL starts after this
        if sent < self.standby_until:
            return
        try:
            held = await lease.refresh()
        except Exception as exc:  # any reply but "yes" is a loss: never act on a stale lease
            held = lease.held = False
            self.standby_until = sent + lease.ttl_ms / 1000
            log.warning(
                "sweeper lease not renewed, treated as lost: %s: %s",
                type(exc).__name__,
                one_line(exc),
            )
        self.valid_until = sent + lease.ttl_ms / 1000 - self.margin if held else 0.0
        if held and not was:
            log.info("sweeper lease taken by %s", lease.token)
        elif was and not held:
            log.warning("sweeper lease lost; standing by")


class Guard:
    """Checked before every action of a pass: raises PassStopped when it must stop.

    Without a keeper (`mmops sweep --once`, which takes no lease) only the stop event counts.
    """

    def __init__(self, stop: asyncio.Event, keeper: LeaseKeeper | None = None) -> None:
        self.stop = stop
        self.keeper = keeper

    def lease_valid(self) -> bool:
        return self.keeper is None or self.keeper.valid()

    @property
    def lease(self) -> str | None:
        """The lease's token while it is held (None without a keeper)."""
        if self.keeper is None or not self.keeper.lease.held:
            return None
        return self.keeper.lease.token

    def check(self) -> None:
        if not self.lease_valid():
            raise PassStopped("the sweeper lease is lost")
        if self.stop.is_set():
            raise PassStopped("asked to stop (SIGTERM)")

    async def watch(self, target: asyncio.Event, every: float = 0.05) -> None:
        """Set `target` once the guard would stop the pass (ends a take-over run)."""
        while True:
            try:
                self.check()
            except PassStopped:
                target.set()
                return
            await asyncio.sleep(every)


async def gather_settled(*aws: Awaitable[T]) -> list[T]:
    """`asyncio.gather` that lets every task finish its current action before an exception
    (PassStopped first) is raised: a stopped pass leaves no engine call half-way."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, PassStopped):
            raise error
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]
