"""An attempt asks a closed breaker nothing (``closed`` read, ``before_call`` not called) and
tells it of a success only when that changes something: the breaker, the attempts it admits
or refuses, their errors and their traces' breaker states are the same as when every attempt
calls ``before_call``, ``record_*`` and ``state_value``, as the attempt did before. Checked on
random sequences of outcomes against a twin breaker driven that way, on one fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.adapter import Call, Reply
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.errors import (
    BackendError,
    BackendFault,
    BackendRejected,
    BackendServerError,
    BackendUnavailable,
    CircuitOpen,
)
from gateway.pipeline import CallTrace, SystemRuntime, _counts_as_failure, one_attempt
from tests.calls import CONTEXT
from tests.unit.test_pipeline import system


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Scripted:
    """An adapter answering each call as told by ``next``: a reply, an error, or cancelled."""

    def __init__(self) -> None:
        self.next: str = "ok"

    async def call(self, call: Call) -> Reply:
        outcome = self.next
        if outcome == "ok":
            return Reply({"ok": True})
        if outcome == "cancelled":
            raise asyncio.CancelledError
        raise _error(outcome)

    async def aclose(self) -> None:
        return None


def _error(outcome: str) -> BackendError:
    if outcome == "server":
        return BackendServerError("boom", reached_backend=True)
    if outcome == "refused":
        return BackendRejected("no", reached_backend=True)
    if outcome == "client-fault":
        return BackendFault("no", fault_side="client")
    if outcome == "unreachable":
        return BackendUnavailable("down", reached_backend=False)
    raise AssertionError(outcome)


def _twin_attempt(breaker: CircuitBreaker, outcome: str, trace: CallTrace) -> str:
    """The attempt's breaker steps as they were: every call asks and tells the breaker."""
    try:
        breaker.before_call()
    except CircuitOpen:
        trace.breaker_state = breaker.state_value
        return "CircuitOpen"
    try:
        if outcome == "ok":
            breaker.record_success()
            return "ok"
        if outcome == "cancelled":
            breaker.record_neutral()
            return "CancelledError"
        error = _error(outcome)
        if _counts_as_failure(error):
            breaker.record_failure(f"{error.code}: {error.detail}"[:300])
        else:
            breaker.record_success()
        return type(error).__name__
    finally:
        trace.breaker_state = breaker.state_value


def _state(breaker: CircuitBreaker) -> tuple[object, ...]:
    return (
        breaker._state,
        breaker._state_value,
        breaker._failures,
        breaker._probes,
        breaker._opened_at,
        breaker.opened_by,
    )


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_the_breaker_and_the_traces_are_those_of_every_call_asking(seed: int) -> None:
    rng = random.Random(seed)
    clock = _Clock()
    changes: list[tuple[str, BreakerState]] = []
    twin_changes: list[tuple[str, BreakerState]] = []
    breaker = CircuitBreaker(
        "sys",
        failure_threshold=3,
        reset_timeout=30,
        half_open_max_calls=2,
        clock=clock,
        on_change=lambda s, st: changes.append((s, st)),
    )
    twin = CircuitBreaker(
        "sys",
        failure_threshold=3,
        reset_timeout=30,
        half_open_max_calls=2,
        clock=clock,
        on_change=lambda s, st: twin_changes.append((s, st)),
    )
    adapter = _Scripted()
    settings = system(timeouts={"attempt": 5, "deadline": 10})
    attempt = one_attempt(SystemRuntime("sys", settings, adapter, breaker, asyncio.Semaphore(4)))
    outcomes = ["ok", "server", "refused", "client-fault", "unreachable", "cancelled"]
    weights = [5, 4, 1, 1, 2, 1]
    seen = set()
    for _ in range(1500):
        clock.now += rng.choice([0.0, 0.5, 3.0, 12.0, 31.0])
        outcome = rng.choices(outcomes, weights)[0]
        adapter.next = outcome
        trace, twin_trace = CallTrace(), CallTrace()
        trace.breaker_state = twin_trace.breaker_state = "unset"
        try:
            await attempt(Call("op", {}, CONTEXT), trace)
            got = "ok"
        except (BackendError, asyncio.CancelledError) as exc:
            got = type(exc).__name__
        wanted = _twin_attempt(twin, outcome, twin_trace)
        assert got == wanted
        assert trace.breaker_state == twin_trace.breaker_state
        assert _state(breaker) == _state(twin)
        assert breaker.closed is (breaker._state is BreakerState.CLOSED)
        seen.add((got, trace.breaker_state))
    assert changes == twin_changes
    # Every state was met, refusals included: the sequences crossed every branch.
    assert {state for _, state in seen} == {"closed", "open", "half_open"}
    assert "CircuitOpen" in {got for got, _ in seen}
