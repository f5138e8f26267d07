"""`mmops status` shows each pair's share of Kraken's trading-rate counter."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from decimal import Decimal

import redis.asyncio as aioredis

from base.settings import Settings
from mmops.commands.status import collect, render
from storage.keys import Keys
from tests.conftest import MMOPS, ROOT
from trading.factory import make_rate_budget
from trading.kraken_limits import RateBudget


async def test_status_lists_each_pairs_budget(
    settings: Settings, redis: aioredis.Redis, keys: Keys, env: dict[str, str]
) -> None:
    kraken = dataclasses.replace(settings, exchange="kraken", dry_run=True)
    budget = make_rate_budget(kraken, redis, keys)
    assert isinstance(budget, RateBudget)
    await budget.try_spend("BTC/USD", 12, new_orders=3)
    await budget.try_spend("ETH/USD", 1, new_orders=1)

    report = await collect(redis, keys, kraken)
    rows = {p["symbol"]: p for p in report["rate_budget"]["pairs"]}
    assert set(rows) == {"BTC/USD", "ETH/USD"}
    btc = rows["BTC/USD"]
    assert Decimal(11) < Decimal(btc["used"]) <= 12 and btc["limit"] == "30.0"
    assert Decimal(btc["free"]) == Decimal(btc["limit"]) - Decimal(btc["used"])
    assert 20_000 < btc["refill_ms"] <= 24_000  # 12 units at 0.5 per second
    assert (btc["open_orders"], btc["open_cap"]) == (3, 30)
    text = render(report)
    assert "rate budget: tier starter, 50 % kept for the trader:" in text
    assert "BTC/USD" in text and "3 / 30" in text

    # the real command, with the environment of a Kraken deployment
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "status",
        "--json",
        env={**env, "EXCHANGE": "kraken", "DRY_RUN": "true"},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    printed = json.loads(out)
    assert {p["symbol"] for p in printed["rate_budget"]["pairs"]} == {"BTC/USD", "ETH/USD"}


async def test_status_has_no_budget_for_the_paper_exchange(
    settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    report = await collect(redis, keys, settings)
    assert report["rate_budget"] is None
    assert "rate budget" not in render(report)
