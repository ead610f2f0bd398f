"""Per-system circuit breaker: closed → open after N consecutive failures → half-open probes.

Only failures of the system count (``BackendError`` other than ``BackendRejected`` and
client-side faults): a citizen's bad input must not pause a province for everyone.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from gateway.errors import CircuitOpen


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> int:
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


class CircuitBreaker:
    def __init__(
        self,
        system: str,
        *,
        failure_threshold: int,
        reset_timeout: float,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.system = system
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._half_open_max = half_open_max_calls
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._state_value = BreakerState.CLOSED.value
        self.closed = True
        """Whether the state is ``CLOSED`` (set with it by ``_set``): what an attempt asks first,
        read without a call. A closed breaker admits every call, and only ``_set`` leaves or
        enters the closed state (``state`` turns an open breaker half-open, never closed)."""
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self._last_failure: str | None = None
        self.opened_by: str | None = None
        """The system's own failure that last opened the breaker (code and safe detail), so a
        paused call can say why the system was paused, not only that it was."""

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self._reset_timeout
        ):
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def state_value(self) -> str:
        """``state.value``, what traces and logs record. Kept as a string beside the state:
        an enum member's ``value`` is a descriptor with two Python calls behind it, and every
        attempt records the state. An open breaker is read through ``state``, which may turn
        it half-open."""
        if self._state is BreakerState.OPEN:
            return self.state.value
        return self._state_value

    def before_call(self) -> None:
        """Admit a call or raise CircuitOpen; a half-open breaker admits a few probes."""
        if self._state is BreakerState.CLOSED:
            return  # nearly every call: ``state`` turns only an open breaker half-open
        state = self.state
        if state is BreakerState.OPEN:
            remaining = self._reset_timeout - (self._clock() - self._opened_at)
            raise CircuitOpen(self.system, retry_after=max(remaining, 0.0), cause=self.opened_by)
        if state is BreakerState.HALF_OPEN:
            if self._probes >= self._half_open_max:
                raise CircuitOpen(
                    self.system, retry_after=self._reset_timeout, cause=self.opened_by
                )
            self._probes += 1

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self, cause: str | None = None) -> None:
        """One failure of the system; ``cause`` says what it was (kept if it opens the breaker)."""
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self.opened_by = cause
            self._set(BreakerState.OPEN)

    def record_neutral(self) -> None:
        """An attempt ended in a way that says nothing of the system's health."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(self._probes - 1, 0)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        self._state_value = state.value
        self.closed = state is BreakerState.CLOSED
        self._probes = 0
        if state is BreakerState.CLOSED:
            self._failures = 0
        if self._on_change is not None:
            self._on_change(self.system, state)
