"""Token-guarded keys (storage/locks.py) against real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from storage.keys import Keys
from storage.locks import Lease, TokenLock


async def test_only_the_holder_renews_or_releases(redis: aioredis.Redis, keys: Keys) -> None:
    key = keys.settlement_lock("s-1")
    first = TokenLock(redis, key, 60_000)
    second = TokenLock(redis, key, 60_000)
    assert await first.acquire() and not await second.acquire()
    assert 0 < await redis.pttl(key) <= 60_000

    await redis.set(key, second.token, px=60_000)  # first's lock expired, second took it
    second.held = True
    assert not await first.renew() and not first.held
    await first.release()
    assert await redis.get(key) == second.token.encode()

    assert await second.renew()
    await second.release()
    assert await redis.exists(key) == 0 and not second.held


async def test_a_lease_is_renewed_taken_when_free_and_names_its_holder(
    redis: aioredis.Redis, keys: Keys
) -> None:
    a = Lease(redis, keys.sweeper_lease, "host-a", 5_000)
    b = Lease(redis, keys.sweeper_lease, "host-b", 5_000)
    assert a.token.startswith("host-a/")
    assert await a.refresh() and not await b.refresh()
    await redis.pexpire(keys.sweeper_lease, 100)
    assert await a.refresh() and await redis.pttl(keys.sweeper_lease) > 100  # renewed

    a.held = False  # a renewal whose reply was lost: the key is still ours
    assert await a.refresh()

    await a.release()
    assert await b.refresh() and await redis.get(keys.sweeper_lease) == b.token.encode()
    await b.release()
