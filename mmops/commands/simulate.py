"""`mmops simulate`: play a trader against the paper exchange (demos, tests, benchmarks)."""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import TextIO, cast

from redis.asyncio import Redis

from base.clock import SystemClock
from base.settings import Settings, SettingsError
from mmops import runner
from mmops.reporting import render_table
from mmops.simulator import ProgressCallback, SimConfig, SimStats, SimulationError, Simulator
from storage import redis as redis_store
from storage.keys import Keys
from trading.factory import make_exchange
from trading.paper import PaperExchange


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "simulate",
        help="play a trader: sessions, buy fills, and sells when prices reach the TPs",
        description="Sends session_started, buy fills (some orders in several parts), sell fills "
        "of take-profits the random-walk price reaches (filled on the paper exchange) and "
        "session_ended to the input stream. The trader's own events are reproducible with --seed "
        "and --tag.",
    )
    add_trader_arguments(cmd, volatility=0.3)
    cmd.add_argument(
        "--rolling",
        action="store_true",
        help="rolling sessions: --sessions live at once, each --session-seconds long, the next "
        "starting as one ends; an ended session's TPs fill within --close-within seconds",
    )
    cmd.add_argument("--session-seconds", type=float, default=60.0, metavar="S", help="(--rolling)")
    cmd.add_argument("--close-within", type=float, default=30.0, metavar="S", help="(--rolling)")
    cmd.add_argument(
        "--tag",
        default="",
        help="id tag of the sessions (default: seed and start time; "
        "fix it for an identical stream)",
    )
    cmd.set_defaults(func=_simulate)


def add_trader_arguments(
    cmd: argparse.ArgumentParser, *, volatility: float, note: str = "", after_end: float = 0.0
) -> None:
    """The simulated trader's options, shared by `simulate` and `demo`."""
    cmd.add_argument(
        "--sessions", type=int, default=3, metavar="N", help="sessions, staggered (default 3)"
    )
    cmd.add_argument(
        "--pairs", type=int, default=10, metavar="M", help="pairs per session (default 10)"
    )
    cmd.add_argument(
        "--rate",
        type=float,
        default=20.0,
        metavar="FILLS_PER_S",
        help="buy fills per second (default 20)",
    )
    cmd.add_argument(
        "--duration", type=float, default=30.0, metavar="S", help="seconds of trading (default 30)"
    )
    cmd.add_argument(
        "--seed", type=int, default=None, metavar="X", help="random seed (default: random, printed)"
    )
    cmd.add_argument(
        "--volatility",
        type=float,
        default=volatility,
        metavar="PCT",
        help=f"price volatility, percent per sqrt(second) (default {volatility}{note})",
    )
    cmd.add_argument(
        "--after-end",
        type=float,
        default=after_end,
        metavar="S",
        help="seconds prices keep moving once the last session ended: TPs of ended sessions "
        f"fill then, as TPs of ended sessions do throughout (default {after_end:g})",
    )


def config_from(args: argparse.Namespace) -> SimConfig:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    config = SimConfig(
        sessions=args.sessions,
        pairs=args.pairs,
        rate=args.rate,
        duration=args.duration,
        seed=seed,
        volatility=args.volatility,
        tag=args.tag,
        after_end=args.after_end,
        rolling=getattr(args, "rolling", False),
        session_seconds=getattr(args, "session_seconds", 60.0),
        close_within=getattr(args, "close_within", 30.0),
    )
    config.validate()
    return config


def _simulate(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except SimulationError as exc:
        print(f"mmops simulate: {exc}", file=sys.stderr)
        return 2

    async def main(settings: Settings) -> int:
        line = StatusLine(sys.stderr)
        stats = await simulate(settings, config, on_progress=lambda s: line.show(progress_text(s)))
        line.close()
        print(summary(config, stats))
        return 0

    return runner.run(main)


async def simulate(
    settings: Settings, config: SimConfig, *, on_progress: ProgressCallback | None = None
) -> SimStats:
    """Run one simulation against the settings' Redis and paper exchange."""
    if settings.exchange != "paper":
        raise SettingsError(
            f"EXCHANGE: mmops simulate needs the paper exchange, got {settings.exchange!r}"
        )
    conn = await redis_store.connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        keys = Keys.of(settings)
        # the paper exchange takes the cluster client as it is (its keys' hash tags are its own)
        exchange = make_exchange(settings, cast(Redis, conn), keys, SystemClock())
        assert isinstance(exchange, PaperExchange)
        sim = Simulator(redis=conn, keys=keys, exchange=exchange, config=config)
        return await sim.run(on_progress)
    finally:
        await conn.aclose()


def progress_text(stats: SimStats) -> str:
    share = stats.buys / stats.planned_buys if stats.planned_buys else 1.0
    return (
        f"simulate {stats.elapsed:6.1f}s  {share:4.0%}  events {stats.events}  buys {stats.buys}  "
        f"TP fills {stats.sells}  sessions {stats.sessions_started - stats.sessions_ended} live, "
        f"{stats.sessions_ended} ended"
    )


def summary(config: SimConfig, stats: SimStats) -> str:
    rows = []
    for symbol, pair in stats.pairs.items():
        change = (pair.last / pair.start - 1) * 100
        rows.append([symbol, pair.start, pair.last, f"{change:+.2f}%", pair.buys, pair.sells])
    rate = stats.events / stats.elapsed if stats.elapsed else 0.0
    head = (
        f"simulated {stats.sessions_ended} sessions x {len(stats.pairs)} pairs in "
        f"{stats.elapsed:.1f}s (seed {config.seed}, tag {stats.tag})\n"
        f"events {stats.events} ({rate:.0f}/s): buy fills {stats.buys} in "
        f"{stats.buy_orders} orders ({stats.partial_orders} filled in parts), "
        f"TP fills {stats.sells}\n"
    )
    return head + render_table(["PAIR", "START", "END", "CHANGE", "BUYS", "TP FILLS"], rows)


class StatusLine:
    """One live status line: rewritten in place on a terminal, else printed every `every` s."""

    def __init__(self, out: TextIO, every: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every = every
        self._last = 0.0
        self._width = 0
        self._text = ""

    def show(self, text: str) -> None:
        self._text = text
        if self.tty:
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.out.flush()
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(text, file=self.out, flush=True)
            self._text = ""

    def close(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
        elif self._text and not self.tty:
            print(self._text, file=self.out, flush=True)
        self._width = 0
        self._text = ""
