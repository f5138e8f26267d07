"""Shrinking a failing run: the same seed with a shorter history (fewer sessions and
events, fewer faults), kept while it still shows a violation of the same check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.chaos.config import ChaosConfig
from bench.chaos.run import RunResult

Runner = Callable[[ChaosConfig], Awaitable[RunResult]]
MIN_DURATION = 4.0


def candidates(config: ChaosConfig) -> list[ChaosConfig]:
    """Smaller neighbours of a config, the most reducing first."""
    out = []
    if config.duration > MIN_DURATION:
        out.append(config.replace(duration=max(MIN_DURATION, round(config.duration / 2, 1))))
    if config.sessions > 1:
        out.append(config.replace(sessions=max(1, config.sessions // 2)))
    if config.faults:
        out.append(config.replace(faults=False))
        out.append(config.replace(fault_every=round(config.fault_every * 2, 1)))
    if config.rate > 5:
        out.append(config.replace(rate=max(5.0, round(config.rate / 2, 1))))
    return out


async def shrink(failing: RunResult, run: Runner, attempts: int = 6) -> RunResult:
    """Greedy: take the first smaller config that still fails the same check; at most
    `attempts` runs."""
    checks = {v.check for v in failing.violations}
    best = failing
    tries = 0
    improved = True
    while improved and tries < attempts:
        improved = False
        for config in candidates(best.config):
            if tries >= attempts:
                break
            tries += 1
            result = await run(config)
            if checks & {v.check for v in result.violations}:
                best, improved = result, True
                break
    return best
