"""The per-request metrics update the children's values directly; what /metrics renders must be
what prometheus_client's own ``inc`` and ``observe`` would have made of the same requests."""

from __future__ import annotations

from gateway.metrics import _BUCKETS, Metrics

DURATIONS = [0.0, 0.0004, 0.001, 0.0010001, 0.003, 0.0025, 0.2, 0.25, 7.5, 30.0, 45.0, 1e-9]


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_direct_updates_render_as_the_library_would() -> None:
    direct, public = Metrics(), Metrics()
    for index, seconds in enumerate(DURATIONS):
        status = 200 if index % 3 else 502
        outcome = "ok" if index % 2 else "error"
        direct.http_request("/api/v1/services/{service}/calls", "POST", status, seconds)
        direct.backend_call("svc", "sys-61", outcome, seconds)
        public.http_requests.labels("/api/v1/services/{service}/calls", "POST", str(status)).inc()
        public.http_latency.labels("/api/v1/services/{service}/calls", "POST").observe(seconds)
        public.backend_calls.labels("svc", "sys-61", outcome).inc()
        public.backend_latency.labels("svc", "sys-61", outcome).observe(seconds)
    rendered = _without_created(direct.render())
    assert rendered == _without_created(public.render())
    assert any('le="0.001"' in line for line in rendered)
    assert direct._backend[("svc", "sys-61", "ok")]._count is not None, "the direct path is used"


def test_every_bound_lands_in_its_own_bucket() -> None:
    direct, public = Metrics(), Metrics()
    for bound in _BUCKETS:
        for seconds in (bound, bound * 1.0000001, bound * 0.9999999):
            direct.backend_call("svc", "sys", "ok", seconds)
            public.backend_latency.labels("svc", "sys", "ok").observe(seconds)
            public.backend_calls.labels("svc", "sys", "ok").inc()
    assert _without_created(direct.render()) == _without_created(public.render())
