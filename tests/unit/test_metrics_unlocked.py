"""The per-request metrics of one process added to without the values' locks: what /metrics
renders (names, labels, types, values, the float sums to the last bit) is what
prometheus_client's own ``inc`` and ``observe`` make of the same requests; values kept in the
workers' shared files are still added to through their ``inc``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import _BUCKETS, Metrics

ROUTES = ("/api/v1/services/{service}/calls", "/api/v1/cases", "unmatched")


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _drive(public: Metrics | None, direct: Metrics | None, seed: int, calls: int) -> None:
    draw = random.Random(seed)
    for _ in range(calls):
        route = draw.choice(ROUTES)
        status = draw.choice((200, 200, 200, 400, 502))
        outcome = draw.choice(("ok", "ok", "error", "refused"))
        seconds = draw.choice(
            (draw.random() * 0.05, draw.choice(_BUCKETS), draw.expovariate(3.0), 0.0, 1e-7)
        )
        if direct is not None:
            direct.http_request(route, "POST", status, seconds)
            direct.backend_call("svc", "sys-61", outcome, seconds * 0.9)
        if public is None:
            continue
        public.http_requests.labels(route, "POST", str(status)).inc()
        public.http_latency.labels(route, "POST").observe(seconds)
        public.backend_calls.labels("svc", "sys-61", outcome).inc()
        public.backend_latency.labels("svc", "sys-61", outcome).observe(seconds * 0.9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_what_renders_is_what_the_library_would_render(seed: int) -> None:
    direct, public = Metrics(), Metrics()
    _drive(public, direct, seed, 3_000)
    rendered = _without_created(direct.render())
    assert rendered == _without_created(public.render())
    assert any(line.startswith("tongban_http_request_duration_seconds_sum") for line in rendered)
    assert all(children._floats is not None for children in direct._http.values())
    assert all(children._floats is not None for children in direct._backend.values())
    for route in ROUTES:
        labels = {"route": route, "method": "POST"}
        name = "tongban_http_request_duration_seconds_sum"
        one = direct.registry.get_sample_value(name, labels)
        other = public.registry.get_sample_value(name, labels)
        assert one == other  # exactly: the same float additions in the same order


def test_the_value_types_and_help_are_unchanged() -> None:
    direct, public = Metrics(), Metrics()
    _drive(public, direct, 4, 10)
    kinds = [line for line in direct.render().decode().splitlines() if line.startswith("#")]
    assert kinds == [line for line in public.render().decode().splitlines() if line.startswith("#")]
    assert "# TYPE tongban_http_requests_total counter" in kinds
    assert "# TYPE tongban_backend_call_duration_seconds histogram" in kinds


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counters' and histograms' samples, but the creation times (not kept in files)."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_shared_files_are_added_to_through_their_inc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = Metrics()
    _drive(public, None, 5, 200)
    shared_value = values.MultiProcessValue(lambda: 4242)  # type: ignore[no-untyped-call]
    monkeypatch.setattr(values, "ValueClass", shared_value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    direct = Metrics()
    _drive(None, direct, 5, 200)
    assert direct._http
    assert all(children._floats is None for children in direct._http.values())
    assert all(children._count is not None for children in direct._http.values())
    assert list(tmp_path.iterdir())  # the values are in the shared files
    shared = _samples(direct.render())
    assert shared == _samples(public.render())
    assert any(name == "tongban_http_requests_total" for name, _ in shared)
