"""Token-guarded Redis keys: a lock or a lease that only its holder renews or releases.

SET NX PX takes the key with a token; renewing (PEXPIRE) and releasing (DEL) compare the
token first, in one script, so a holder whose key expired and was taken by someone else
can neither extend nor delete the new holder's key.
"""

from __future__ import annotations

import secrets

from storage.redis import AnyRedis

# KEYS: key   ARGV: token, ttl ms — extend only our own key
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: key   ARGV: token, ttl ms — renew our own key, or take it if it is free; 1 if ours now
_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: key   ARGV: token, ttl ms — take the key if it is free or held under a lease
# (`lease:<lease token>|<random>`); 1 if ours now
_TAKE_FENCED = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 6) ~= 'lease:' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: key   ARGV: token — delete only our own key
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TokenLock:
    """`key` held with `token` for `ttl_ms`: acquire, renew, release; `held` is the last answer."""

    def __init__(self, redis: AnyRedis, key: str, ttl_ms: int, *, token: str | None = None) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = token if token is not None else secrets.token_hex(8)
        self.held = False
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """SET NX PX: whether the key is ours now."""
        self.held = bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))
        return self.held

    async def renew(self) -> bool:
        """Extend the key by ttl_ms if it still holds our token."""
        self.held = bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        return self.held

    async def release(self) -> None:
        """Delete the key if it still holds our token; nothing if we do not hold it."""
        if self.held:
            self.held = False
            await self._release(keys=[self.key], args=[self.token])


class Lease(TokenLock):
    """One holder across processes, kept by calling `refresh` well within the TTL.

    The token names the holder (`<holder>/<random>`), so the key says who holds it.
    """

    def __init__(self, redis: AnyRedis, key: str, holder: str, ttl_ms: int) -> None:
        super().__init__(redis, key, ttl_ms, token=f"{holder}/{secrets.token_hex(6)}")
        self._refresh = redis.register_script(_REFRESH)

    async def refresh(self) -> bool:
        """Renew the lease if it is ours (also after a renewal whose reply was lost), take it
        if it is free: one script. Whether we hold it now; any error leaves `held` False."""
        try:
            self.held = bool(await self._refresh(keys=[self.key], args=[self.token, self.ttl_ms]))
        except BaseException:
            self.held = False
            raise
        return self.held


class FencedLock(TokenLock):
    """A lock taken under a lease (`lease:<lease token>|<random>`), by its holder only. It
    takes over a lock taken under a lease at once, not after its TTL. Under another lease:
    that lease is lost, so the pass that took the lock has stopped (a pass checks its lease
    before every action: workers/lease.py) or its process died. Under its own: a sweep of
    an earlier pass that could not release it (Redis went away; a holder sweeps a session
    once at a time). A lock taken without a lease (another token shape, `sweep --once`)
    is waited out as usual."""

    def __init__(self, redis: AnyRedis, key: str, ttl_ms: int, *, lease: str) -> None:
        super().__init__(redis, key, ttl_ms, token=f"lease:{lease}|{secrets.token_hex(4)}")
        self.lease = lease
        self._take = redis.register_script(_TAKE_FENCED)

    async def acquire(self) -> bool:
        self.held = bool(await self._take(keys=[self.key], args=[self.token, self.ttl_ms]))
        return self.held
