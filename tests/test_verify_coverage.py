"""`mmops verify-coverage` and `mmops sweep --once`: tables, JSON and exit codes."""

from __future__ import annotations

import asyncio
import subprocess
from decimal import Decimal

import orjson
import pytest

from mmops.app import App
from mmops.commands.sweep import coverage
from tests.conftest import MMOPS
from tests.helpers import drain_coverage, fill, now_ms
from trading.positions import Buy, encode_position, new_position

D = Decimal


async def seed_uncovered(app: App, sid: str, pid: str, *, age_ms: int, qty: str = "0.01") -> None:
    """A recorded buy of `age_ms` ago whose TP was never placed."""
    ts = now_ms() - age_ms
    position = new_position(session_id=sid, position_id=pid, symbol="BTC/USD", opened_at=ts)
    position = position.with_buy(Buy(f"f-{pid}", D("64000.5"), D(qty), D("0.1"), ts))
    await app.redis.hset(app.keys.positions(sid), pid, encode_position(position))
    await app.redis.zadd(app.keys.sessions, {sid: ts})
    await app.exchange.observe_fill(
        fill_id=f"f-{pid}",
        order_id=pid,
        symbol="BTC/USD",
        side="buy",
        price=D("64000.5"),
        quantity=D(qty),
    )


def mmops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, *args],
        env={**env, "SETTLEMENT_INTERVAL_MINUTES": "0.01"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_coverage_per_session_and_pair(app: App) -> None:
    await app.redis.xadd(app.keys.stream, fill("s-1", "f-1", "o-1", quantity="0.02"))
    await app.redis.xadd(
        app.keys.stream,
        fill("s-1", "f-2", "o-2", symbol="ETH/USD", price="3000", quantity="0.0001", fee="0"),
    )
    await drain_coverage(app)  # BTC covered; ETH below the minimum order: dust
    await seed_uncovered(app, "s-1", "o-3", age_ms=5_000)
    rows = {(r.session_id, r.symbol): r for r in await coverage(app, ["s-1"])}
    btc, eth = rows["s-1", "BTC/USD"], rows["s-1", "ETH/USD"]
    assert (btc.positions, btc.filled, btc.covered, btc.dust, btc.uncovered) == (
        2,
        D("0.03"),
        D("0.02"),
        0,
        D("0.01"),
    )
    assert (
        btc.uncovered_positions == 1
        and btc.oldest_uncovered_ms is not None
        and btc.oldest_uncovered_ms >= 5_000
    )
    assert (eth.filled, eth.covered, eth.dust, eth.uncovered, eth.oldest_uncovered_ms) == (
        D("0.0001"),
        0,
        D("0.0001"),
        0,
        None,
    )


@pytest.mark.postgres  # the sweeper reads recent sessions from PostgreSQL
async def test_exit_codes_before_and_after_a_sweep(app: App, env: dict[str, str]) -> None:
    await seed_uncovered(
        app, "s-late", "o-1", age_ms=60_000
    )  # uncovered for a minute; interval 0.6 s
    late, as_json = await asyncio.gather(
        asyncio.to_thread(mmops, env, "verify-coverage"),
        asyncio.to_thread(mmops, env, "verify-coverage", "--json"),
    )
    assert late.returncode == 1, late.stderr
    [row] = [line for line in late.stdout.splitlines() if line.startswith("s-late")]
    assert row.split()[:7] == ["s-late", "BTC/USD", "1", "0.01", "0", "0", "0.01"]
    assert row.endswith(" s") and "1 pair(s) uncovered longer than 0.6 s" in late.stdout
    report = orjson.loads(as_json.stdout)
    assert (
        as_json.returncode == 1
        and report["ok"] is False
        and report["pairs"][0]["uncovered"] == "0.01"
    )

    swept = await asyncio.to_thread(mmops, env, "sweep", "--once")
    assert swept.returncode == 0, swept.stderr
    [row] = [line for line in swept.stdout.splitlines() if line.startswith("s-late")]
    assert row.split() == [
        "s-late",
        "COMPLETED",
        "1",
        "1",
        "1",
        "0",
        "1",
        "0",
        "0",
        "0",
        "0",
        row.split()[-1],
    ]
    assert swept.stdout.splitlines()[0].split()[:4] == ["session", "status", "pairs", "positions"]

    ok = await asyncio.to_thread(mmops, env, "verify-coverage")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: nothing uncovered longer than 0.6 s" in ok.stdout


@pytest.mark.postgres
async def test_sweep_once_exits_1_when_the_pass_had_errors(app: App, env: dict[str, str]) -> None:
    position = new_position(
        session_id="s-bad", position_id="o-1", symbol="NOT-A-SYMBOL", opened_at=now_ms()
    )
    position = position.with_buy(Buy("f-1", D("1"), D("1"), D("0"), now_ms()))
    await app.redis.hset(app.keys.positions("s-bad"), "o-1", encode_position(position))
    await app.redis.zadd(app.keys.sessions, {"s-bad": now_ms()})
    swept = await asyncio.to_thread(mmops, env, "sweep", "--once", "--json")
    assert swept.returncode == 1
    report = orjson.loads(swept.stdout)
    [session] = report["sessions"]
    assert session["status"] == "FAILED" and session["errors"][0].startswith("NOT-A-SYMBOL o-1: ")
