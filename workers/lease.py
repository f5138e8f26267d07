"""The sweeper's lease: exactly one active sweeper across processes.

The key `keys.sweeper_lease` is a `storage.locks.Lease` (`<consumer>/<token>`); this
module sizes its TTL from the sweep interval and keeps it in the background: renewed
every third of the TTL, taken when free, its changes logged. A crashed sweeper's lease
expires and a standby takes it.
"""

from __future__ import annotations

import asyncio

from base import logs
from base.logs import one_line
from storage.locks import Lease
from storage.redis import TRANSIENT_REDIS_ERRORS

log = logs.get("mmops.sweeper")


def lease_ttl_ms(interval_s: float) -> int:
    """A few intervals, between 1 s and 30 s: a crashed sweeper is replaced within that."""
    return int(min(30_000, max(1_000, 3 * interval_s * 1000)))


class LeaseKeeper:
    """Refreshes the lease (`refresh` once, `run` forever) and logs when it is taken or lost."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.every = lease.ttl_ms / 3000  # seconds between refreshes

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.refresh()

    async def refresh(self) -> None:
        lease = self.lease
        was = lease.held
        try:
            held = await lease.refresh()
        except TRANSIENT_REDIS_ERRORS as exc:
            held = lease.held = False
            log.warning("cannot reach Redis to keep the sweeper lease: %s", one_line(exc))
        if held and not was:
            log.info("sweeper lease taken by %s", lease.token)
        elif was and not held:
            log.warning("sweeper lease lost; standing by")
