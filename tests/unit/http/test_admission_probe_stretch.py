"""The queue-delay probe stretches its period while the loop sleeps, and keeps its mean.

``QueueDelay.sample`` is driven with given times (the monotonic clock and the loop thread's
CPU time at each tick): no timer and no sleep, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import pytest

from gateway.http.admission import _PROBE_EVERY, _STRETCH_MOST, Admission, QueueDelay
from gateway.settings import AdmissionSettings


class _Probe:
    """A probe whose ticks are given: each runs ``late`` seconds after it was due, the loop's
    thread on the CPU for ``share`` of the time since the last one."""

    def __init__(self, *, interval_ms: float = 100.0, in_flight: int = 1) -> None:
        settings = AdmissionSettings.model_validate(
            {"queue_delay_target_ms": 50, "queue_delay_interval_ms": interval_ms}
        )
        self.admission = Admission(settings, 2048)
        self.admission.in_flight = in_flight
        self.delay: QueueDelay = self.admission.delay
        self.now = self.cpu = 0.0
        self.delay._new_window(0.0, 0.0)
        self.delay._last_now = self.delay._last_cpu = 0.0
        self.periods: list[int] = []
        """The stretch each tick was armed with."""

    def tick(self, late: float, share: float) -> bool:
        stretch = self.delay._stretch
        self.periods.append(stretch)
        due = self.now + stretch * _PROBE_EVERY
        self.delay._due = due
        now = due + late
        self.cpu += (now - self.now) * share
        self.now = now
        return self.delay.sample(now, self.cpu)


def test_a_sleeping_loop_is_probed_ever_more_rarely_and_a_busy_one_every_period() -> None:
    probe = _Probe(interval_ms=1000)
    for _ in range(6):
        assert probe.tick(0.0, share=0.1)  # the loop slept most of each period
    assert probe.periods == [1, 2, 4, 8, _STRETCH_MOST, _STRETCH_MOST]
    assert probe.tick(0.002, share=0.95)  # busy: the next tick comes after one period again
    assert probe.delay._stretch == 1
    assert probe.tick(0.002, share=0.95)
    assert probe.delay._stretch == 1


def test_a_stretched_period_ends_by_the_interval_s_end() -> None:
    probe = _Probe(interval_ms=30)  # six periods an interval
    for _ in range(3):
        probe.tick(0.0, share=0.0)
    # 5 ms, then 10 ms: 15 ms in, 15 ms left, so three periods rather than four.
    assert probe.periods == [1, 2, 3]
    assert probe.now == pytest.approx(0.030)
    assert probe.delay.last == 0.0  # the interval ended at that tick, on time
    assert probe.delay._window_end == pytest.approx(0.060)


def test_a_stretched_sample_counts_as_the_periods_it_spans() -> None:
    """The mean over an interval is per period of probing, as when every period had a tick:
    a quiet stretch of seven periods then a busy, late one weigh 7 : 1."""
    probe = _Probe(interval_ms=1000)
    probe.tick(0.0, share=0.0)  # 1 period
    probe.tick(0.0, share=0.0)  # 2
    probe.tick(0.0, share=0.0)  # 4
    probe.tick(0.008, share=1.0)  # 8 periods, 8 ms late
    assert probe.delay._samples == 15
    assert probe.delay._sum == pytest.approx(0.008 * 8)


def test_without_a_stretch_the_mean_is_that_of_every_tick() -> None:
    probe = _Probe(interval_ms=20)
    lates = [0.004, 0.002, 0.006]
    for late in lates:
        assert probe.tick(late, share=1.0)
    assert probe.periods == [1, 1, 1]
    # The third tick is 27 ms in: past the interval's end, its mean is the plain mean.
    assert probe.delay.last == pytest.approx(sum(lates) / len(lates))
    assert probe.delay.busy == pytest.approx(1.0)
    assert probe.delay._samples == 0  # a new interval began


def test_the_probe_stops_at_the_end_of_an_interval_with_nothing_in_flight() -> None:
    probe = _Probe(interval_ms=10, in_flight=0)
    assert probe.tick(0.0, share=0.0)
    assert not probe.tick(0.0, share=0.0)  # 10 ms: the interval ended, nothing in flight
    assert probe.delay.last == 0.0
