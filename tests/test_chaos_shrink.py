"""The chaos run's shrinker (bench/chaos/shrink.py), driven by a stand-in for the run: it
keeps the smaller configs that still fail the same check, and stops at its budget."""

from __future__ import annotations

from bench.chaos.checker import Violation
from bench.chaos.config import ChaosConfig
from bench.chaos.run import RunResult
from bench.chaos.shrink import shrink


def stand_in(tried: list[ChaosConfig]):  # type: ignore[no-untyped-def]
    """Fails `pg.session_pnl` while a run has faults and at least 3 sessions and 10 s of
    traffic; a smaller one fails another check or none."""

    async def run(config: ChaosConfig) -> RunResult:
        tried.append(config)
        if config.faults and config.sessions >= 3 and config.duration >= 10:
            return RunResult(config, [Violation("pg.session_pnl", "s-1", "off")])
        if config.sessions == 1:
            return RunResult(config, [Violation("stream.pending", "coverage", "1")])
        return RunResult(config)

    return run


async def test_the_shortest_config_that_still_fails_the_same_check() -> None:
    big = ChaosConfig(seed=7, duration=720, sessions=12, rate=60)
    tried: list[ChaosConfig] = []
    failing = RunResult(big, [Violation("pg.session_pnl", "s-1", "off")])
    best = await shrink(failing, stand_in(tried), attempts=50)
    assert (best.config.duration, best.config.sessions, best.config.faults) == (11.2, 3, True)
    assert best.config.seed == 7 and best.violations[0].check == "pg.session_pnl"
    assert "--seed 7" in best.config.command() and "--duration 11.2" in best.config.command()
    # one session fails too, but another check: that run was tried and not kept
    assert any(c.sessions == 1 for c in tried)


async def test_the_budget_of_runs_is_kept() -> None:
    tried: list[ChaosConfig] = []
    failing = RunResult(ChaosConfig(duration=720), [Violation("pg.session_pnl", "s", "x")])
    await shrink(failing, stand_in(tried), attempts=4)
    assert len(tried) == 4
