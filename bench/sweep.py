"""Benchmark: sweeper passes over 100 sessions x 10 pairs x 100 positions (100,000 positions).

Seeds the ledger layout straight into Redis (trading.positions structs, encode_position)
with a live paper-exchange order behind every covered position, so reconciliation finds
them; then times, on the paper exchange:

1. a cold pass (a freshly started sweeper: every position decoded once),
2. the covering pass, after 1 % new uncovered positions arrived (one per session and pair),
3. the following pass (nothing to do),

and asserts zero uncovered positions after the covering pass. Target: <= 2 s per pass.

    .venv/bin/python bench/sweep.py [--sessions 100 --pairs 10 --positions 100] [--profile]

Uses REDIS_URL (default redis://127.0.0.1:6379/0) under a throw-away key prefix; PostgreSQL
is not needed (discovery notes it and uses Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import secrets
import sys
import time
from collections import Counter
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.settings import Settings
from mmops.app import App
from trading.client_ids import client_id
from trading.paper import KRAKEN_USD_PAIRS, PaperExchange, split_symbol, to_units
from trading.positions import Buy, Step, StepStatus, decode_position, encode_position, new_position
from trading.pricing import quote_take_profit
from trading.takeprofit import tiers_from
from workers.session_view import figures_of
from workers.sweeper import Sweeper, SweepReport

D = Decimal
PRICES = {  # symbol -> (price, quantity per position)
    "BTC/USD": ("64000.5", "0.001"),
    "ETH/USD": ("3000.25", "0.01"),
    "SOL/USD": ("150.5", "0.1"),
    "XRP/USD": ("0.6", "5"),
    "ADA/USD": ("0.45", "50"),
    "DOGE/USD": ("0.15", "100"),
    "DOT/USD": ("7.1", "5"),
    "LINK/USD": ("15.2", "1"),
    "LTC/USD": ("80.3", "0.2"),
    "AVAX/USD": ("35.4", "1"),
}
FEE = D("0.01")
TARGET_S = 2.0


class Counting:
    """The paper exchange, counting the calls the sweeper makes."""

    def __init__(self, inner: PaperExchange) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attr(*args, **kwargs)

        return call


async def seed(
    app: App, paper: PaperExchange, sessions: int, pairs: list[str], per_pair: int, now: int
) -> None:
    """Covered positions with a live paper order each, written in pipelined batches."""
    keys, redis = app.keys, app.redis
    tiers = tiers_from(app.settings)
    opened = now - 10 * 60_000
    for symbol in pairs:
        await paper.set_price(symbol, D(PRICES[symbol][0]))
    seq = 0
    locked: Counter[str] = Counter()
    for s in range(sessions):
        sid = f"bench-{s:04d}"
        positions: dict[str, bytes] = {}
        orders: dict[str, bytes] = {}
        clients: dict[str, str] = {}
        for symbol in pairs:
            price, qty = (D(v) for v in PRICES[symbol])
            market = await paper.market(symbol)
            quote = quote_take_profit(
                buys=[(price, qty, FEE)],
                uncovered=qty,
                age_ms=now - opened,
                market=market,
                tiers=tiers,
            )
            base, quote_ccy = split_symbol(symbol)
            units = to_units(quote.amount, ROUND_DOWN)
            for p in range(per_pair):
                pid = f"{symbol[:4].rstrip('/')}-{p:03d}"
                seq += 1
                oid = f"OB{seq:05d}-{s:05d}-{p:06d}"
                cid = client_id(sid, pid, 1)
                pos = new_position(session_id=sid, position_id=pid, symbol=symbol, opened_at=opened)
                pos = pos.with_buy(Buy(f"f-{pid}", price, qty, FEE, opened)).with_step(
                    Step(
                        n=1,
                        client_id=cid,
                        qty=quote.amount,
                        price=quote.price,
                        tier=quote.tier,
                        status=StepStatus.LIVE,
                        claimed_at=opened,
                        order_id=oid,
                        acked_at=opened,
                    )
                )
                positions[pid] = encode_position(pos)
                orders[oid] = orjson.dumps(
                    {
                        "id": oid,
                        "cid": cid,
                        "sym": symbol,
                        "side": "sell",
                        "base": base,
                        "quote": quote_ccy,
                        "px": str(quote.price),
                        "amt": str(quote.amount),
                        "fil": "0",
                        "rem": str(units),
                        "st": "open",
                        "ts": str(opened),
                        "seq": seq,
                    }
                )
                clients[cid] = oid
                locked[base] += units
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.positions(sid), mapping=positions)  # type: ignore[arg-type]
            pipe.sadd(keys.pairs(sid), *pairs)
            pipe.hset(keys.session(sid), mapping={"started_at": opened, "pairs": ",".join(pairs)})
            pipe.zadd(keys.sessions, {sid: now})
            pipe.hset(keys.paper("orders"), mapping=orders)  # type: ignore[arg-type]
            pipe.hset(keys.paper("open_clients"), mapping=clients)  # type: ignore[arg-type]
            pipe.hset(keys.paper("clients"), mapping=clients)  # type: ignore[arg-type]
            await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for base, units in locked.items():
            pipe.hincrby(keys.paper("locked"), base, units)
        pipe.set(keys.paper("seq"), seq)
        await pipe.execute()


async def add_uncovered(app: App, sessions: int, pairs: list[str], now: int) -> int:
    """One new, uncovered position per session and pair (as if their TPs were never placed)."""
    keys, redis = app.keys, app.redis
    free: Counter[str] = Counter()
    count = 0
    async with redis.pipeline(transaction=False) as pipe:
        for s in range(sessions):
            sid = f"bench-{s:04d}"
            for symbol in pairs:
                price, qty = (D(v) for v in PRICES[symbol])
                pid = f"{symbol[:4].rstrip('/')}-new"
                pos = new_position(session_id=sid, position_id=pid, symbol=symbol, opened_at=now)
                pos = pos.with_buy(Buy(f"f-{pid}", price, qty, FEE, now))
                pipe.hset(keys.positions(sid), pid, encode_position(pos))
                free[split_symbol(symbol)[0]] += to_units(qty, ROUND_DOWN)
                count += 1
        for base, units in free.items():
            pipe.hincrby(keys.paper("free"), base, units)
        await pipe.execute()
    return count


async def uncovered_total(app: App, sessions: int) -> int:
    total = 0
    for s in range(sessions):
        raw = await app.redis.hgetall(app.keys.positions(f"bench-{s:04d}"))
        total += sum(1 for v in raw.values() if figures_of(decode_position(v)).needs_cover)
    return total


async def timed(
    sweeper: Sweeper, counting: Counting, profile: bool
) -> tuple[float, SweepReport, Counter[str]]:
    counting.calls.clear()
    profiler = cProfile.Profile() if profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    report = await sweeper.run_once()
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    report.notes.append(f"cpu {time.process_time() - cpu:.3f} s")
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    return elapsed, report, Counter(counting.calls)


async def main(args: argparse.Namespace) -> int:
    pairs = list(KRAKEN_USD_PAIRS)[: args.pairs]
    prefix = f"bench{secrets.token_hex(4)}:"
    settings = Settings.from_env(
        key_prefix=prefix,
        session_log_dir="",
        paper_balances="USD=1000000",
        portfolio_daily_loss_limit=D("1000000000"),
        settlement_max_sessions=max(100, args.sessions),
        database_url=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    plain = await App.open(settings)
    assert isinstance(plain.exchange, PaperExchange)
    counting = Counting(plain.exchange)
    app = await App.open(settings, exchange=counting)
    sweeper = await Sweeper.create(app)
    rows: list[tuple[str, float, SweepReport, Counter[str]]] = []
    try:
        now = app.clock.now_ms()
        t0 = time.perf_counter()
        await seed(app, plain.exchange, args.sessions, pairs, args.positions, now)
        seeded = time.perf_counter() - t0
        rows.append(("cold (new sweeper)", *await timed(sweeper, counting, False)))
        added = await add_uncovered(app, args.sessions, pairs, app.clock.now_ms())
        rows.append((f"covering {added} new", *await timed(sweeper, counting, args.profile)))
        rows.append(("following", *await timed(sweeper, counting, args.profile)))
        left = await uncovered_total(app, args.sessions)
    finally:
        await sweeper.close()
        async for key in app.redis.scan_iter(match=f"{prefix}*", count=5000):
            await app.redis.unlink(key)
        await app.close()
        await plain.close()

    positions = rows[-1][2].total("positions")
    print(
        f"sweeper benchmark: {args.sessions} sessions x {len(pairs)} pairs x {args.positions} positions "
        f"(+1 % new) = {positions} positions, paper exchange, seeded in {seeded:.1f} s"
    )
    header = (
        f"{'pass':<22} {'wall s':>7} {'cpu s':>6} {'uncov before':>12} {'uncov after':>11} {'covered':>8} "
        f"{'open orders':>11}  exchange calls"
    )
    print(header)
    print("-" * len(header))
    for name, elapsed, report, calls in rows:
        cpu = report.notes[-1].split()[1]
        print(
            f"{name:<22} {elapsed:>7.3f} {cpu:>6} {report.total('uncovered_before'):>12} {report.total('uncovered_after'):>11} "
            f"{report.total('covered'):>8} {report.open_orders or 0:>11}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        )
    print(
        "phases (ms): "
        + " | ".join(
            f"{name}: " + ", ".join(f"{k} {v}" for k, v in report.phases_ms.items())
            for name, _, report, _ in rows
        )
    )
    print(
        f"uncovered after the covering pass (fresh read): {left}; peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB"
    )
    print(
        f"reproduce: .venv/bin/python bench/sweep.py --sessions {args.sessions} --pairs {len(pairs)} "
        f"--positions {args.positions}"
    )
    assert left == 0, f"{left} positions left uncovered"
    assert rows[1][2].total("covered") == args.sessions * len(pairs)
    slow = [name for name, elapsed, _, _ in rows[1:] if elapsed > TARGET_S]
    if slow:
        print(f"target missed (> {TARGET_S} s): {', '.join(slow)}")
        return 1
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument(
        "--pairs", type=int, default=10, choices=range(1, len(KRAKEN_USD_PAIRS) + 1)
    )
    parser.add_argument(
        "--positions", type=int, default=100, help="covered positions per session and pair"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the covering pass")
    return parser.parse_args(argv)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    try:
        import uvloop

        sys.exit(uvloop.run(main(parse())))
    except ImportError:
        sys.exit(asyncio.run(main(parse())))
