"""Auto-pipelining of script calls: concurrent callers share one round trip.

The coverage worker runs many lanes at once; each fill costs a few EVALSHA calls.
Calls issued in the same event-loop tick are sent as one non-transactional pipeline
(each script is still atomic on its own), which divides the per-command overhead of
the client by the number of lanes in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], asyncio.Future[Any]]


class Pipeliner:
    def __init__(self, redis: aioredis.Redis, max_batch: int = 256) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._queue: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.max_batch):
            task = asyncio.ensure_future(self._send(queue[start : start + self.max_batch]))
            self._sending.add(task)  # keep a reference until it is done
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, future = batch[0]
                if not future.done():
                    future.set_result(await script(keys=keys, args=args))
                return
            results = await self._pipeline(batch)
            if any(isinstance(r, NoScriptError) for r in results):  # after a Redis restart
                for script, *_ in batch:
                    script.sha = await self.redis.script_load(script.script)
                results = await self._pipeline(batch)
            for (_, _, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:  # the connection failed: every caller learns it
            for _, _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _pipeline(self, batch: list[Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                if not script.sha:
                    script.sha = await self.redis.script_load(script.script)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
