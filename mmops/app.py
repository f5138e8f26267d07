"""Building a process: connections, the exchange, the ledger and engine, from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from base import logs
from base.clock import Clock, SystemClock
from base.settings import Settings
from storage import redis as redis_store
from storage.alerts import write_alert
from storage.keys import Keys
from storage.ledger import Ledger
from storage.redis import AnyRedis
from trading.book import PositionBook
from trading.exchange import Exchange
from trading.placing import Placer
from trading.takeprofit import TakeProfitEngine

log = logs.get("mmops.app")


@dataclass
class App:
    settings: Settings
    redis: AnyRedis  # a RedisCluster with REDIS_CLUSTER=true
    keys: Keys
    clock: Clock
    exchange: Exchange
    book: PositionBook
    engine: TakeProfitEngine
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(
        cls, settings: Settings, *, clock: Clock | None = None, exchange: Exchange | None = None
    ) -> App:
        """Connect to Redis (ServerUnreachable names it) and build the shared parts."""
        from trading.factory import make_exchange, make_rate_budget

        conn = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
        keys = Keys.of(settings)
        clock = clock or SystemClock()
        budget = make_rate_budget(settings, conn, keys)
        if exchange is None:
            exchange = make_exchange(settings, conn, keys, clock, budget=budget)
        book = PositionBook(Ledger(conn, keys, cluster=settings.redis_cluster))
        placer = Placer(exchange, budget, max_wait_ms=settings.exchange_rate_max_wait_ms)
        engine = TakeProfitEngine(
            book=book, exchange=exchange, keys=keys, settings=settings, clock=clock, placer=placer
        )
        return cls(
            settings=settings,
            redis=conn,
            keys=keys,
            clock=clock,
            exchange=exchange,
            book=book,
            engine=engine,
        )

    async def alert(self, kind: str, message: str, **figures: object) -> None:
        """Append to mm:alerts (the webhook forwarder picks it up from there)."""
        await write_alert(
            self.redis,
            self.keys,
            self.clock.now_ms(),
            kind,
            message,
            maxlen=self.settings.alerts_maxlen,
            **figures,
        )
        log.warning("alert %s: %s", kind, message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.exchange.close()
        await self.redis.aclose()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop reading, finish and ack what is in flight, exit 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop.is_set():
            log.info("%s received: finishing in-flight work", sig.name)
        self.stop.set()


async def run_until_stopped(app: App, tasks: list[Callable[[], Awaitable[object]]]) -> None:
    """Run worker loops until app.stop; a loop that dies stops the others (supervisor
    restarts us)."""
    running = [asyncio.ensure_future(task()) for task in tasks]
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                app.stop.set()
                raise task.exception()  # type: ignore[misc]
    finally:
        app.stop.set()
        await asyncio.gather(*running, return_exceptions=True)
