"""Prometheus metrics of one gateway process, on a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.breaker import BreakerState

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        )

    def retried(self, system: str, error_code: str) -> None:
        self.retries.labels(system, error_code).inc()

    def breaker_changed(self, system: str, state: BreakerState) -> None:
        self.breaker_state.labels(system).set(state.gauge)

    def render(self) -> bytes:
        return generate_latest(self.registry)
