"""The circuit breaker on its own, with a hand-moved clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from trading.breaker import BreakerState, CircuitBreaker
from trading.exchange import CircuitOpen, PermanentError, RateLimited, TransientError


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call so type checkers do not narrow it."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Stand-in exchange calls that count how often they ran."""

    def __init__(self) -> None:
        self.count = 0

    def ok(self, value: str = "ok") -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            self.count += 1
            return value

        return call

    def raising(self, exc: BaseException) -> Callable[[], Awaitable[str]]:
        async def call() -> str:
            self.count += 1
            raise exc

        return call


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alerts() -> list[str]:
    return []


@pytest.fixture
def breaker(clock: Clock, alerts: list[str]) -> CircuitBreaker:
    async def on_open(message: str) -> None:
        alerts.append(message)

    return CircuitBreaker(
        name="kraken", failure_threshold=3, cooldown=30.0, clock=clock, on_open=on_open
    )


async def fail(breaker: CircuitBreaker, calls: Calls, times: int) -> None:
    for _ in range(times):
        with pytest.raises(TransientError):
            await breaker.call(calls.raising(TransientError("kraken quote: RequestTimeout")))


async def test_closed_passes_calls_and_results_through(breaker: CircuitBreaker) -> None:
    calls = Calls()
    assert await breaker.call(calls.ok("x")) == "x"
    assert state(breaker) is BreakerState.CLOSED
    assert calls.count == 1


async def test_opens_after_consecutive_transient_failures(
    breaker: CircuitBreaker, alerts: list[str]
) -> None:
    calls = Calls()
    await fail(breaker, calls, 2)
    assert state(breaker) is BreakerState.CLOSED and alerts == []
    await fail(breaker, calls, 1)
    assert state(breaker) is BreakerState.OPEN
    assert len(alerts) == 1
    assert "kraken" in alerts[0] and "3 consecutive" in alerts[0] and "RequestTimeout" in alerts[0]

    with pytest.raises(CircuitOpen, match="kraken: circuit open"):
        await breaker.call(calls.ok())
    assert calls.count == 3  # the rejected call never ran
    assert len(alerts) == 1


async def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    calls = Calls()
    for _ in range(4):
        await fail(breaker, calls, 2)
        await breaker.call(calls.ok())
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


async def test_a_permanent_error_means_the_exchange_is_alive(breaker: CircuitBreaker) -> None:
    calls = Calls()
    for _ in range(4):
        await fail(breaker, calls, 2)
        with pytest.raises(PermanentError):
            await breaker.call(calls.raising(PermanentError("EOrder:Insufficient funds")))
    assert state(breaker) is BreakerState.CLOSED


async def test_other_exceptions_neither_count_nor_reset(breaker: CircuitBreaker) -> None:
    calls = Calls()
    await fail(breaker, calls, 2)
    with pytest.raises(KeyError):
        await breaker.call(calls.raising(KeyError("bug")))
    assert breaker.consecutive_failures == 2
    await fail(breaker, calls, 1)
    assert state(breaker) is BreakerState.OPEN


async def test_half_open_after_cool_down_and_a_good_trial_closes(
    breaker: CircuitBreaker, clock: Clock, alerts: list[str]
) -> None:
    calls = Calls()
    await fail(breaker, calls, 3)
    clock.now += 29.9
    assert state(breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await breaker.call(calls.ok())

    clock.now += 0.1
    assert state(breaker) is BreakerState.HALF_OPEN
    assert await breaker.call(calls.ok("trial")) == "trial"
    assert state(breaker) is BreakerState.CLOSED
    assert len(alerts) == 1
    # closed again: it takes the full threshold to open once more
    await fail(breaker, calls, 2)
    assert state(breaker) is BreakerState.CLOSED


async def test_a_failed_trial_reopens_and_alerts_again(
    breaker: CircuitBreaker, clock: Clock, alerts: list[str]
) -> None:
    calls = Calls()
    await fail(breaker, calls, 3)
    clock.now += 30
    await fail(breaker, calls, 1)  # the trial
    assert state(breaker) is BreakerState.OPEN
    assert len(alerts) == 2 and "trial" in alerts[1]
    clock.now += 29
    with pytest.raises(CircuitOpen):  # a fresh cool-down started at the failed trial
        await breaker.call(calls.ok())


async def test_a_permanent_error_on_the_trial_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    calls = Calls()
    await fail(breaker, calls, 3)
    clock.now += 30
    with pytest.raises(PermanentError):
        await breaker.call(calls.raising(PermanentError("EOrder:Post only order")))
    assert state(breaker) is BreakerState.CLOSED


async def test_only_one_trial_at_a_time(breaker: CircuitBreaker, clock: Clock) -> None:
    calls = Calls()
    await fail(breaker, calls, 3)
    clock.now += 30
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "slow"

    trial = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="trial"):
        await breaker.call(calls.ok())
    release.set()
    assert await trial == "slow"
    assert state(breaker) is BreakerState.CLOSED


