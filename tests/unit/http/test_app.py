"""The HTTP surface over a real loopback server, with fake adapters behind the routes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.adapter import Adapter, Call, FakeAdapter, Reply, SystemSpec
from gateway.app import create_app
from gateway.errors import BackendServerError
from gateway.identity.devtokens import DevTokenIssuer
from gateway.logs import configure_logging, info_enabled
from gateway.settings import (
    GatewaySettings,
    RouteSettings,
    ServiceSettings,
    Settings,
    SystemSettings,
)
from tests.subject_fixtures import TEST_SUBJECT_KEYS, person_key

ISSUER = DevTokenIssuer(b"k" * 32)
ID = "610102199001011234"
OTHER_ID = "610102199202021236"
L2 = ISSUER.issue("citizen-a", "L2", person=person_key(ID))
L1 = ISSUER.issue("citizen-b", "L1", person=person_key(ID))


def _settings(tmp_path: Path) -> Settings:
    system = SystemSettings.model_validate(
        {
            "name": {"zh": "学历核验", "en": "Degree check"},
            "province": "61",
            "protocol": "rest",
            "address": "http://127.0.0.1:9",
            "retry": {"max_attempts": 2, "initial_backoff": 0, "jitter": 0},
        }
    )
    service = ServiceSettings.model_validate(
        {
            "name": {"zh": "学历学位证书核验", "en": "Degree verification"},
            "modes": ["query"],
            "min_level": "L2",
            "consent_required": True,
            "subject": [{"person": "holder_id"}],
            "operations": {
                "verify": {
                    "name": {"zh": "核验", "en": "Verify"},
                    "kind": "verify",
                    "retry": "safe",
                    "input_schema": {
                        "type": "object",
                        "required": ["holder_id"],
                        "additionalProperties": False,
                        "properties": {
                            "holder_id": {"type": "string", "pattern": "^[0-9]{17}[0-9X]$"}
                        },
                    },
                }
            },
        }
    )
    route = RouteSettings.model_validate(
        {
            "service": "degree-verification",
            "operation": "verify",
            "receiving": ["63"],
            "handling": "61",
            "system": "degree",
            "system_operation": "Verify",
            "request": {"zjhm": "holder_id"},
            "response": {"valid": "result.yxbz"},
        }
    )
    return Settings(
        tmp_path,
        GatewaySettings.model_validate({"server": {"max_body_bytes": 2048}}),
        {"degree": system},
        {"degree-verification": service},
        (route,),
    )


class Backend:
    def __init__(self) -> None:
        self.fail_with: Exception | None = None
        self.adapter = FakeAdapter(self.handle)

    def handle(self, call: Call) -> Reply:
        if self.fail_with is not None:
            raise self.fail_with
        return Reply({"result": {"yxbz": call.payload["zjhm"].endswith("4")}})


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
async def client(tmp_path: Path, backend: Backend) -> AsyncIterator[TestClient[Any, Any]]:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        _settings(tmp_path),
        verifier=ISSUER,
        open_adapter=open_adapter,
        subjects=TEST_SUBJECT_KEYS,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client
    assert backend.adapter.closed


def auth(token: str = L2) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "hiring check",
        "authorisation_ref": "AUTH-1",
        "data": {"holder_id": ID},
    }
    body.update(overrides)
    return body


async def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


async def test_health_and_request_id_echo(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.status == 200
    assert response.headers["X-Request-ID"] == "abc-123"


async def test_catalogue_needs_a_token(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/v1/services")
    await problem(response, 401, "client.unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await client.get("/api/v1/services", headers=auth("dev.forged.token"))
    await problem(response, 401, "client.unauthenticated")


async def test_catalogue_and_guide(client: TestClient[Any, Any]) -> None:
    listing = await (await client.get("/api/v1/services", headers=auth())).json()
    assert [s["code"] for s in listing["services"]] == ["degree-verification"]
    assert listing["services"][0]["handling_provinces"] == ["61"]
    guide = await (await client.get("/api/v1/services/degree-verification", headers=auth())).json()
    assert guide["min_level"] == "L2"
    assert guide["levels"] == ["Counter", "L2", "L3"]  # the set min_level admits
    assert guide["operations"]["verify"]["levels"] == ["Counter", "L2", "L3"]
    assert guide["operations"]["verify"]["subject"] == [{"person": "holder_id"}]
    assert listing["services"][0]["levels"] == ["Counter", "L2", "L3"]
    assert guide["consent_required"] is True
    assert guide["agreements"] == [
        {
            "operation": "verify",
            "receiving": "63",
            "handling": "61",
            "receiving_name": "青海",
            "handling_name": "陕西",
        }
    ]
    await problem(
        await client.get("/api/v1/services/nope", headers=auth()), 404, "client.unknown_service"
    )


async def test_routed_call_maps_both_ways_and_forwards_context(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    response = await client.post(
        "/api/v1/services/degree-verification/calls", json=call_body(), headers=auth()
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["data"] == {"valid": True}
    assert body["system"] == "degree"
    assert body["attempts"] == 1
    sent = backend.adapter.calls[0]
    assert sent.operation == "Verify"
    assert sent.payload == {"zjhm": ID}
    assert sent.context.purpose == "hiring check"
    assert sent.context.authorisation_ref is None  # the holder herself: no grant, none named
    assert sent.context.subjects == (person_key(ID),)
    assert sent.context.principal == "citizen-a"
    assert sent.context.request_id == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": b"{}", "headers": {"Content-Type": "text/plain"}},
            415,
            "client.unsupported_media_type",
        ),
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "client.malformed_json",
        ),
        (
            {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
            400,
            "client.invalid_request",
        ),
        (
            {
                "data": b'{"x": "' + b"a" * 4096 + b'"}',
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "client.payload_too_large",
        ),
        ({"json": {"purpose": "x"}}, 422, "client.validation_failed"),
        ({"json": call_body(data={"holder_id": "123"})}, 422, "client.validation_failed"),
        ({"json": call_body(receiving_province="32")}, 422, "client.no_agreement"),
        ({"json": call_body(operation="other")}, 404, "client.unknown_operation"),
        ({"json": call_body(data={"holder_id": OTHER_ID})}, 403, "client.not_data_subject"),
    ],
)
async def test_bad_input_gets_a_stable_problem(
    client: TestClient[Any, Any], backend: Backend, kwargs: dict[str, Any], status: int, code: str
) -> None:
    headers = {**auth(), **kwargs.pop("headers", {})}
    response = await client.post(
        "/api/v1/services/degree-verification/calls", headers=headers, **kwargs
    )
    body = await problem(response, status, code)
    assert ID not in str(body)
    assert backend.adapter.calls == []


async def test_level_too_low_names_the_level_needed(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    response = await client.post(
        "/api/v1/services/degree-verification/calls", json=call_body(), headers=auth(L1)
    )
    body = await problem(response, 403, "client.insufficient_level")
    assert body["required_level"] == "L2"
    assert body["current_level"] == "L1"
    assert backend.adapter.calls == []


async def test_backend_failure_is_a_safe_problem_and_counted(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.fail_with = BackendServerError("HTTP 500 from system degree", reached_backend=True)
    response = await client.post(
        "/api/v1/services/degree-verification/calls", json=call_body(), headers=auth()
    )
    await problem(response, 502, "backend.server_error")
    assert len(backend.adapter.calls) == 2  # safe operation: retried up to the cap
    metrics = await (await client.get("/metrics")).text()
    assert (
        'tongban_backend_calls_total{outcome="error",service="degree-verification",system="degree"} 1.0'
        in metrics
    )
    assert (
        'tongban_backend_retries_total{error_code="backend.server_error",system="degree"} 1.0'
        in metrics
    )


async def test_unexpected_error_is_internal_with_an_id(
    client: TestClient[Any, Any], backend: Backend
) -> None:
    backend.fail_with = RuntimeError("db password is hunter2")
    response = await client.post(
        "/api/v1/services/degree-verification/calls", json=call_body(), headers=auth()
    )
    body = await problem(response, 500, "gateway.internal")
    assert "hunter2" not in str(body)
    assert "Traceback" not in str(body)


async def test_unknown_path_and_method_are_problems(client: TestClient[Any, Any]) -> None:
    await problem(await client.get("/nowhere"), 404, "client.not_found")
    response = await client.delete("/api/v1/services", headers=auth())
    await problem(response, 405, "client.method_not_allowed")
    assert "GET" in response.headers["Allow"]


async def test_readiness_reports_each_breaker(client: TestClient[Any, Any]) -> None:
    body = await (await client.get("/readyz")).json()
    assert body["status"] == "ready"
    assert body["systems"] == {"degree": {"province": "61", "breaker": "closed"}}
    assert body["stores"]["audit"]["ready"] is True
    assert body["stores"]["audit"]["chain"] == "gw-1"


async def test_openapi_describes_every_route(client: TestClient[Any, Any]) -> None:
    spec = await (await client.get("/openapi.json")).json()
    app_paths = {r.resource.canonical for r in client.app.router.routes() if r.resource is not None}
    assert app_paths <= set(spec["paths"])


async def test_a_routed_call_leaves_one_access_line_and_its_counts(
    client: TestClient[Any, Any],
) -> None:
    """The layers that now run in one middleware still do their parts, in order: the access
    line carries what the token check, the handler and the problem renderer put in it."""
    with structlog.testing.capture_logs() as lines:
        ok = await client.post(
            "/api/v1/services/degree-verification/calls", json=call_body(), headers=auth()
        )
        refused = await client.post(
            "/api/v1/services/degree-verification/calls",
            json=call_body(),
            headers=auth("dev.forged.token"),
        )
    assert ok.status == 200
    await problem(refused, 401, "client.unauthenticated")
    access = [line for line in lines if line["event"] == "request_completed"]
    assert [(a["status"], a["route"]) for a in access] == [
        (200, "/api/v1/services/{service}/calls"),
        (401, "/api/v1/services/{service}/calls"),
    ]
    assert access[0]["client"] == "dev-portal"
    assert access[0]["outcome"] == "ok"
    assert access[1]["error_code"] == "client.unauthenticated"
    assert "client" not in access[1]
    assert ID not in str(lines), "the ID number in the call's data reaches no log line"
    metrics = (await (await client.get("/metrics")).read()).decode()
    assert (
        'tongban_http_requests_total{method="POST",route="/api/v1/services/{service}/calls",'
        'status="401"} 1.0'
    ) in metrics


async def test_a_redirect_raised_by_a_handler_goes_out_as_a_redirect(tmp_path: Path) -> None:
    """Not an error: the problem renderer lets a 3xx through, as aiohttp answers it."""

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/healthz")

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return Backend().adapter

    app = create_app(
        _settings(tmp_path), verifier=ISSUER, open_adapter=open_adapter, subjects=TEST_SUBJECT_KEYS
    )
    app.router.add_get("/moved", moved)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/moved", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/healthz"
        assert response.content_type != "application/problem+json"


def test_the_access_line_follows_the_configured_level() -> None:
    try:
        configure_logging("warning", "json", stream=io.BytesIO())
        assert not info_enabled()
        configure_logging("info", "json", stream=io.BytesIO())
        assert info_enabled()
    finally:
        configure_logging("info", "json", stream=io.BytesIO())
