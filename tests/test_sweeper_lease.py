"""The fenced sweeper lease (issue 10 #5): a lease whose renewal fails stops the pass.

Two sweepers run their real loops on separate connections to a redis-server this test
owns; sweeper A's ACL user loses the right to PEXPIRE mid-pass (a NOPERM reply, not a
transient error). Every exchange action either sweeper takes is recorded with its start
and end: at no time do the two act together, A stops before B starts, and B finishes
the work without a second order for any step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from mmops.app import App
from storage.locks import Lease
from storage.servers import RedisProcess, free_port
from tests.helpers import orders_per_client_id
from trading.paper import PaperExchange
from trading.positions import Buy, encode_position, new_position
from workers.lease import LeaseKeeper
from workers.sweeper import Sweeper

pytestmark = [pytest.mark.redis, pytest.mark.process]

D = Decimal
PAIRS = [
    ("BTC/USD", "64000.5", "0.001"),
    ("ETH/USD", "3000.25", "0.01"),
    ("SOL/USD", "150.5", "0.1"),
]
ACTION_S = 0.1  # every exchange action of the test's sweepers takes this long


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test alone: its ACL users are changed during the test."""
    server = RedisProcess(free_port(), tmp_path / "redis").start()
    yield server
    server.stop()


class Recorder:
    """The paper exchange; its placing and cancelling calls take ACTION_S and are recorded
    as (sweeper, start, end) on the event loop's clock."""

    def __init__(self, inner: PaperExchange, who: str, actions: list[tuple[str, float, float]]):
        self.inner = inner
        self.name = inner.name
        self.who = who
        self.actions = actions

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("place_limit_sell", "place_limit_sells", "cancel_order"):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.sleep(ACTION_S)
            try:
                return await attr(*args, **kwargs)
            finally:
                self.actions.append((self.who, started, loop.time()))

        return call


