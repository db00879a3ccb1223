"""A circuit breaker shared by every ARS sync step.

Each call that ended in `ArsUnavailable` (already past the client's own retries) counts as a
failure, any answer from ARS (a success or a refusal) as a success. After `threshold` failures
in a row the breaker opens for a cooldown, during which nobody claims work; then one probe is let
through (half-open): its success closes the breaker, its failure re-opens it for twice the
cooldown (capped). One log line per state change, never one per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from dasscod.log import get_logger

log = get_logger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = 3,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
        name: str = "ars",
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self.on_close = on_close
        self.name = name
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.cooldown_s = cooldown_s
        self.open_until = 0.0
        self._probing = False
        self._opened_at = 0.0
        #: State changes so far, for tests and metrics: (state, cooldown_s).
        self.transitions: list[tuple[BreakerState, float]] = []

    def _move(self, state: BreakerState, **info: object) -> None:
        previous, self.state = self.state, state
        self.transitions.append((state, self.cooldown_s))
        # One line when ARS goes away and one when it is back; the probes in between (half-open,
        # open again) are debug, so a long outage does not flood the operators' logs.
        if previous is BreakerState.CLOSED:
            log.warning("ars unavailable: circuit breaker open", breaker=self.name, **info)
            self._opened_at = self.clock()
        elif state is BreakerState.CLOSED:
            log.info("ars available again: circuit breaker closed", breaker=self.name,
                     outage_s=round(self.clock() - self._opened_at, 1))
        else:
            log.debug("ars circuit breaker", breaker=self.name, state=str(state), **info)

    def allow(self) -> bool:
        """May a caller start ARS work now? In half-open state only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() < self.open_until:
                return False
            self._move(BreakerState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def release(self) -> None:
        """The caller allowed by `allow` made no ARS call after all: let another probe."""
        self._probing = False

    def remaining_s(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.open_until - self.clock())

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        if self.state is not BreakerState.CLOSED:
            self.cooldown_s = self.base_cooldown_s
            self._move(BreakerState.CLOSED)
            if self.on_close is not None:
                self.on_close()

    def failure(self, error: str = "") -> None:
        self.failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            self.cooldown_s = min(self.cooldown_s * 2, self.max_cooldown_s)
            self._open(error)
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open(error)

    def _open(self, error: str) -> None:
        self.open_until = self.clock() + self.cooldown_s
        self._move(BreakerState.OPEN, cooldown_s=self.cooldown_s, failures=self.failures,
                   error=error)
