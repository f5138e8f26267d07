"""EXCHANGE_API_URL and EXCHANGE_SANDBOX: the adapter built from settings reaches the
stand-in through the URL setting alone; a sandbox that ccxt does not know stops the
process at start with one line naming the setting."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from base.clock import SystemClock
from base.settings import Settings, SettingsError
from storage.keys import Keys
from tests.conftest import MMOPS, ROOT
from tests.fake_kraken import FakeKraken
from tests.kraken_env import API_KEY, API_SECRET
from trading.ccxt_exchange import CcxtExchange, rebase_urls
from trading.exchange import OrderStatus
from trading.factory import make_exchange, make_rate_budget
from trading.kraken_limits import RateBudget


def test_rebase_urls_moves_every_rest_url_onto_the_base() -> None:
    kraken = {"public": "https://api.kraken.com", "private": "https://api.kraken.com"}
    assert rebase_urls(kraken, "http://127.0.0.1:8080") == {
        "public": "http://127.0.0.1:8080",
        "private": "http://127.0.0.1:8080",
    }
    nested = {
        "rest": "https://api.binance.com/api/v3",
        "ws": "wss://stream.binance.com/ws",
        "more": {"sapi": "https://api.binance.com/sapi/v1"},
    }
    assert rebase_urls(nested, "https://proxy.example/bn/") == {
        "rest": "https://proxy.example/bn/api/v3",
        "ws": "wss://stream.binance.com/ws",
        "more": {"sapi": "https://proxy.example/bn/sapi/v1"},
    }


async def test_the_adapter_from_settings_reaches_the_stand_in_by_its_url(
    kraken: FakeKraken, settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    configured = Settings(
        exchange="kraken",
        exchange_api_key=API_KEY,
        exchange_api_secret=API_SECRET,
        exchange_api_url=kraken.url,
        key_prefix=settings.key_prefix,
    )
    exchange = make_exchange(configured, redis, keys, SystemClock())
    assert isinstance(exchange, CcxtExchange)
    try:
        order = await exchange.place_limit_sell(
            symbol="ETH/USD", amount=Decimal("0.5"), price=Decimal("3200.00"), client_id="s-1"
        )
    finally:
        await exchange.close()
    assert order.status == OrderStatus.OPEN
    (sent,) = kraken.calls("AddOrder")
    assert sent.key == API_KEY and sent.fields["cl_ord_id"] == "s-1"
    budget = make_rate_budget(configured, redis, keys)
    assert isinstance(budget, RateBudget) and budget.limit == 30  # starter, 50 % kept


async def test_a_sandbox_ccxt_does_not_know_is_refused(
    settings: Settings, redis: aioredis.Redis, keys: Keys
) -> None:
    configured = Settings(exchange="kraken", dry_run=True, exchange_sandbox=True)
    with pytest.raises(SettingsError) as caught:
        make_exchange(configured, redis, keys, SystemClock())
    message = str(caught.value)
    assert message.startswith("EXCHANGE_SANDBOX: ") and "kraken" in message
    assert "\n" not in message
    unknown = Settings(exchange="nosuchexchange", dry_run=True)
    with pytest.raises(SettingsError, match=r"^EXCHANGE: "):
        make_exchange(unknown, redis, keys, SystemClock())
    assert make_rate_budget(Settings(), redis, keys) is None  # paper: no counter


async def test_sandbox_mode_switches_to_the_exchanges_test_urls() -> None:
    ex = CcxtExchange(exchange_id="binance", sandbox=True)
    try:
        client = ex._client
        assert client.isSandboxModeEnabled
        assert client.urls["api"] == client.urls["test"]
    finally:
        await ex.close()


async def test_a_bad_exchange_setting_stops_the_process_in_one_line(
    env: dict[str, str],
) -> None:
    env = {**env, "EXCHANGE": "kraken", "DRY_RUN": "true", "EXCHANGE_SANDBOX": "true"}
    proc = await asyncio.create_subprocess_exec(
        *MMOPS,
        "coverage",
        "--drain",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert lines == [lines[0]] and lines[0].startswith("mmops: EXCHANGE_SANDBOX: "), lines
    assert "Traceback" not in err.decode()
