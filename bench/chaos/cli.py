"""`python -m bench.chaos [--seed N] [--full] ...` (`make chaos` is `--full`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench.chaos.config import FULL, SMALL, ChaosConfig
from bench.chaos.report import save_failure, summary
from bench.chaos.run import RunResult, run_once
from bench.chaos.shrink import shrink


def parse(argv: list[str] | None) -> tuple[ChaosConfig, bool]:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--full", action="store_true", help="the long run of `make chaos`")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, help="seconds of traffic")
    p.add_argument("--rate", type=float, help="trader steps per second")
    p.add_argument("--sessions", type=int, help="sessions live at once")
    p.add_argument("--pairs", type=int)
    p.add_argument("--shards", type=int, help="MM_STREAM_SHARDS")
    p.add_argument("--coverage", type=int, help="coverage processes")
    p.add_argument("--fault-every", type=float, help="mean seconds between faults")
    p.add_argument("--no-faults", action="store_true")
    p.add_argument("--no-shrink", action="store_true")
    a = p.parse_args(argv)
    config = (FULL if a.full else SMALL).replace(seed=a.seed)
    for name in ("duration", "rate", "sessions", "pairs", "shards", "coverage", "fault_every"):
        if getattr(a, name) is not None:
            config = config.replace(**{name: getattr(a, name)})
    if a.no_faults:
        config = config.replace(faults=False)
    return config, not a.no_shrink


def progress(line: str) -> None:
    print(line, flush=True)


async def _main(config: ChaosConfig, shrinking: bool) -> int:
    progress(f"chaos run: {config.command()}")
    result = await run_once(config, progress)
    print(summary(result), flush=True)
    if not result.violations:
        return 0
    for v in result.violations[:40]:
        print(f"VIOLATION {v.check} {v.subject}: {v.detail}")
    print(f"seed {config.seed}; replay: {config.command()} --no-shrink")
    print(f"details: {save_failure(result, None)}", flush=True)  # before a long shrink
    shortest: RunResult | None = None
    if shrinking:
        progress("shrinking ...")

        async def quiet(c: ChaosConfig) -> RunResult:
            progress(f"  trying {c.command()}")
            return await run_once(c, lambda _: None)

        shortest = await shrink(result, quiet)
        if shortest is not result:
            print(f"shortest failing run: {shortest.config.command()} --no-shrink")
            for v in shortest.violations[:10]:
                print(f"  VIOLATION {v.check} {v.subject}: {v.detail}")
    print(f"details: {save_failure(result, shortest)}")
    return 1


def main(argv: list[str] | None = None) -> int:
    config, shrinking = parse(argv)
    try:
        return asyncio.run(_main(config, shrinking))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
