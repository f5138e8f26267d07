"""Real `mmops coverage` processes and real signals: SIGKILL mid-batch (then another consumer
reclaims), crash points, SIGTERM mid-batch, and a Redis restarted under a running worker."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from base.faults import POINTS
from events import Fill, encode
from storage.keys import Keys
from storage.servers import RedisProcess, free_port
from tests.conftest import wait_for
from tests.processes import Launch, launcher
from trading.positions import StepStatus, decode_position
from workers.coverage import GROUP

SYMBOLS = {  # symbol -> (price, quantity): well above each market's minimum order
    "BTC/USD": ("64000.5", "0.01"),
    "ETH/USD": ("3000.25", "0.1"),
    "SOL/USD": ("150.5", "1"),
    "XRP/USD": ("0.6", "100"),
}
SESSIONS = ("s-1", "s-2", "s-3")
TS = 1_700_000_000_000


def buy(n: int) -> dict[str, str]:
    symbol = list(SYMBOLS)[n % len(SYMBOLS)]
    price, quantity = SYMBOLS[symbol]
    return encode(
        Fill(
            session_id=SESSIONS[n % len(SESSIONS)],
            fill_id=f"f-{n}",
            order_id=f"o-{n}",
            symbol=symbol,
            side="buy",
            price=Decimal(price),
            quantity=Decimal(quantity),
            fee=Decimal("0.1"),
            ts=TS + n,
        )
    )


async def seed(redis: aioredis.Redis, keys: Keys, numbers: range) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.xadd(keys.stream, buy(n))  # type: ignore[arg-type]
        ids = await pipe.execute()
    return [i.decode() for i in ids]


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Launch]:
    with launcher("coverage", env, tmp_path, LOG_LEVEL="INFO") as launch:
        yield launch


async def count_tps(redis: aioredis.Redis, keys: Keys) -> int:
    return int(await redis.xlen(keys.takeprofits))


async def group_pending(
    redis: aioredis.Redis, keys: Keys, consumer: str | None = None
) -> list[str]:
    rows = await redis.xpending_range(
        keys.stream,
        GROUP,
        min="-",
        max="+",
        count=100_000,
        consumername=consumer,
    )
    return [row["message_id"].decode() for row in rows]


async def last_delivered(redis: aioredis.Redis, keys: Keys) -> str:
    [info] = [g for g in await redis.xinfo_groups(keys.stream) if g["name"] == GROUP.encode()]
    return str(info["last-delivered-id"].decode())


async def recorded_fills(redis: aioredis.Redis, keys: Keys) -> set[str]:
    out: set[str] = set()
    for sid in SESSIONS:
        out |= {k.decode() for k in await redis.hkeys(keys.fills(sid))}
    return out


async def idle_for(redis: aioredis.Redis, keys: Keys, ms: int) -> None:
    async def idle() -> bool:
        rows = await redis.xpending_range(keys.stream, GROUP, min="-", max="+", count=100_000)
        return all(row["time_since_delivered"] >= ms for row in rows)

    await wait_for(idle)


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def acked_entries(redis: aioredis.Redis, keys: Keys, ids: list[str]) -> list[int]:
    """Fill numbers of the entries the group has acked (delivered and not pending)."""
    last = _stream_order(await last_delivered(redis, keys))
    still = set(await group_pending(redis, keys))
    return [n for n, i in enumerate(ids) if _stream_order(i) <= last and i not in still]


async def assert_covered_exactly_once(
    redis: aioredis.Redis, keys: Keys, numbers: list[int]
) -> None:
    """Every fill recorded once, every position covered by exactly one paper order, no extra."""
    expected_fills = {f"f-{n}" for n in numbers}
    recorded = await recorded_fills(redis, keys)
    assert recorded == expected_fills

    positions = []
    for sid in SESSIONS:
        positions += [
            decode_position(raw) for raw in (await redis.hgetall(keys.positions(sid))).values()
        ]
    assert {p.id for p in positions} == {f"o-{n}" for n in numbers}
    for pos in positions:
        assert {b.fill_id for b in pos.buys} <= recorded  # nothing without its fill recorded
        assert len(pos.buys) == 1
        assert pos.covered == pos.filled, pos.id
        assert [s.status for s in pos.steps] == [StepStatus.LIVE], pos.id

    orders = [orjson.loads(raw) for raw in (await redis.hgetall(keys.paper("orders"))).values()]
    client_ids = [o["cid"] for o in orders]
    assert len(client_ids) == len(set(client_ids)), "a client id was used for two orders"
    assert sorted(client_ids) == sorted(p.steps[0].client_id for p in positions)

    created = [f for _, f in await redis.xrange(keys.takeprofits) if f[b"type"] == b"created"]
    assert sorted(f[b"position_id"].decode() for f in created) == sorted(p.id for p in positions)
    assert await redis.xlen(keys.dead) == 0


async def mid_batch(redis: aioredis.Redis, keys: Keys, batch: int, ids: list[str]) -> bool:
    """True once the first batch's TPs are recorded and the second batch is delivered."""
    if await count_tps(redis, keys) != batch:
        return False
    return _stream_order(await last_delivered(redis, keys)) > _stream_order(ids[batch - 1])