async def test_a_cancelled_trial_lets_the_next_call_try(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    calls = Calls()
    await fail(breaker, calls, 3)
    clock.now += 30

    trial = asyncio.create_task(breaker.call(asyncio.Event().wait))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert state(breaker) is BreakerState.HALF_OPEN
    assert await breaker.call(calls.ok()) == "ok"
    assert state(breaker) is BreakerState.CLOSED


async def test_late_results_of_calls_started_before_opening_change_nothing(
    breaker: CircuitBreaker, clock: Clock, alerts: list[str]
) -> None:
    calls = Calls()
    release = asyncio.Event()

    async def slow_failure() -> str:
        await release.wait()
        raise TransientError("late timeout")

    late = asyncio.create_task(breaker.call(slow_failure))
    await asyncio.sleep(0)
    await fail(breaker, calls, 3)
    release.set()
    with pytest.raises(TransientError):
        await late
    assert len(alerts) == 1  # no second alert for a failure of the old epoch
    clock.now += 30
    assert await breaker.call(calls.ok()) == "ok"
    assert state(breaker) is BreakerState.CLOSED


async def test_a_failing_alert_callback_is_logged_not_raised(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(message: str) -> None:
        raise RuntimeError("alert stream down")

    breaker = CircuitBreaker(failure_threshold=1, cooldown=5, clock=clock, on_open=broken)
    with pytest.raises(TransientError, match="boom"):
        await breaker.call(Calls().raising(TransientError("boom")))
    assert state(breaker) is BreakerState.OPEN
    assert any(r.levelno == logging.ERROR and "on_open" in r.getMessage() for r in caplog.records)


def test_defaults_and_bad_arguments() -> None:
    breaker = CircuitBreaker()
    assert (breaker.failure_threshold, breaker.cooldown) == (5, 30.0)
    assert state(breaker) is BreakerState.CLOSED
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown=-1)


async def test_rate_limit_replies_count_neither_way(clock: Clock, alerts: list[str]) -> None:
    """A pair's rate counter saying no is not an outage: the breaker never opens on it,
    and in half-open it neither closes nor re-opens the breaker."""
    breaker = CircuitBreaker(failure_threshold=2, cooldown=30.0, clock=clock)
    calls = Calls()
    limited = RateLimited("kraken place_limit_sell XRP/USD c-1: EOrder:Rate limit exceeded")
    for _ in range(10):
        with pytest.raises(RateLimited):
            await breaker.call(calls.raising(limited))
    assert state(breaker) is BreakerState.CLOSED and alerts == []

    with pytest.raises(TransientError):
        await breaker.call(calls.raising(TransientError("timeout")))
    with pytest.raises(RateLimited):  # does not reset the count of real failures...
        await breaker.call(calls.raising(limited))
    with pytest.raises(TransientError):
        await breaker.call(calls.raising(TransientError("timeout")))
    assert state(breaker) is BreakerState.OPEN  # ...so two timeouts still open it

    clock.now += 30.0
    with pytest.raises(RateLimited):  # the trial call was rate limited: still undecided
        await breaker.call(calls.raising(limited))
    assert state(breaker) is BreakerState.HALF_OPEN
    assert await breaker.call(calls.ok()) == "ok"
    assert state(breaker) is BreakerState.CLOSED
