"""The fault injector: at random (seeded) times, one fault at a time, until stopped.

Kinds: `kill9` (SIGKILL a worker, restarted after a moment — sometimes with a
MMOPS_CRASH_POINT, counted as `crash_point` when it fires), `sigterm` (a graceful stop,
which must exit 0, then a restart), `redis_restart` (the run's redis-server killed or
stopped, down for a moment, started again on its append-only file), `pg_cut` (every
PostgreSQL connection through the proxy dropped and new ones refused for a moment).
The exchange's faults (PAPER_FAULTS) run inside the workers all along and are counted by
the paper exchange. A worker that exits by itself is restarted by the supervisor loop.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from bench.chaos.config import ChaosConfig
from bench.chaos.pg_proxy import PgProxy
from bench.chaos.processes import Worker, Workers
from storage.servers import RedisProcess

WEIGHTS = {"kill9": 0.5, "sigterm": 0.15, "pg_cut": 0.22, "redis_restart": 0.13}
COVERAGE_POINTS = ("fill_recorded", "step_claimed", "order_placed", "before_ack")
CRASH_SHARE = 0.3  # of restarts after a kill, with a crash point


class Injector:
    def __init__(
        self,
        config: ChaosConfig,
        workers: Workers,
        redis_server: RedisProcess,
        proxy: PgProxy,
        gate: asyncio.Lock,
        after_redis_restart: Callable[[], Awaitable[None]],
    ) -> None:
        self.config = config
        self.workers = workers
        self.redis_server = redis_server
        self.proxy = proxy
        self.gate = gate
        self.after_redis_restart = after_redis_restart
        self.rng = random.Random(config.seed * 104729 + 3)
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []
        self.stopping = asyncio.Event()
        self._busy: set[str] = set()  # workers the injector is restarting itself
        self._tasks: set[asyncio.Task[None]] = set()
        self._t0 = 0.0

    def _note(self, kind: str, target: str) -> None:
        self.counts[kind] += 1
        self.log.append((round(asyncio.get_running_loop().time() - self._t0, 2), kind, target))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        supervisor = asyncio.create_task(self._supervise())
        try:
            while not self.stopping.is_set():
                wait = min(
                    self.rng.expovariate(1 / self.config.fault_every), 4 * self.config.fault_every
                )
                try:
                    await asyncio.wait_for(self.stopping.wait(), wait)
                    break
                except TimeoutError:
                    pass
                kind = self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
                await getattr(self, kind)()
        finally:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.stopping.set()
            await supervisor

    # --- the faults ----------------------------------------------------------------
    def _victim(self) -> Worker | None:
        alive = [w for w in self.workers.pool if w.alive and w.name not in self._busy]
        return self.rng.choice(alive) if alive else None

    async def kill9(self) -> None:
        w = self._victim()
        if w is None:
            return
        self._busy.add(w.name)
        self.workers.kill(w)
        self._note("kill9", w.name)
        self._later(w, self._crash_point(w))

    async def sigterm(self) -> None:
        w = self._victim()
        if w is None:
            return
        self._busy.add(w.name)
        self._note("sigterm", w.name)
        await asyncio.to_thread(self.workers.terminate, w)
        self._later(w, "")

    async def redis_restart(self) -> None:
        hard = self.rng.random() < 0.5
        down = self.rng.uniform(0.2, 2.0)
        async with self.gate:  # the trader waits while the server is down
            await asyncio.to_thread(self.redis_server.kill if hard else self.redis_server.stop)
            self._note("redis_restart", "kill -9" if hard else "SIGTERM")
            await asyncio.sleep(down)
            await asyncio.to_thread(self.redis_server.start, 60.0)
            await self.after_redis_restart()

    async def pg_cut(self) -> None:
        await self.proxy.cut()
        self._note("pg_cut", "proxy")
        await asyncio.sleep(self.rng.uniform(0.3, 3.0))
        await self.proxy.restore()

    def _crash_point(self, w: Worker) -> str:
        if self.rng.random() >= CRASH_SHARE or w.command == "sweeper":
            return ""
        if w.command == "migrator":
            return f"sync_committed@{self.rng.randint(1, 3)}"
        return f"{self.rng.choice(COVERAGE_POINTS)}@{self.rng.randint(1, 40)}"

    def _later(self, w: Worker, crash_point: str) -> None:
        delay = self.rng.uniform(0.1, 1.5)

        async def restart() -> None:
            await asyncio.sleep(delay)
            self.workers.start(w, crash_point)
            self._busy.discard(w.name)

        task = asyncio.create_task(restart())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self) -> None:
        """Restart what died by itself: a crash point that fired, an exit at a dead server."""
        while not self.stopping.is_set():
            await asyncio.sleep(0.25)
            for w in self.workers.dead():
                if w.name in self._busy:
                    continue
                code = w.process.returncode if w.process is not None else None
                self._note("crash_point" if w.crash_point else f"exit_{code}", w.name)
                self.workers.start(w, "")

    async def settle(self) -> None:
        """Faults over: PostgreSQL reachable, every worker running."""
        self.stopping.set()
        await self.proxy.restore()
        for w in self.workers.dead():
            self.workers.start(w, "")