# --- SIGKILL -------------------------------------------------------------------------------
async def test_a_worker_killed_mid_batch_is_reclaimed_by_another(
    redis: aioredis.Redis,
    keys: Keys,
    start: Launch,
) -> None:
    batch, total = 200, 1200
    ids = await seed(redis, keys, range(total))
    # the second batch's TPs are placed on the exchange, not yet recorded, when it dies
    a = start("a", CONSUMER_BATCH_SIZE=str(batch), MMOPS_CRASH_POINT="order_placed@2")
    assert await a.exited() == -signal.SIGKILL

    # the dead consumer holds its in-flight batch, unacked
    held = await group_pending(redis, keys, "a")
    assert len(held) == batch
    assert await count_tps(redis, keys) < total
    # nothing was acked before its effect: every acked entry's fill is recorded and covered
    acked = await acked_entries(redis, keys, ids)
    assert acked, "the worker died in its first batch"
    recorded = await recorded_fills(redis, keys)
    assert {f"f-{n}" for n in acked} <= recorded
    tp_positions = {f[b"position_id"].decode() for _, f in await redis.xrange(keys.takeprofits)}
    assert {f"o-{n}" for n in acked} <= tp_positions

    b = start("b", CONSUMER_BATCH_SIZE="50", RECLAIM_IDLE_MS="300", TP_PENDING_SETTLE_MS="200")

    async def everything_handled() -> bool:
        return (
            await count_tps(redis, keys) == total
            and not await group_pending(redis, keys)
            and await last_delivered(redis, keys) == ids[-1]
        )

    await wait_for(everything_handled, timeout=30)
    b.signal(signal.SIGTERM)
    assert await b.exited() == 0
    assert "reclaimed" in b.output()
    assert await group_pending(redis, keys, "a") == []
    await assert_covered_exactly_once(redis, keys, list(range(total)))


@pytest.mark.parametrize("point", POINTS)
async def test_a_crash_at_each_point_is_recovered_without_a_duplicate_order(
    redis: aioredis.Redis,
    keys: Keys,
    start: Launch,
    point: str,
) -> None:
    total = 40
    await seed(redis, keys, range(total))
    a = start("a", CONSUMER_BATCH_SIZE="10", MMOPS_CRASH_POINT=point)
    assert await a.exited() == -signal.SIGKILL
    assert len(await group_pending(redis, keys, "a")) == 10

    await idle_for(redis, keys, 200)  # --drain reclaims other consumers' entries once idle
    b = start("b", "--drain", RECLAIM_IDLE_MS="200", TP_PENDING_SETTLE_MS="200")
    assert await b.exited(within=30) == 0, b.output()
    assert await group_pending(redis, keys) == []
    await assert_covered_exactly_once(redis, keys, list(range(total)))


# --- SIGTERM -------------------------------------------------------------------------------
async def test_sigterm_mid_batch_finishes_and_acks_the_in_flight_entries(
    redis: aioredis.Redis,
    keys: Keys,
    start: Launch,
) -> None:
    batch, total = 200, 1200
    ids = await seed(redis, keys, range(total))
    # the exchange stalls for 3 s in the middle of the second batch: SIGTERM comes then
    a = start("a", CONSUMER_BATCH_SIZE=str(batch), MMOPS_STALL_POINT="order_placed@2:3000")
    await wait_for(lambda: mid_batch(redis, keys, batch, ids), timeout=30)
    a.signal(signal.SIGTERM)
    assert await a.exited() == 0, a.output()
    assert "SIGTERM received" in a.output()

    assert await group_pending(redis, keys, "a") == []
    last = _stream_order(await last_delivered(redis, keys))
    delivered = [n for n, i in enumerate(ids) if _stream_order(i) <= last]
    assert batch < len(delivered) < total  # it stopped reading part-way through the stream
    assert len(delivered) % batch == 0  # ... after finishing the batch it was in
    await assert_covered_exactly_once(redis, keys, delivered)


# --- Redis restarted ------------------------------------------------------------------------
@pytest.mark.redis  # a redis-server of its own, restarted under the worker
async def test_the_worker_reconnects_when_redis_restarts(
    env: dict[str, str],
    keys: Keys,
    start: Launch,
    tmp_path: Path,
) -> None:
    server = RedisProcess(free_port(), tmp_path / "redis", appendonly=True).start()
    client = aioredis.Redis.from_url(server.url)
    try:
        await seed(client, keys, range(5))
        worker = start("w", REDIS_URL=server.url, TP_PENDING_SETTLE_MS="200")
        await wait_for(lambda: _equals(count_tps(client, keys), 5), timeout=20)
        await client.aclose()

        server.kill()
        await wait_for(lambda: _true("unreachable" in worker.output()), timeout=20)
        server.start()  # same port, same directory: the AOF brings the data back
        client = aioredis.Redis.from_url(server.url)
        assert await count_tps(client, keys) == 5
        await seed(client, keys, range(5, 10))
        await wait_for(lambda: _equals(count_tps(client, keys), 10), timeout=30)
        await wait_for(lambda: _empty(group_pending(client, keys)), timeout=30)
        assert worker.proc.poll() is None
        worker.signal(signal.SIGTERM)
        assert await worker.exited() == 0
        await assert_covered_exactly_once(client, keys, list(range(10)))
    finally:
        await client.aclose()
        server.stop()

    output = worker.output()
    assert "Traceback" not in output
    unreachable = [line for line in output.splitlines() if "unreachable" in line]
    assert unreachable
    assert all(server.url in line for line in unreachable), unreachable
    assert all(orjson.loads(line)["level"] == "WARN" for line in unreachable)
    assert len(unreachable) <= 15  # a line per retry, not a flood


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _empty(value: Awaitable[list[str]]) -> bool:
    return not await value


async def _true(value: bool) -> bool:
    return value
