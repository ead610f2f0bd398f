from __future__ import annotations

import pytest

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.errors import CircuitOpen


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "sys",
        failure_threshold=3,
        reset_timeout=10.0,
        half_open_max_calls=1,
        clock=clock,
        on_change=(lambda _s, st: changes.append(st)) if changes is not None else None,
    )


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state.value == "closed"
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state.value == "open"
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(10.0)


def test_success_resets_the_failure_count() -> None:
    breaker = make(FakeClock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state.value == "closed"


def test_half_open_admits_one_probe_and_closes_on_success() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make(clock, changes)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10.0
    assert breaker.state.value == "half_open"
    breaker.before_call()
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # a second probe while the first is out
    breaker.record_success()
    assert breaker.state.value == "closed"
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_half_open_failure_reopens() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10.0
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state.value == "open"


def test_neutral_outcome_frees_the_probe() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10.0
    breaker.before_call()
    breaker.record_neutral()
    breaker.before_call()  # admitted again
    assert breaker.state.value == "half_open"


def test_state_value_is_the_state_s_value_in_every_state() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = make(clock, changes)
    assert breaker.state_value == "closed"
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state_value == "open"
    clock.now += 10.0
    # Read while open, past the reset time: the breaker turns half-open on being read, as
    # reading ``state`` does, and says so.
    assert breaker.state_value == "half_open"
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]
    breaker.before_call()
    breaker.record_failure()
    assert both(breaker) == ("open", "open")
    clock.now += 10.0
    assert both(breaker) == ("half_open", "half_open")
    breaker.before_call()
    breaker.record_success()
    assert both(breaker) == ("closed", "closed")


def both(breaker: CircuitBreaker) -> tuple[str, str]:
    """``state_value`` read first, then ``state.value``."""
    first = breaker.state_value
    return first, breaker.state.value
