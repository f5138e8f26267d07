"""The Kraken stand-in and adapters wired to it, for the tests that drive the real ccxt
client (fixtures `kraken`, `make_exchange`, `ex`, `sleeps`, `trader`; conftest exposes them).

A test module changes the stand-in's limits by defining its own `kraken_limits` fixture.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import STARTER, Limits
from trading.ccxt_exchange import CcxtExchange, rebase_urls
from trading.exchange import Order

API_KEY = "mmopsTESTkeyZ9x+Qv1rLw5Yb3Nc7Hd2Jf8Kp4Ms6Tu0Wx2Ya4Zc6Ee8Gg0Ii2Kk4"
API_SECRET = base64.b64encode(b"mmops-test-secret-" + bytes(range(46))).decode()
TRADER_KEY = "traderKEYonTHEsameACCOUNT0123456789abcdefABCDEF0123456789"
TRADER_SECRET = base64.b64encode(b"the-traders-own-secret-" + bytes(range(41))).decode()
TIMEOUT_MS = 500  # the client's; "hang" faults last longer than this
HANG = 2.0

MakeExchange = Callable[..., CcxtExchange]


@pytest.fixture
def kraken_limits() -> Limits:
    return STARTER


@pytest.fixture
async def kraken(kraken_limits: Limits) -> AsyncIterator[FakeKraken]:
    """The stand-in, with mmops' key and the trader's on one account."""
    async with FakeKraken(api_key=API_KEY, api_secret=API_SECRET, limits=kraken_limits) as server:
        server.add_key(TRADER_KEY, TRADER_SECRET)
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def make_exchange(kraken: FakeKraken, sleeps: list[float]) -> AsyncIterator[MakeExchange]:
    """Build adapters wired to the fake server; all are closed after the test."""
    made: list[CcxtExchange] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def make(**overrides: Any) -> CcxtExchange:
        kwargs: dict[str, Any] = {
            "exchange_id": "kraken",
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            "api_url": kraken.url,
            "sleep": record_sleep,
            "timeout_ms": TIMEOUT_MS,
            # ccxt's Kraken pacing (1 s per private cost unit) and its 250 ms pause on
            # close() would only make the tests slow
            "ccxt_config": {"rateLimit": 1, "timeout_on_exit": 0},
        }
        kwargs.update(overrides)
        exchange = CcxtExchange(**kwargs)
        made.append(exchange)
        return exchange

    yield make
    for exchange in made:
        await exchange.close()


@pytest.fixture
def ex(make_exchange: MakeExchange) -> CcxtExchange:
    return make_exchange()


async def place(
    ex: CcxtExchange,
    client_id: str,
    *,
    symbol: str = "BTC/USD",
    amount: str = "0.01",
    price: str = "64584.9",
    post_only: bool = True,
) -> Order:
    return await ex.place_limit_sell(
        symbol=symbol,
        amount=Decimal(amount),
        price=Decimal(price),
        client_id=client_id,
        post_only=post_only,
    )


@pytest.fixture
async def trader(kraken: FakeKraken) -> AsyncIterator[Any]:
    """A plain ccxt kraken client with the trader's key on mmops' account."""
    client = ccxt_async.kraken(
        {"apiKey": TRADER_KEY, "secret": TRADER_SECRET, "rateLimit": 1, "timeout_on_exit": 0}
    )
    client.urls = {**client.urls, "api": rebase_urls(client.urls["api"], kraken.url)}
    yield client
    await client.close()