@pytest.fixture
async def admin(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    await client.execute_command("ACL", "SETUSER", "sweeper-a", "on", ">pw-a", "~*", "+@all")
    yield client
    await client.aclose()


async def open_sweeper(
    settings: Settings,
    url: str,
    name: str,
    actions: list[tuple[str, float, float]],
    opened: list[App],
) -> tuple[App, Sweeper]:
    mine = dataclasses.replace(settings, redis_url=url, consumer_name=name)
    plain = await App.open(mine)
    assert isinstance(plain.exchange, PaperExchange)
    app = await App.open(mine, exchange=Recorder(plain.exchange, name, actions))  # type: ignore[arg-type]
    opened.append(plain)
    return app, await Sweeper.create(app)


async def seed(app: App, sessions: int, per_pair: int) -> int:
    """Recorded buys whose TPs were never placed."""
    paper = app.exchange
    now = app.clock.now_ms()
    count = 0
    for symbol, price, _ in PAIRS:
        await paper.set_price(symbol, D(price))  # type: ignore[attr-defined]
    for s in range(sessions):
        sid = f"s-{s}"
        for symbol, price, qty in PAIRS:
            for p in range(per_pair):
                pid = f"{symbol[:3]}-{p}"
                pos = new_position(session_id=sid, position_id=pid, symbol=symbol, opened_at=now)
                pos = pos.with_buy(Buy(f"f-{pid}", D(price), D(qty), D("0.01"), now))
                await app.redis.hset(app.keys.positions(sid), pid, encode_position(pos))
                await paper.observe_fill(  # type: ignore[attr-defined]
                    fill_id=f"{sid}/f-{pid}",
                    order_id=pid,
                    symbol=symbol,
                    side="buy",
                    price=D(price),
                    quantity=D(qty),
                )
                count += 1
        await app.redis.zadd(app.keys.sessions, {sid: now})
    return count


async def holder(redis: aioredis.Redis, key: str) -> str:
    token = await redis.get(key)
    return token.decode().split("/", 1)[0] if token else ""


async def test_a_sweeper_whose_lease_renewal_is_refused_stops_before_another_takes_over(
    settings: Settings,
    own_redis: RedisProcess,
    admin: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mmops.sweeper")
    settings = dataclasses.replace(
        settings, redis_url=own_redis.url, settlement_interval_minutes=D("0.01")
    )  # a 1.8 s lease, renewed every 0.6 s
    actions: list[tuple[str, float, float]] = []
    opened: list[App] = []
    app_a, sweeper_a = await open_sweeper(
        settings, f"redis://sweeper-a:pw-a@127.0.0.1:{own_redis.port}/0", "sw-a", actions, opened
    )
    app_b, sweeper_b = await open_sweeper(settings, own_redis.url, "sw-b", actions, opened)
    checker = await App.open(settings)  # the plain paper exchange, to count orders
    total = await seed(checker, sessions=6, per_pair=20)  # 360 covers: A cannot finish them
    lease_key = app_a.keys.sweeper_lease
    task_a = asyncio.ensure_future(sweeper_a.run())
    task_b: asyncio.Future[None] | None = None
    try:
        for _ in range(1500):  # A holds the lease and acts
            if any(who == "sw-a" for who, _, _ in actions):
                break
            await asyncio.sleep(0.02)
        assert await holder(admin, lease_key) == "sw-a"
        task_b = asyncio.ensure_future(sweeper_b.run())  # B stands by
        await asyncio.sleep(0.2)
        # A may no longer PEXPIRE: its next renewal is answered NOPERM, not a transient error
        await admin.execute_command("ACL", "SETUSER", "sweeper-a", "-pexpire")
        # A may take the lease again once its key expired (taking is a SET), but then loses
        # it at its first renewal; B, whose renewals succeed, takes it over in the end
        for _ in range(1200):
            if any(who == "sw-b" for who, _, _ in actions):
                break
            await asyncio.sleep(0.05)
        for _ in range(1200):  # B finishes the work
            if len(await orders_per_client_id(checker)) == total:
                break
            await asyncio.sleep(0.05)
    finally:
        app_a.stop.set()
        app_b.stop.set()
        await asyncio.wait_for(task_a, 30)
        if task_b is not None:
            await asyncio.wait_for(task_b, 30)
        for sweeper, app in ((sweeper_a, app_a), (sweeper_b, app_b)):
            await sweeper.close()
            await app.close()
        for app in opened:
            await app.redis.aclose()

    by_a = [(s, e) for who, s, e in actions if who == "sw-a"]
    by_b = [(s, e) for who, s, e in actions if who == "sw-b"]
    assert by_a and by_b
    # at no time do both act
    for a_start, a_end in by_a:
        for b_start, b_end in by_b:
            assert a_end <= b_start or b_end <= a_start
    assert 0 < len(by_a) < total  # A stopped mid-pass
    assert await holder(admin, lease_key) == ""  # both released it
    # B covered the rest, and no step has a second order
    counts = await orders_per_client_id(checker)
    await checker.close()
    assert len(counts) == total and max(counts.values()) == 1
    assert any(
        "sweeper lease not renewed, treated as lost: ResponseError" in r.getMessage()
        and "can't run this command" in r.getMessage()  # NOPERM, in Redis 6.2's words
        for r in caplog.records
    )
    assert any("stopped early: the sweeper lease is lost" in r.getMessage() for r in caplog.records)


async def test_the_lease_stays_valid_while_its_renewal_is_in_flight(
    own_redis: RedisProcess, admin: aioredis.Redis
) -> None:
    """A pass checking its guard while a renewal waits for Redis must not stop: the lease is
    held until valid_until whatever the renewal's answer will be."""
    client = aioredis.Redis.from_url(own_redis.url)
    keeper = LeaseKeeper(Lease(client, "mm:sweeper:lease", "sw", 30_000))
    try:
        await keeper.refresh()
        assert keeper.valid()
        await admin.execute_command("CLIENT", "PAUSE", "500", "ALL")  # the renewal waits
        renewal = asyncio.ensure_future(keeper.refresh())
        await asyncio.sleep(0.2)
        assert not renewal.done() and keeper.valid()
        await renewal
        assert keeper.valid()
    finally:
        await client.aclose()
