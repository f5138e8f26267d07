"""Auto-pipelining of script calls: concurrent callers share one round trip.

The coverage worker runs many lanes at once; each fill costs a few EVALSHA calls.
Calls issued in the same event-loop tick are sent as one non-transactional pipeline
(each script is still atomic on its own), which divides the per-command overhead of
the client by the number of lanes in flight.

On a Redis Cluster the same pipeline is split by redis-py per node (each call goes to the
node of its keys' slot, which must be one: see storage/scripts.py), and a NOSCRIPT from a
node whose cache is empty (restart, failover) loads the batch's scripts on every primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from storage import scripts
from storage.redis import AnyRedis
from storage.scripts import LuaScript

Call = tuple[LuaScript, Sequence[Any], Sequence[Any], asyncio.Future[Any]]


class Pipeliner:
    def __init__(self, redis: AnyRedis, max_batch: int = 256) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._queue: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()

    async def run(self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return await self.submit(script, keys, args)

    async def run_many(
        self, calls: Sequence[tuple[LuaScript, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """Several calls in the same round trip; each result, or the exception it raised."""
        futures = [self.submit(script, keys, args) for script, keys, args in calls]
        results: list[Any] = []
        for future in futures:
            try:
                results.append(await future)
            except Exception as exc:  # the caller decides per call
                results.append(exc)
        return results

    def submit(
        self, script: LuaScript, keys: Sequence[Any], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue one call for the next flush (this event-loop tick's pipeline)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

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
                    future.set_result(await scripts.run(self.redis, script, keys, args))
                return
            results = await self._pipeline(batch)
            # a node lost its script cache (restart, failover): load what it lacked and
            # re-send only those calls (the others ran: running them twice would not be safe)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                    await scripts.load(self.redis, script)
                again = await self._pipeline([batch[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
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
                scripts.queue(pipe, script, keys, args)
            return list(await pipe.execute(raise_on_error=False))
