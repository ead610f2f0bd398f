"""Admission: while a busy worker refuses, its bound also follows the time admitted calls take.

The rule is driven with the intervals' figures given (delay, share of the CPU, the calls' times),
never with a clock: what is asserted is where the bound goes, not how fast anything ran."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.http.admission import ADMISSION, Admission
from gateway.settings import AdmissionSettings
from tests.unit.http.test_admission import (
    CALLS,
    CountingVerifier,
    HeldBackend,
    _bounded,
    _client,
)
from tests.unit.http.test_app import auth, call_body

MS = 0.001


def _admission(**settings: float) -> Admission:
    base: dict[str, float] = {
        "max_in_flight": 100,
        "min_in_flight": 4,
        "queue_delay_target_ms": 50,
        "refusing_delay_target_ms": 2,
        "latency_tolerance": 1.5,
    }
    return Admission(AdmissionSettings.model_validate(base | settings), 2048)


def _calls(admission: Admission, count: int, seconds: float) -> None:
    """``count`` calls admitted and ended, each having taken ``seconds``."""
    for _ in range(count):
        admission.admitted()
        admission.finished(0, seconds)


def _hold(admission: Admission, in_flight: int) -> None:
    """``in_flight`` calls admitted that have not ended."""
    for _ in range(in_flight):
        admission.admitted()


def _refuse(admission: Admission, count: int) -> None:
    for _ in range(count):
        admission.refusal("queue_delay")


async def test_the_unloaded_time_is_learned_with_cpu_to_spare_and_nothing_refused() -> None:
    admission = _admission()
    _hold(admission, 1)  # keeps the probe's rule going (``interval_ended`` True)
    assert admission.unloaded == 0
    # Fewer than eight calls in the interval: too few to say.
    _calls(admission, 7, 2 * MS)
    assert admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == 0
    # Enough, the thread on the CPU less than 80 % of the interval, nothing refused.
    _calls(admission, 10, 2 * MS)
    assert admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == pytest.approx(2 * MS)
    # A saturated worker's calls wait for the core: not their unloaded time.
    _calls(admission, 10, 40 * MS)
    assert admission.interval_ended(0.004, busy=0.95)
    assert admission.unloaded == pytest.approx(2 * MS)
    # Nor an interval with a refusal in it, whatever the CPU.
    _calls(admission, 10, 40 * MS)
    _refuse(admission, 1)
    assert admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == pytest.approx(2 * MS)
    # Later unloaded intervals move it by an eighth of the difference.
    _calls(admission, 10, 4 * MS)
    assert admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == pytest.approx(2.25 * MS)
    admission.delay.stop()


async def test_while_refusing_on_a_busy_worker_slow_calls_cut_the_bound() -> None:
    admission = _admission()
    _hold(admission, 1)
    _calls(admission, 10, 2 * MS)
    assert admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == pytest.approx(2 * MS)  # the goal: 1.5 x 2 = 3 ms
    # Overload: 40 in flight, more refused than admitted, calls taking 12 ms, the loop on
    # time (under the 2 ms refusing target: the delay alone would let the bound grow).
    _hold(admission, 39)
    _calls(admission, 10, 12 * MS)
    _refuse(admission, 100)
    assert admission.in_flight == 40
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 20  # 40 x 3/12, but by at most half at once
    # Still 4 ms a call against 3: 20 x 3/4.
    admission.in_flight = 20
    _calls(admission, 10, 4 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 15
    # Slow calls on a worker mostly off the CPU and with its loop on time: held, neither cut
    # nor grown.
    admission.in_flight = 15
    _calls(admission, 10, 5 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.0005, busy=0.3)
    assert admission.limit == 15
    # Off the CPU but the loop late: ready work waits (for the core other processes hold):
    # the calls queue in this worker, the cut applies (15 x 3/4.5).
    _calls(admission, 10, 4.5 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.003, busy=0.3)
    assert admission.limit == 10
    admission.limit = 15
    # Within the goal, the bound reached and the loop on time: it grows again.
    _calls(admission, 10, 2.5 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 16
    # However slow, never below min_in_flight.
    for _ in range(10):
        admission.in_flight = admission.limit
        _calls(admission, 10, 500 * MS)
        _refuse(admission, 100)
        admission.interval_ended(0.020, busy=1.0)
    assert admission.limit == 4
    admission.in_flight = 0
    admission.delay.stop()


async def test_with_the_loop_late_too_the_deeper_of_the_two_cuts_applies() -> None:
    admission = _admission()
    _hold(admission, 1)
    _calls(admission, 10, 2 * MS)
    admission.interval_ended(0.0002, busy=0.4)
    _hold(admission, 39)
    _calls(admission, 10, 4 * MS)
    _refuse(admission, 100)
    # The delay's cut: 40 x 2/2.5 = 32; the calls' time: 40 x 3/4 = 30.
    assert admission.interval_ended(0.0025, busy=1.0)
    assert admission.limit == 30
    admission.in_flight = 30
    _calls(admission, 10, 3.5 * MS)
    _refuse(admission, 100)
    # The delay's cut: 30 x 2/4 = 15; the calls' time: 30 x 3/3.5 = 25.
    assert admission.interval_ended(0.004, busy=1.0)
    assert admission.limit == 15
    admission.in_flight = 0
    admission.delay.stop()


async def test_slow_calls_without_refusals_leave_the_bound_alone() -> None:
    """Outside overload the bound stays where the loop's delay puts it: a pool the worker
    serves is not refused because its calls are slower than they were."""
    admission = _admission()
    _hold(admission, 1)
    _calls(admission, 10, 2 * MS)
    admission.interval_ended(0.0002, busy=0.4)
    _hold(admission, 49)
    _calls(admission, 50, 40 * MS)
    _refuse(admission, 5)  # a few refusals among many admissions: not refusing
    assert admission.interval_ended(0.005, busy=1.0)
    assert admission.limit == 100
    admission.in_flight = 0
    admission.delay.stop()


async def test_without_a_tolerance_the_loop_delay_alone_decides() -> None:
    admission = _admission(latency_tolerance=0)
    _hold(admission, 1)
    _calls(admission, 10, 2 * MS)
    admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == 0
    _hold(admission, 39)
    _calls(admission, 10, 40 * MS)
    _refuse(admission, 100)
    admission.interval_ended(0.0005, busy=1.0)  # on time: the bound, not reached, stays
    assert admission.limit == 100
    admission.in_flight = 0
    admission.delay.stop()


async def test_the_middleware_times_each_admitted_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each admitted call reports its time when it ends, from its admission; a refused one
    reports nothing."""
    backend, verifier = HeldBackend(), CountingVerifier()
    timed: list[float] = []
    finished = Admission.finished

    def spy(self: Admission, reserved: int, seconds: float) -> None:
        timed.append(seconds)
        finished(self, reserved, seconds)

    monkeypatch.setattr(Admission, "finished", spy)
    async for client in _client(_bounded(tmp_path, max_in_flight=1), backend, verifier):
        await _timed_calls(client, backend, timed)


