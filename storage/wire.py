"""Commands onto the wire with hiredis' packer (redis-py's asyncio connections use a
pure-Python one; its sync connections already use hiredis' when installed).

Packing dominated the coverage hot path's CPU (a profile of bench/coverage.py: 1.7 s of
7 s for 10,000 fills went to redis-py's `pack_command`); hiredis packs the same bytes in
C. The semantics are redis-py's own `HiredisRespSerializer`.
"""

from __future__ import annotations

from typing import Any

import hiredis  # a dependency: redis[hiredis]
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

# hiredis refuses a bytearray and packs a non-contiguous memoryview unlike bytes(view):
# those go through bytes() first, as in redis-py's serializer
_BUFFERS = frozenset({bytearray, memoryview})


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        if _BUFFERS.isdisjoint(map(type, args)):  # the usual case: packed as they are
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass  # a bytearray's subclass, or what nothing packs: the way below says
        args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from None


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class HiredisUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_FAST = {
    Connection: HiredisConnection,
    SSLConnection: HiredisSSLConnection,
    UnixDomainSocketConnection: HiredisUnixConnection,
}


def fast_packing(client: aioredis.Redis) -> aioredis.Redis:
    """Make the client's pool open connections that pack with hiredis (when available)."""
    pool = client.connection_pool
    fast = _FAST.get(pool.connection_class)
    if fast is not None:
        pool.connection_class = fast
    return client
