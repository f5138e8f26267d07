"""The short chaos run (docs/chaos.md) inside `make test`: the real workers under faults on a
fixed seed, checked by the independent oracle. `make chaos` is the long one."""

from __future__ import annotations

import pytest

from bench.chaos.config import ChaosConfig
from bench.chaos.run import run_once

# two shards (the routing of contract §6), three coverage processes, two sweepers, the
# migrator; about 25 s of traffic with a fault every 1.5 s on average
SHORT = ChaosConfig(seed=3, duration=22.0, rate=35.0, shards=2, fault_every=1.5, after_end=5.0)


@pytest.mark.process
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.timeout(150)
async def test_the_short_chaos_run_finds_nothing() -> None:
    result = await run_once(SHORT, progress=lambda _: None)
    assert [v.as_dict() for v in result.violations] == [], SHORT.command()
    assert result.events > 500
    assert result.faults["kill9"] + result.faults["crash_point"] > 0
    assert result.faults["sigterm"] > 0
    assert result.faults["redis_restart"] > 0
    assert result.faults["pg_cut"] > 0
    exchange = ("rate_limit", "place_5xx", "place_timeout", "lost_response", "post_only")
    assert sum(result.faults[kind] for kind in exchange) > 0
    assert result.traffic["tp_fills"] > 0 and result.traffic["fifo_sells"] > 0
    assert result.traffic["invalid"] > 0 and result.traffic["duplicates"] > 0
