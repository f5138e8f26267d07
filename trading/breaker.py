"""An async circuit breaker for exchange calls.

closed -> open after `failure_threshold` consecutive transient failures -> half-open once
`cooldown` seconds have passed, which lets exactly one trial call through: its success
closes the breaker, its transient failure opens it again for another cool-down.

While open, calls fail fast with CircuitOpen and never reach the network, so an exchange
outage costs one alert instead of a retry storm. Only TransientError counts as a
failure: a PermanentError means the exchange answered, i.e. it is alive. A RateLimited
reply (a TransientError) counts neither way: it is one pair's matter, not an outage.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from trading.exchange import CircuitOpen, PermanentError, RateLimited, TransientError

T = TypeVar("T")

log = logging.getLogger(__name__)

OnOpen = Callable[[str], Awaitable[None]]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive transient failures of the calls it wraps and fails fast when open.

    `clock` returns monotonic seconds (injectable for tests). `on_open(message)` is awaited
    once each time the breaker opens; its own errors are logged, never raised.
    """

    def __init__(
        self,
        *,
        name: str = "exchange",
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_open: OnOpen | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._on_open = on_open
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive transient failures while closed
        self._opened_at = 0.0
        self._trial_running = False
        # Bumped on every state change: a result from a call admitted under an older
        # state (say, a slow request started before the breaker opened) changes nothing.
        self._epoch = 0

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns into HALF_OPEN once the cool-down has passed."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` unless the breaker is open; record how it went."""
        epoch, trial = self._admit()
        try:
            result = await fn()
        except (CircuitOpen, RateLimited):
            # a rate-limit reply: the exchange is alive and refused one pair's (or one
            # key's) request for now; the budget waits, the breaker must not stop them all
            self._neutral(epoch, trial)
            raise
        except TransientError as exc:
            await self._failure(epoch, trial, exc)
            raise
        except PermanentError:
            self._success(epoch, trial)
            raise
        except BaseException:
            # Bugs, cancellation: no evidence either way about the exchange.
            self._neutral(epoch, trial)
            raise
        self._success(epoch, trial)
        return result

    # -- state machine -------------------------------------------------------------------

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.cooldown

    def _admit(self) -> tuple[int, bool]:
        """(epoch, is_trial) for a call allowed through, or raise CircuitOpen."""
        if self._state is BreakerState.CLOSED:
            return self._epoch, False
        if self._state is BreakerState.OPEN:
            if not self._cooled_down():
                remaining = self.cooldown - (self._clock() - self._opened_at)
                raise CircuitOpen(f"{self.name}: circuit open, next trial in {remaining:.1f} s")
            self._set_state(BreakerState.HALF_OPEN)
        # half-open: one trial at a time
        if self._trial_running:
            raise CircuitOpen(f"{self.name}: circuit half-open, a trial call is in flight")
        self._trial_running = True
        return self._epoch, True

    def _set_state(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1

    def _success(self, epoch: int, trial: bool) -> None:
        if trial:
            self._trial_running = False
        if epoch != self._epoch:
            return
        if self._state is BreakerState.HALF_OPEN and trial:
            log.info(
                "circuit breaker closed after a successful trial", extra={"breaker": self.name}
            )
            self._set_state(BreakerState.CLOSED)
        self._failures = 0

    def _neutral(self, epoch: int, trial: bool) -> None:
        if trial:
            self._trial_running = False

    async def _failure(self, epoch: int, trial: bool, exc: TransientError) -> None:
        if trial:
            self._trial_running = False
        if epoch != self._epoch:
            return
        if self._state is BreakerState.HALF_OPEN and trial:
            await self._open(f"trial call failed ({exc})")
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                await self._open(f"{self._failures} consecutive transient failures (last: {exc})")

    async def _open(self, why: str) -> None:
        self._set_state(BreakerState.OPEN)
        self._opened_at = self._clock()
        self._failures = 0
        message = (
            f"circuit breaker '{self.name}' opened: {why}; "
            f"calls are rejected for {self.cooldown:g} s"
        )
        log.warning(message, extra={"breaker": self.name})
        if self._on_open is None:
            return
        try:
            await self._on_open(message)
        except Exception:
            log.exception("circuit breaker on_open callback failed", extra={"breaker": self.name})
