"""The simulated trader: reproducible events, partial fills, TP fills when prices cross."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.clock import SystemClock
from base.settings import Settings
from events import Fill, SessionEnded, decode
from mmops.app import App
from mmops.simulator import SimConfig, SimulationError, Simulator
from storage.keys import Keys
from tests.conftest import MMOPS, ROOT, MakeWorker
from trading.exchange import OrderStatus
from trading.factory import make_exchange
from trading.paper import PaperExchange


def simulator(
    redis: aioredis.Redis, keys: Keys, settings: Settings, config: SimConfig
) -> Simulator:
    exchange = make_exchange(settings, redis, keys, SystemClock())
    assert isinstance(exchange, PaperExchange)
    return Simulator(redis=redis, keys=keys, exchange=exchange, config=config)


async def entries(redis: aioredis.Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


@pytest.fixture
async def coverage(app: App, worker: MakeWorker) -> AsyncIterator[App]:
    """A coverage worker running in this event loop while the test simulates."""
    runtime = await worker("coverage", consumer="sim-test")
    task = asyncio.ensure_future(runtime.run())
    yield app
    app.stop.set()
    await task


async def test_same_seed_same_trader_events(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    config = SimConfig(sessions=2, pairs=4, rate=400, duration=0.3, seed=7, tag="fixed")
    other = Keys(keys.prefix + "b:", keys.events)
    await simulator(redis, keys, settings, config).run()
    await simulator(redis, other, settings, config).run()
    first, second = await entries(redis, keys.stream), await entries(redis, other.stream)
    assert len(first) == len(second) > 100
    strip = [{k: v for k, v in e.items() if k != "ts"} for e in first]
    assert strip == [{k: v for k, v in e.items() if k != "ts"} for e in second]
    different = SimConfig(sessions=2, pairs=4, rate=400, duration=0.3, seed=8, tag="fixed")
    third = Keys(keys.prefix + "c:", keys.events)
    await simulator(redis, third, settings, different).run()
    assert [
        {k: v for k, v in e.items() if k != "ts"} for e in await entries(redis, third.stream)
    ] != strip


async def test_sessions_partial_fills_and_counts(
    redis: aioredis.Redis, keys: Keys, settings: Settings
) -> None:
    config = SimConfig(sessions=3, pairs=10, rate=500, duration=0.4, seed=3)
    stats = await simulator(redis, keys, settings, config).run()
    events = [decode(fields) for _, fields in await redis.xrange(keys.stream)]
    assert stats.events == len(events)
    kinds = Counter(type(e).__name__ for e in events)
    assert kinds["SessionStarted"] == kinds["SessionEnded"] == 3
    assert kinds["Fill"] == stats.buys == config.total_buys
    fills = [e for e in events if isinstance(e, Fill)]
    assert {f.symbol for f in fills} <= {
        "BTC/USD",
        "ETH/USD",
        "SOL/USD",
        "XRP/USD",
        "ADA/USD",
        "DOGE/USD",
        "DOT/USD",
        "LINK/USD",
        "LTC/USD",
        "AVAX/USD",
    }
    per_order = Counter((f.session_id, f.order_id) for f in fills)
    assert max(per_order.values()) > 1, "some orders are filled in several parts"
    assert len({f.fill_id for f in fills}) == len(fills)
    for end in (e for e in events if isinstance(e, SessionEnded)):
        assert end.fills == sum(1 for f in fills if f.session_id == end.session_id)
        started = next(
            i for i, e in enumerate(events) if getattr(e, "session_id", None) == end.session_id
        )
        last = max(
            i
            for i, e in enumerate(events)
            if isinstance(e, Fill) and e.session_id == end.session_id
        )
        assert started < last < events.index(end)
    # every fill is above the market minimum: nothing will be dust
    exchange = make_exchange(settings, redis, keys, SystemClock())
    for fill in fills:
        market = await exchange.market(fill.symbol)
        assert fill.quantity >= market.min_amount and fill.quantity * fill.price >= market.min_cost
        assert fill.fee == (fill.price * fill.quantity * Decimal("0.0025")).quantize(
            Decimal("1e-8"), "ROUND_UP"
        )


async def test_prices_crossing_tps_fill_them(
    redis: aioredis.Redis, keys: Keys, settings: Settings, coverage: App
) -> None:
    config = SimConfig(sessions=1, pairs=3, rate=40, duration=3, seed=11, volatility=2.5)
    stats = await simulator(redis, keys, settings, config).run()
    assert stats.sells > 0
    exchange = coverage.exchange
    assert isinstance(exchange, PaperExchange)
    orders = {o.id: o for o in await exchange.orders()}
    events = [decode(fields) for _, fields in await redis.xrange(keys.stream)]
    sells = [e for e in events if isinstance(e, Fill) and e.side == "sell"]
    assert len(sells) == stats.sells
    sid = stats.session_ids[0]
    tp_ids = {m.decode() for m in await redis.smembers(keys.tp_orders(sid))}
    for sell in sells:
        assert sell.order_id in tp_ids
        tp = orders[sell.order_id]
        assert (
            tp.status == OrderStatus.CLOSED
            and tp.filled == sell.quantity
            and tp.price == sell.price
        )
    end = next(e for e in events if isinstance(e, SessionEnded))
    assert end.fills == stats.buys + stats.sells
    assert events.index(end) > max(events.index(s) for s in sells)


async def test_tps_outlive_their_session_and_fill_after_its_end(
    redis: aioredis.Redis, keys: Keys, settings: Settings, coverage: App
) -> None:
    config = SimConfig(
        sessions=1, pairs=3, rate=40, duration=2, seed=11, volatility=2.5, after_end=3
    )
    stats = await simulator(redis, keys, settings, config).run()
    events = [decode(fields) for _, fields in await redis.xrange(keys.stream)]
    end = next(n for n, e in enumerate(events) if isinstance(e, SessionEnded))
    before = [e for e in events[:end] if isinstance(e, Fill)]
    after = [e for e in events[end + 1 :] if isinstance(e, Fill)]
    assert len(after) == stats.sells_after_end > 0
    tp_ids = {m.decode() for m in await redis.smembers(keys.tp_orders(stats.session_ids[0]))}
    assert all(f.side == "sell" and f.order_id in tp_ids for f in after)
    ended = events[end]
    assert isinstance(ended, SessionEnded) and ended.fills == len(before)  # before the end only
    assert len({f.fill_id for f in before + after}) == len(before) + len(after)


def test_bad_parameters_one_line() -> None:
    with pytest.raises(SimulationError, match="--rate"):
        SimConfig(rate=0).validate()
    with pytest.raises(SimulationError, match="--sessions"):
        SimConfig(sessions=0).validate()
    with pytest.raises(SimulationError, match="--after-end"):
        SimConfig(after_end=-1).validate()


@pytest.mark.redis  # the simulator process writes to the test Redis
def test_command(env: dict[str, str], settings: Settings) -> None:
    done = subprocess.run(
        [
            *MMOPS,
            "simulate",
            "--sessions",
            "2",
            "--pairs",
            "3",
            "--rate",
            "100",
            "--duration",
            "0.5",
            "--seed",
            "5",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "seed 5" in done.stdout and "BTC/USD" in done.stdout and "buy fills 50" in done.stdout
    bad = subprocess.run(
        [*MMOPS, "simulate", "--rate", "-1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "mmops simulate: --rate: expected a number > 0, got -1.0"
    )


async def test_rolling_sessions_end_with_live_tps_that_fill_after_the_end(
    redis: aioredis.Redis, keys: Keys, settings: Settings, coverage: App
) -> None:
    config = SimConfig(
        sessions=2,
        pairs=3,
        rate=40,
        duration=3.0,
        seed=5,
        volatility=0.0,  # prices never reach a TP: only the market's return after the end does
        rolling=True,
        session_seconds=1.0,
        close_within=0.5,
    )
    stats = await simulator(redis, keys, settings, config).run()
    assert stats.sessions_started == stats.sessions_ended == 6  # 2 live at once, one per 0.5 s
    events = [decode(fields) for _, fields in await redis.xrange(keys.stream)]
    ends = {e.session_id: i for i, e in enumerate(events) if isinstance(e, SessionEnded)}
    after_end = [
        e
        for i, e in enumerate(events)
        if isinstance(e, Fill) and e.side == "sell" and i > ends[e.session_id]
    ]
    closed = {e.session_id for e in after_end}
    assert len(closed) >= 3  # the sessions that ended early enough saw their TPs fill
    assert stats.sells == len(after_end)  # no TP filled before its session ended
