"""Lua scripts on one Redis or a Redis Cluster: each call runs on the slot of its keys.

A script call names its keys; on a cluster they must all hash to one slot (the `{sid}`
hash tags make a session's keys do so), and it runs on the node that serves that slot.
Each node keeps its own script cache, which a restart or a failover empties, so a
NOSCRIPT reply loads the script (on every primary of a cluster) and retries once.

redis-py refuses `pipeline.evalsha()` on a cluster pipeline (its block list, still in
8.1; redis-py issue #2914) while it routes a raw `EVALSHA` by its keys like any other
command: `queue()` adds the raw command, so one code path serves both kinds of pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from storage.redis import AnyRedis


class LuaScript(Protocol):
    """What a script call needs: the text and its SHA1 (redis-py's AsyncScript has both)."""

    script: Any  # str | bytes
    sha: str


class Script:
    """A Lua script that belongs to no client: build it once, run it on any."""

    __slots__ = ("script", "sha")

    def __init__(self, text: str) -> None:
        self.script = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class CrossSlot(ValueError):
    """Keys of one atomic step that a Redis Cluster would place in different slots."""


def slot_of(keys: Sequence[str | bytes]) -> int:
    """The one hash slot of `keys` (0-16383); CrossSlot naming them if they span several."""
    slots = {key_slot(k.encode() if isinstance(k, str) else k) for k in keys}
    if len(slots) > 1:
        shown = ", ".join(repr(k) for k in keys[:6])
        raise CrossSlot(f"keys in {len(slots)} hash slots: {shown}")
    return slots.pop() if slots else 0


async def load(redis: AnyRedis, script: LuaScript) -> str:
    """SCRIPT LOAD on this Redis, or on every primary of a cluster; the script's SHA1."""
    sha = await redis.script_load(script.script)
    script.sha = sha.decode() if isinstance(sha, bytes) else str(sha)
    return script.sha


async def run(
    redis: AnyRedis, script: LuaScript, keys: Sequence[Any], args: Sequence[Any] = ()
) -> Any:
    """EVALSHA on the node that serves the keys' slot; on NOSCRIPT, load and retry once."""
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await load(redis, script)
        return await redis.evalsha(script.sha, len(keys), *keys, *args)


def queue(
    pipe: Pipeline | ClusterPipeline, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]
) -> None:
    """Add one script call to a pipeline of either client (a raw EVALSHA: see above)."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