async def _timed_calls(
    client: TestClient[Any, Any], backend: HeldBackend, timed: list[float]
) -> None:
    admission = client.app[ADMISSION]
    held = asyncio.create_task(client.post(CALLS, json=call_body(), headers=auth()))
    await backend.until_arrived(1)
    assert (await client.post(CALLS, json=call_body(), headers=auth())).status == 503
    assert timed == []
    await asyncio.sleep(0.02)  # the held call's time is at least this long
    backend.release.set()
    assert (await held).status == 200
    assert len(timed) == 1
    assert timed[0] >= 0.02
    assert admission.in_flight == 0
    assert admission.body_bytes == 0


async def test_with_refusals_the_bound_grows_one_call_at_a_time_and_not_while_slow() -> None:
    """Demand beyond the bound but less than twice what it takes in (refused, not refusing):
    the bound grew by an eighth an interval, back to where the calls waited many times their
    unloaded time, then was cut again. Now it grows by one, and not while the calls are slow."""
    admission = _admission()
    _hold(admission, 1)
    _calls(admission, 10, 2 * MS)
    admission.interval_ended(0.0002, busy=0.4)
    admission.limit = 16
    admission.in_flight = 16
    _calls(admission, 30, 2.5 * MS)
    _refuse(admission, 10)  # fewer refused than admitted
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 17  # not 18
    admission.in_flight = 17
    _calls(admission, 30, 5 * MS)
    _refuse(admission, 10)
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 17  # slow: held (not cut: the worker is not refusing)
    # Nothing refused: an eighth again.
    _calls(admission, 30, 5 * MS)
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 19
    admission.in_flight = 0
    admission.delay.stop()


async def test_before_an_unloaded_time_is_measured_the_bound_grows_by_an_eighth() -> None:
    admission = _admission()
    admission.limit = 16
    _hold(admission, 16)
    _calls(admission, 30, 50 * MS)
    _refuse(admission, 10)
    assert admission.interval_ended(0.0005, busy=1.0)
    assert admission.limit == 18
    admission.in_flight = 0
    admission.delay.stop()


async def test_calls_slower_than_the_loop_can_explain_do_not_cut_the_bound() -> None:
    """A back-end slower than when the unloaded time was measured: the calls take 500 ms
    where the loop's delay (1 ms, at 32 awaits at most) explains 32 ms. No bound on this
    worker makes them faster; cutting it would only starve every other service."""
    admission = _admission()
    _hold(admission, 1)
    _calls(admission, 10, 10 * MS)
    admission.interval_ended(0.0002, busy=0.4)
    assert admission.unloaded == pytest.approx(10 * MS)
    admission.limit = 40
    _hold(admission, 39)
    _calls(admission, 10, 500 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 41  # not cut, and not held: grown by one as with refusals
    # The same calls at 30 ms, which the loop's 1 ms at each of 32 awaits can explain: cut.
    admission.in_flight = 41
    _calls(admission, 10, 30 * MS)
    _refuse(admission, 100)
    assert admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 20  # 41 x 15/30
    admission.in_flight = 0
    admission.delay.stop()


@pytest.mark.parametrize("tolerance", [0.5, 0.99])
def test_a_tolerance_under_one_is_refused(tolerance: float) -> None:
    with pytest.raises(ValueError, match="latency_tolerance"):
        AdmissionSettings(latency_tolerance=tolerance)


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 1.5, 4.0])
def test_a_tolerance_of_zero_or_at_least_one_is_taken(tolerance: float) -> None:
    assert AdmissionSettings(latency_tolerance=tolerance).latency_tolerance == tolerance
