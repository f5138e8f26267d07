"""CcxtExchange's circuit breaker, with the REAL ccxt kraken client against the local Kraken
stand-in (tests/test_ccxt_exchange.py holds the rest): it opens, rejects without HTTP and
closes after its cool-down; it cuts a retry loop short; permanent errors leave it closed."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import Fault
from tests.kraken_env import MakeExchange, place
from trading.breaker import BreakerState, CircuitBreaker
from trading.exchange import CircuitOpen, PermanentError, TransientError


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so type checkers do not narrow it."""
    return breaker.state


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the circuit breaker -----------------------------------------------------------------


async def test_breaker_opens_rejects_without_http_and_closes_after_cool_down(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    clock = Clock()
    alerts: list[str] = []

    async def on_open(message: str) -> None:
        alerts.append(message)

    breaker = CircuitBreaker(
        name="kraken", failure_threshold=5, cooldown=30.0, clock=clock, on_open=on_open
    )
    ex = make_exchange(breaker=breaker, max_tries=1)
    await ex.market("BTC/USD")

    kraken.inject("Ticker", *[Fault.http(502)] * 5)
    for _ in range(5):
        with pytest.raises(TransientError):
            await ex.quote("BTC/USD")
    assert state(breaker) is BreakerState.OPEN
    assert len(alerts) == 1 and "kraken" in alerts[0]

    seen = len(kraken.requests)
    with pytest.raises(CircuitOpen):
        await ex.quote("BTC/USD")
    with pytest.raises(CircuitOpen):
        await place(ex, "c-while-open")
    with pytest.raises(CircuitOpen):
        await ex.free_balance("BTC")
    assert len(kraken.requests) == seen  # nothing reached the network

    clock.now += 30.0
    assert (await ex.quote("BTC/USD")).bid == Decimal("64584.8")  # the trial call
    assert state(breaker) is BreakerState.CLOSED
    await place(ex, "c-after")
    assert len(alerts) == 1


async def test_breaker_cuts_a_retry_loop_short(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    breaker = CircuitBreaker(failure_threshold=5, cooldown=30.0, clock=Clock())
    ex = make_exchange(breaker=breaker, max_tries=3)
    await ex.market("BTC/USD")
    kraken.inject("Ticker", *[Fault.http(504)] * 10)

    with pytest.raises(TransientError) as first:
        await ex.quote("BTC/USD")
    assert not isinstance(first.value, CircuitOpen)
    with pytest.raises(CircuitOpen):  # tries 4 and 5 fail, the 6th is not attempted
        await ex.quote("BTC/USD")
    assert len(kraken.calls("Ticker")) == 5


async def test_permanent_errors_keep_the_breaker_closed(
    make_exchange: MakeExchange, kraken: FakeKraken
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown=30.0, clock=Clock())
    ex = make_exchange(breaker=breaker, max_tries=1)
    await ex.market("BTC/USD")
    for _ in range(5):
        kraken.inject("Ticker", Fault.http(503))
        with pytest.raises(TransientError):
            await ex.quote("BTC/USD")
        kraken.inject("Ticker", Fault.kraken_error("EGeneral:Invalid arguments"))
        with pytest.raises(PermanentError):
            await ex.quote("BTC/USD")
    assert state(breaker) is BreakerState.CLOSED
