"""Operator traps of the sweeper (issue 11): `mmops sweep` without a mode, SIGTERM mid-pass."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from decimal import ROUND_DOWN, Decimal

import pytest

from mmops.app import App
from tests.conftest import MMOPS, wait_for
from trading.paper import split_symbol, to_units
from trading.positions import Buy, encode_position, new_position

D = Decimal
PAIRS = [
    ("BTC/USD", "64000.5", "0.001"),
    ("ETH/USD", "3000.25", "0.01"),
    ("SOL/USD", "150.5", "0.1"),
    ("XRP/USD", "0.6", "20"),
    ("DOT/USD", "7.1", "5"),
]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_sweep_without_a_mode_says_so_in_one_line_and_starts_nothing(env: dict[str, str]) -> None:
    done = run(env, "sweep")  # used to start the endless loop silently
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "mmops sweep: give --once (one pass, printed) or --loop (the sweeper loop, like "
        "`mmops sweeper`)"
    ]
    json_loop = run(env, "sweep", "--loop", "--json")  # --json used to be ignored
    assert json_loop.returncode == 2
    assert json_loop.stderr.strip().splitlines() == [
        "mmops sweep: --json goes with --once, not --loop"
    ]
    both = run(env, "sweep", "--once", "--loop")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert "Traceback" not in done.stderr + json_loop.stderr + both.stderr


async def seed_work(app: App, sessions: int, per_pair: int) -> int:
    """Recorded buys whose TPs were never placed: the sweeper has one cover per position."""
    now = app.clock.now_ms()
    free: dict[str, int] = {}
    count = 0
    for symbol, price, _ in PAIRS:
        await app.exchange.set_price(symbol, D(price))  # type: ignore[attr-defined]
    for s in range(sessions):
        sid = f"s-{s:02d}"
        positions = {}
        for symbol, price, qty in PAIRS:
            for p in range(per_pair):
                pid = f"{symbol[:3]}-{p}"
                pos = new_position(session_id=sid, position_id=pid, symbol=symbol, opened_at=now)
                pos = pos.with_buy(Buy(f"f-{pid}", D(price), D(qty), D("0.01"), now))
                positions[pid] = encode_position(pos)
                base = split_symbol(symbol)[0]
                free[base] = free.get(base, 0) + to_units(D(qty), ROUND_DOWN)
                count += 1
        await app.redis.hset(app.keys.positions(sid), mapping=positions)  # type: ignore[arg-type]
        await app.redis.zadd(app.keys.sessions, {sid: now})
    for base, units in free.items():
        await app.redis.hincrby(app.keys.paper("free"), base, units)
    return count


def start(env: dict[str, str], command: tuple[str, ...]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*MMOPS, *command],
        env={**env, "CONSUMER_NAME": "sw-term", "SETTLEMENT_INTERVAL_MINUTES": "0.01"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def created(app: App) -> int:
    entries = await app.redis.xrange(app.keys.takeprofits)
    kinds = [fields[b"type"] for _, fields in entries]
    assert set(kinds) <= {b"created"}, kinds
    return len(kinds)


@pytest.mark.parametrize("command", [("sweeper",), ("sweep", "--once")])
async def test_sigterm_mid_pass_stops_between_two_actions_and_exits_0(
    app: App, env: dict[str, str], command: tuple[str, ...]
) -> None:
    """supervisord's stopwaitsecs vs a long pass: the pass checks the stop event before every
    session and position action, so SIGTERM ends it at the next one, not at its end."""
    total = await seed_work(app, sessions=16, per_pair=40)  # 3,200 covers: many seconds of work
    proc = start(env, command)
    try:
        await wait_for(lambda: created(app), timeout=60)  # the pass is under way
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert "stopped early: asked to stop (SIGTERM)" in err
    done = await created(app)
    assert 0 < done < total  # it stopped well before the end of its pass
    if command == ("sweep", "--once"):
        assert "stopped early: asked to stop (SIGTERM)" in out  # the report says so too
    else:
        assert await app.redis.exists(app.keys.sweeper_lease) == 0  # released on the way out
    # nothing was left half-done: every TP placed is recorded on its position
    placed = 0
    for s in range(16):
        for pos in (await app.book.positions(f"s-{s:02d}")).values():
            assert pos.pending is None
            placed += len(pos.live)
    assert placed == done
