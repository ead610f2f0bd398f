"""Rate limits at the HTTP surface, over a real loopback server with a fake back-end.

A refused call is a 429 problem+json with Retry-After and the RateLimit fields, and nothing
else happens: the back-end is not called, no case is taken, no call is audited. What is not
/api (health, metrics, the OpenAPI document, admin) is never counted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port

from gateway.adapter import Adapter, SystemSpec
from gateway.app import create_app
from gateway.audit.store import iter_records
from gateway.http.keys import STATE
from gateway.ratelimit.config import RateLimitSettings
from gateway.settings import Settings, SystemSettings
from tests.subject_fixtures import TEST_SUBJECT_KEYS, person_key
from tests.unit.http.test_app import ID, ISSUER, OTHER_ID, Backend, auth, call_body, problem
from tests.unit.http.test_app import _settings as base_settings

CALLS = "/api/v1/services/degree-verification/calls"
POLICY = '"person";q=2;w=3600, "client";q=100;w=3600'


def limited(tmp_path: Path, **rate_limits: Any) -> Settings:
    settings = base_settings(tmp_path)
    limits = RateLimitSettings.model_validate(
        {"person": "2/hour", "client": "100/hour", **rate_limits}
    )
    return dataclasses.replace(
        settings, gateway=settings.gateway.model_copy(update={"rate_limits": limits})
    )


@pytest.fixture
async def client(tmp_path: Path, backend: Backend) -> AsyncIterator[TestClient[Any, Any]]:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        limited(tmp_path), verifier=ISSUER, open_adapter=open_adapter, subjects=TEST_SUBJECT_KEYS
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture
def backend() -> Backend:
    return Backend()


# Each person of these tests with an ID number of their own: a call names its caller's.
HOLDERS = {"p1": ID, "p2": OTHER_ID}
_HOLDER_OF: dict[str, str] = {}


def token(person: str, client_id: str = "dev-portal", level: str = "L2") -> str:
    holder = HOLDERS[person]
    issued = ISSUER.issue(f"sub-{person}", level, client_id=client_id, person=person_key(holder))
    _HOLDER_OF[issued] = holder
    return issued


async def call(client: TestClient[Any, Any], who: str) -> Any:
    data = {"holder_id": _HOLDER_OF[who]}
    return await client.post(CALLS, json=call_body(data=data), headers=auth(who))


async def test_a_spent_budget_is_a_429_problem_and_the_backend_sees_nothing(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    citizen = token("p1")
    for _ in range(2):
        allowed = await call(client, citizen)
        assert allowed.status == 200, await allowed.text()
        assert allowed.headers["RateLimit-Policy"] == POLICY
        assert "RateLimit" not in allowed.headers
    refused = await call(client, citizen)
    body = await problem(refused, 429, "client.rate_limited")
    assert body["policy"] == "person"
    assert body["type"].endswith("/client.rate_limited")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 3600
    assert refused.headers["RateLimit"] == f'"person";r=0;t={retry_after}'
    assert refused.headers["RateLimit-Policy"] == POLICY
    assert len(backend.adapter.calls) == 2
    # Another person through the same portal is not held back.
    assert (await call(client, token("p2"))).status == 200
    assert len(backend.adapter.calls) == 3

    # No record of the refused call in the audit trail; the allowed ones are there.
    state = client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    texts = [r.text async for r in iter_records(state.audit_store, "gw-1")]
    assert not [t for t in texts if refused.headers["X-Request-ID"] in t]
    assert [t for t in texts if allowed.headers["X-Request-ID"] in t]

    metrics = await (await client.get("/metrics")).text()
    assert 'tongban_rate_limited_total{budget="person",client="dev-portal"} 1.0' in metrics
    assert "tongban_rate_limit_unchecked_total 0.0" in metrics


async def test_a_refused_case_submission_is_never_read(client: TestClient[Any, Any]) -> None:
    citizen = token("p1")
    for _ in range(2):
        assert (await client.get("/api/v1/services", headers=auth(citizen))).status == 200
    # Not even a 400/404 for the empty body: the handler never ran.
    response = await client.post(
        "/api/v1/cases", json={}, headers={**auth(citizen), "Idempotency-Key": "k-0000001"}
    )
    await problem(response, 429, "client.rate_limited")


async def test_error_answers_of_counted_calls_carry_the_policy(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/api/v1/services/nope", headers=auth(token("p1")))
    await problem(response, 404, "client.unknown_service")
    assert response.headers["RateLimit-Policy"] == POLICY
    # A refused token is not counted: it never got a principal.
    unauthenticated = await client.get("/api/v1/services")
    assert "RateLimit-Policy" not in unauthenticated.headers


async def test_what_is_not_api_is_not_counted(client: TestClient[Any, Any]) -> None:
    citizen = token("p1", level="L2")
    for _ in range(2):
        assert (await client.get("/api/v1/services", headers=auth(citizen))).status == 200
    await problem(
        await client.get("/api/v1/services", headers=auth(citizen)), 429, "client.rate_limited"
    )
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        for _ in range(3):
            response = await client.get(path, headers=auth(citizen))
            assert response.status == 200, path
            assert "RateLimit-Policy" not in response.headers
    # Admin checks its own token and role: a 403 here, never a 429.
    admin = await client.get("/admin/audit", headers=auth(citizen))
    await problem(admin, 403, "client.forbidden")
    assert "RateLimit-Policy" not in admin.headers


async def test_a_machine_client_draws_on_its_client_budget_only(
    tmp_path: Path, backend: Backend
) -> None:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        limited(tmp_path, person="1/hour", client="3/hour"),
        verifier=ISSUER,
        open_adapter=open_adapter,
    )
    system = ISSUER.issue("system-a", "system", client_id="system-a")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        statuses = []
        for _ in range(4):
            response = await client.get("/api/v1/services", headers=auth(system))
            statuses.append(response.status)
        assert statuses == [200, 200, 200, 429]
        assert response.headers["RateLimit-Policy"] == '"client";q=3;w=3600'
        body = await problem(response, 429, "client.rate_limited")
        assert body["policy"] == "client"


async def test_an_unreachable_redis_lets_calls_through_and_is_counted(
    tmp_path: Path, backend: Backend
) -> None:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    down = f"redis://127.0.0.1:{unused_port()}/0"
    settings = limited(tmp_path, person="1/hour", store="redis", redis_url=down)
    app = create_app(
        settings, verifier=ISSUER, open_adapter=open_adapter, subjects=TEST_SUBJECT_KEYS
    )
    citizen = token("p1")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for _ in range(3):
            response = await call(client, citizen)
            assert response.status == 200, await response.text()
            assert response.headers["RateLimit-Policy"].startswith('"person";q=1;w=3600')
        assert len(backend.adapter.calls) == 3
        metrics = await (await client.get("/metrics")).text()
        assert "tongban_rate_limit_unchecked_total 3.0" in metrics
        ready = await (await client.get("/readyz")).json()
        assert ready["stores"]["rate_limits"] == {
            "ready": True,
            "store": "redis",
            "state": "unchecked",
        }


async def test_openapi_documents_the_429_on_every_limited_operation(
    client: TestClient[Any, Any],
) -> None:
    spec = await (await client.get("/openapi.json")).json()
    limited_ops = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if path.startswith("/api/") and "security" in operation:
                limited_ops.append((method, path))
                assert "429" in responses, (method, path)
                assert set(responses["429"]["headers"]) == {
                    "Retry-After",
                    "RateLimit",
                    "RateLimit-Policy",
                }
                ok = next(r for s, r in responses.items() if s.startswith("2"))
                assert "RateLimit-Policy" in ok["headers"]
            else:
                assert "429" not in responses, (method, path)
    assert ("post", "/api/v1/cases") in limited_ops
    assert ("get", "/api/v1/me/access-log") in limited_ops
    assert not [p for _, p in limited_ops if re.match(r"^/api/v1/callbacks/", p)]
