"""MAX_PAIRS holds for every session, whatever names its pairs (issue 11): a session_started,
a fill or an order that would give a session more than MAX_PAIRS distinct pairs is
dead-lettered with the reason and admits nothing; with a real Redis and the coverage worker."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from base.settings import Settings
from mmops.app import App
from tests.conftest import MMOPS, MakeApp
from tests.helpers import drain_coverage, fill, now_ms, takeprofit_entries


@pytest.fixture
async def app(make_app: MakeApp) -> App:
    """An App whose sessions may trade two pairs."""
    return await make_app(max_pairs=2)


async def dead_letters(app: App) -> list[dict[str, str]]:
    rows = await app.redis.xrange(app.keys.dead)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]


async def pairs_of(app: App, sid: str) -> set[str]:
    return {m.decode() for m in await app.redis.smembers(app.keys.pairs(sid))}


def started(sid: str, pairs: str) -> dict[str, str]:
    return {"type": "session_started", "session_id": sid, "pairs": pairs, "ts": str(now_ms())}


def order(sid: str, order_id: str, symbol: str) -> dict[str, str]:
    return {
        "type": "order", "session_id": sid, "order_id": order_id, "symbol": symbol,
        "side": "buy", "order_type": "limit", "price": "1.5", "quantity": "10",
        "status": "open", "ts": str(now_ms()),
    }  # fmt: skip


async def test_a_fill_or_an_order_beyond_the_started_pairs_is_dead_lettered(app: App) -> None:
    await app.redis.xadd(app.keys.stream, started("s-1", "BTC/USD,ETH/USD"))
    await app.redis.xadd(app.keys.stream, fill("s-1", "f-1", "o-1", symbol="BTC/USD"))
    refused_fill = await app.redis.xadd(
        app.keys.stream, fill("s-1", "f-2", "o-2", symbol="XRP/USD", price="0.5", quantity="100")
    )
    refused_order = await app.redis.xadd(app.keys.stream, order("s-1", "o-3", "ADA/USD"))
    await app.redis.xadd(app.keys.stream, fill("s-1", "f-3", "o-4", symbol="ETH/USD", price="3000"))

    stats = await drain_coverage(app)

    assert stats.dead == 2 and stats.failed == 0
    dead = {d["id"]: d for d in await dead_letters(app)}
    assert set(dead) == {refused_fill.decode(), refused_order.decode()}
    assert dead[refused_fill.decode()]["error"] == (
        "symbol: XRP/USD would give session s-1 3 distinct pairs, more than MAX_PAIRS=2"
    )
    assert dead[refused_order.decode()]["error"].startswith("symbol: ADA/USD would give ")
    assert await pairs_of(app, "s-1") == {"BTC/USD", "ETH/USD"}
    # the refused fill changed nothing: not recorded, no position, no TP
    assert not await app.redis.hexists(app.keys.fills("s-1"), "f-2")
    assert not await app.redis.hexists(app.keys.positions("s-1"), "o-2")
    covered = {tp["position_id"] for tp in await takeprofit_entries(app, "created")}
    assert covered == {"o-1", "o-4"}
    # nothing pending: dead letters are acked
    assert (await app.redis.xpending(app.keys.stream, "coverage"))["pending"] == 0


async def test_pairs_learned_from_fills_are_bounded_too(app: App) -> None:
    """No session_started: ten fills of ten pairs, handled concurrently (one lane each)."""
    symbols = [f"C{n}/USD" for n in range(10)]
    for n, symbol in enumerate(symbols):
        await app.redis.xadd(
            app.keys.stream, fill("s-2", f"f-{n}", f"o-{n}", symbol=symbol, price="2")
        )
    stats = await drain_coverage(app)
    admitted = await pairs_of(app, "s-2")
    assert len(admitted) == 2 and admitted <= set(symbols)
    assert stats.dead == 8
    reasons = [d["error"] for d in await dead_letters(app)]
    assert all(
        r.endswith("would give session s-2 3 distinct pairs, more than MAX_PAIRS=2")
        for r in reasons
    )
    recorded = {k.decode() for k in await app.redis.hkeys(app.keys.fills("s-2"))}
    assert len(recorded) == 2


async def test_a_session_started_with_too_many_pairs_admits_none(app: App) -> None:
    entry = await app.redis.xadd(app.keys.stream, started("s-3", "A/USD,B/USD,C/USD"))
    await app.redis.xadd(app.keys.stream, fill("s-3", "f-1", "o-1", symbol="C/USD", price="2"))
    await app.redis.xadd(app.keys.stream, fill("s-3", "f-2", "o-2", symbol="D/USD", price="2"))
    await app.redis.xadd(app.keys.stream, fill("s-3", "f-3", "o-3", symbol="E/USD", price="2"))
    stats = await drain_coverage(app)
    [first, *_] = await dead_letters(app)
    assert first["id"] == entry.decode()
    assert first["error"] == (
        "pairs: A/USD, B/USD, C/USD would give session s-3 3 distinct pairs, more than MAX_PAIRS=2"
    )
    assert await pairs_of(app, "s-3") == {"C/USD", "D/USD"}
    assert stats.dead == 2  # the session_started and the third pair's fill


async def test_replays_of_accepted_events_are_accepted_again(app: App, make_app: MakeApp) -> None:
    entries = [
        fill("s-4", "f-1", "o-1", symbol="BTC/USD"),
        fill("s-4", "f-2", "o-2", symbol="ETH/USD", price="3000"),
    ]
    for fields in entries:
        await app.redis.xadd(app.keys.stream, fields)
    assert (await drain_coverage(app)).dead == 0
    # another process (no memory of admissions) meets the same events again
    other = await make_app(max_pairs=2)
    for fields in entries:
        await other.redis.xadd(other.keys.stream, fields)
    stats = await drain_coverage(other, "another-consumer")
    assert stats.dead == 0 and stats.processed == 2
    assert await pairs_of(app, "s-4") == {"BTC/USD", "ETH/USD"}


def test_max_pairs_is_a_setting() -> None:
    assert Settings().max_pairs == 500
    assert Settings.from_env({"MAX_PAIRS": "3"}).max_pairs == 3


async def test_the_real_command_dead_letters_a_pair_beyond_max_pairs(
    env: dict[str, str], app: App
) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-5", "f-1", "o-1", symbol="BTC/USD"))
    await app.redis.xadd(app.keys.stream, fill("s-5", "f-2", "o-2", symbol="ETH/USD", price="3000"))
    done = await asyncio.to_thread(
        subprocess.run,
        [*MMOPS, "coverage", "--drain"],
        env={**env, "MAX_PAIRS": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    [dead] = await dead_letters(app)
    assert dead["error"] == (
        "symbol: ETH/USD would give session s-5 2 distinct pairs, more than MAX_PAIRS=1"
    )
    assert dead["group"] == "coverage"
