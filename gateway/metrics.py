"""Prometheus metrics of one gateway process, on a registry of its own (no global state).

The per-request helpers (``http_request``, ``backend_call``) keep the labelled children in a
dict: ``.labels()`` validates and locks on every call, and the label sets of a running gateway
are few (routes × methods × statuses; services × systems × outcomes), the same children
prometheus_client keeps for ever anyway.

Several workers (``serve --workers N``): the supervisor gives every worker the same
``PROMETHEUS_MULTIPROC_DIR``, so prometheus_client keeps each value in a per-process file there
and ``/metrics``, whichever worker answers it, sums the counters and histograms of all workers,
those of dead and replaced workers included (a total never goes back after a restart). The
breaker state is per worker (each has its own breakers): one series per live worker, with a
``pid`` label. Per-worker series without aggregation would make every scrape see only the
worker that answered it, and the totals jump between scrapes.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue

from gateway.breaker import BreakerState

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.http_requests = Counter(
            "tongban_http_requests_total",
            "HTTP requests served.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "tongban_http_request_duration_seconds",
            "HTTP request latency.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.backend_calls = Counter(
            "tongban_backend_calls_total",
            "Routed calls to provincial systems, by outcome.",
            ["service", "system", "outcome"],
            registry=self.registry,
        )
        self.backend_latency = Histogram(
            "tongban_backend_call_duration_seconds",
            "Routed call latency, retries included, by outcome.",
            ["service", "system", "outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "tongban_backend_retries_total",
            "Retries of calls to provincial systems.",
            ["system", "error_code"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "tongban_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["system"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.rate_limited = Counter(
            "tongban_rate_limited_total",
            "API calls refused with 429 by a rate limit, by client and budget (client / person).",
            ["client", "budget"],
            registry=self.registry,
        )
        self.rate_limit_unchecked = Counter(
            "tongban_rate_limit_unchecked_total",
            "API calls let through unchecked because the rate-limit store failed (fail open).",
            registry=self.registry,
        )
        self.overloaded = Counter(
            "tongban_overloaded_total",
            "Requests refused with 503 gateway.overloaded, by the bound that was reached "
            "(requests / queue_delay / body_bytes / connections).",
            ["bound"],
            registry=self.registry,
        )
        self._http: dict[tuple[str, str, int], _CountedAndTimed] = {}
        self._backend: dict[tuple[str, str, str], _CountedAndTimed] = {}
        self._overloaded: dict[str, Counter] = {}

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One served request: counted by route, method and status; timed by route and method."""
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = _CountedAndTimed(
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
        floats = children._floats
        if floats is not None:  # ``children.add(seconds)``, in this frame
            count, total, buckets = floats
            count._value += 1
            total._value += seconds
            buckets[bisect_left(children._bounds, seconds)]._value += 1
        else:
            children.add(seconds)

    def backend_call(self, service: str, system: str, outcome: str, seconds: float) -> None:
        """One routed call, retries included: counted and timed by service, system, outcome."""
        key = (service, system, outcome)
        children = self._backend.get(key)
        if children is None:
            children = self._backend[key] = _CountedAndTimed(
                self.backend_calls.labels(service, system, outcome),
                self.backend_latency.labels(service, system, outcome),
            )
        floats = children._floats
        if floats is not None:  # ``children.add(seconds)``, in this frame
            count, total, buckets = floats
            count._value += 1
            total._value += seconds
            buckets[bisect_left(children._bounds, seconds)]._value += 1
        else:
            children.add(seconds)

    def retried(self, system: str, error_code: str) -> None:
        self.retries.labels(system, error_code).inc()

    def breaker_changed(self, system: str, state: BreakerState) -> None:
        self.breaker_state.labels(system).set(state.gauge)

    def refused_by_rate_limit(self, client: str, budget: str) -> None:
        self.rate_limited.labels(client, budget).inc()

    def refused_by_admission(self, bound: str) -> None:
        child = self._overloaded.get(bound)
        if child is None:  # under overload this runs thousands of times a second
            child = self._overloaded[bound] = self.overloaded.labels(bound)
        child.inc()

    def render(self) -> bytes:
        if self._shared_dir:
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self._shared_dir)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


class _Value(Protocol):
    """A value of prometheus_client (one process's, or a multiprocess file's)."""

    def inc(self, amount: float) -> None: ...


class _Float(Protocol):
    """prometheus_client's value of one process (``MutexValue``): a float and its lock."""

    _value: float


class _CountedAndTimed:
    """A labelled counter and histogram that every request (or routed call) updates: one
    ``inc`` and one ``observe``, done on the children's values directly.

    ``Counter.inc`` and ``Histogram.observe`` check on every call that the child is one (not
    the labelled parent) and that the amount is not negative, then scan the buckets in a
    Python loop; here the child is known, the amount is a duration, and the bucket is found by
    bisection (the first bound not below the amount: the bucket the loop stops at). The values
    are the same ones prometheus_client renders. Should a version of prometheus_client keep
    its values elsewhere, the public methods are used instead.

    A value of one process (``MutexValue``, no ``PROMETHEUS_MULTIPROC_DIR``) is added to
    without taking its lock: ``http_request`` and ``backend_call`` run on the event loop's
    thread only, and so does ``render`` (the /metrics handler), so no other thread adds to or
    reads these children; the lock's ``with`` is half the cost of an update. The additions are
    the ones ``inc`` makes (the same amounts, in the same order), so the values are the same.
    A value kept in a shared file (several workers) is added to through its ``inc``: the file
    is read by the other workers' scrapes."""

    __slots__ = ("_bounds", "_buckets", "_count", "_counter", "_floats", "_histogram", "_sum")

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self._counter = counter
        self._histogram = histogram
        count = getattr(counter, "_value", None)
        total = getattr(histogram, "_sum", None)
        buckets = getattr(histogram, "_buckets", None)
        bounds = getattr(histogram, "_upper_bounds", None)
        direct = (
            all(callable(getattr(v, "inc", None)) for v in (count, total, *(buckets or ())))
            and isinstance(bounds, list)
            and isinstance(buckets, list)
            and len(bounds) == len(buckets)
        )
        self._count: _Value | None = count if direct else None
        self._sum: _Value | None = total if direct else None
        self._buckets: list[_Value] = buckets if direct and buckets is not None else []
        self._bounds: list[float] = bounds if direct and bounds is not None else []
        unlocked = (
            direct
            and all(type(v) is MutexValue for v in (count, total, *self._buckets))
            and all(
                type(getattr(v, "_value", None)) is float for v in (count, total, *self._buckets)
            )
        )
        self._floats: tuple[_Float, _Float, list[_Float]] | None = (
            (count, total, buckets) if unlocked and buckets is not None else None  # type: ignore[assignment]
        )

    def add(self, seconds: float) -> None:
        """One more, that took ``seconds`` (a duration: not negative, not NaN)."""
        floats = self._floats
        if floats is not None:  # what MutexValue.inc adds, without its lock: see the class
            count, total, buckets = floats
            count._value += 1
            total._value += seconds
            buckets[bisect_left(self._bounds, seconds)]._value += 1
            return
        if self._count is None or self._sum is None:
            self._counter.inc()
            self._histogram.observe(seconds)
            return
        self._count.inc(1)
        self._sum.inc(seconds)
        self._buckets[bisect_left(self._bounds, seconds)].inc(1)
