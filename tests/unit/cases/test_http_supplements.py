"""POST /api/v1/cases/{id}/supplements (补齐补正) over loopback with fake provinces: what GET shows
is missing, the receipt, the refusals with their stable codes, and every answer checked against
the endpoint's own OpenAPI description."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from gateway.adapter import Adapter, FakeAdapter, SystemSpec
from gateway.app import create_app
from gateway.cases.config import CallbackSystem, CaseSettings, DeliverySettings
from gateway.cases.model import supplement_key
from gateway.settings import SystemSettings
from tests.unit.cases.catalog_fixtures import FakeProvince, settings
from tests.unit.cases.test_http_cases import (
    CITIZEN,
    CLERK,
    ISSUER,
    KEY,
    OPERATOR,
    OTHER,
    Api,
    application,
)

PHOTO = {"code": "photo", "ref": "urn:upload:photo-2", "digest": "sha256:" + "d" * 64}
ASKS = {"materials": ["photo"], "message": "照片不清晰", "deadline": "2026-12-10"}
SUPPLEMENTS = "/api/v1/cases/{}/supplements"


@dataclasses.dataclass
class Described(Api):
    """The API, with each answer checked against /openapi.json."""

    openapi: dict[str, Any] = dataclasses.field(default_factory=dict)

    def conforms(self, path: str, method: str, status: int, body: Any) -> None:
        responses = self.openapi["paths"][path][method]["responses"]
        assert str(status) in responses, f"{status} is not described for {method} {path}"
        content = responses[str(status)]["content"]
        (schema,) = (c["schema"] for c in content.values())
        validator = Draft202012Validator({**schema, "components": self.openapi["components"]})
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (path, status, errors)

    async def supply(
        self, case_id: str, body: Any, token: str = CITIZEN, key: str | None = "supp-00000001"
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        response = await self.client.post(SUPPLEMENTS.format(case_id), json=body, headers=headers)
        answer = await response.json(content_type=None)
        self.conforms("/api/v1/cases/{case_id}/supplements", "post", response.status, answer)
        return response.status, answer, dict(response.headers)

    async def show(self, case_id: str, token: str = CITIZEN) -> dict[str, Any]:
        status, case = await self.get(f"/api/v1/cases/{case_id}", token)
        self.conforms("/api/v1/cases/{case_id}", "get", status, case)
        return dict(case)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Described]:
    config = settings(tmp_path)
    cases = CaseSettings(
        callbacks={"sys-61": CallbackSystem(secret=SecretStr(KEY.decode()))},
        delivery=DeliverySettings(
            max_attempts=2, initial_backoff=0.01, jitter=0, poll_interval=0.02
        ),
    )
    config = dataclasses.replace(config, gateway=config.gateway.model_copy(update={"cases": cases}))
    fakes = {p: FakeProvince(p, answer="SUP", asks=dict(ASKS)) for p in ("61", "62")}

    async def opener(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return FakeAdapter(fakes[system.province].handle)

    app = create_app(config, verifier=ISSUER, open_adapter=opener)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        openapi = await (await client.get("/openapi.json")).json()
        yield Described(client, fakes, openapi)


async def waiting_case(api: Described, token: str = CITIZEN, **extra: Any) -> str:
    status, receipt = await api.post(
        "/api/v1/cases", application(**extra), token, **{"Idempotency-Key": "apply-0000001"}
    )
    assert status == 202, receipt
    await api.until(receipt["case_id"], "supplement_requested", token)
    return str(receipt["case_id"])


async def test_get_shows_what_is_missing_and_a_supplement_is_taken_in(api: Described) -> None:
    case_id = await waiting_case(api)
    case = await api.show(case_id)
    assert case["parts"][0]["supplement_request"] == {
        **ASKS,
        "requested_at": case["parts"][0]["supplement_request"]["requested_at"],
    }
    assert case["supplements"] == []

    status, receipt, headers = await api.supply(case_id, {"materials": [PHOTO], "note": "新照片"})
    assert status == 202, receipt
    assert headers["Idempotent-Replayed"] == "false"
    assert headers["Location"].endswith(f"/api/v1/cases/{case_id}")
    assert receipt["case_id"] == case_id
    assert receipt["supplement"]["sequence"] == 1
    assert receipt["supplement"]["materials"] == [PHOTO]
    status, again, headers = await api.supply(case_id, {"note": "新照片", "materials": [PHOTO]})
    assert (status, headers["Idempotent-Replayed"]) == (202, "true")
    assert again["supplement"] == receipt["supplement"]

    case = await api.until(case_id, "processing")
    assert case["supplements"][0]["materials"] == [PHOTO]
    assert case["supplements"][0]["note"] == "新照片"
    (sent,) = api.fakes["61"].supplement_sends
    assert sent.context.idempotency_key == supplement_key(case_id, 0, 1)
    await api.show(case_id)


async def test_refusals_have_stable_codes(api: Described) -> None:
    status, receipt = await api.post(
        "/api/v1/cases", application(), **{"Idempotency-Key": "apply-0000001"}
    )
    case_id = receipt["case_id"]
    await api.until(case_id, "supplement_requested")
    cases: list[tuple[dict[str, Any], str, str | None, int, str]] = [
        ({"materials": [PHOTO]}, CITIZEN, None, 400, "client.idempotency_key_missing"),
        ({"materials": [PHOTO]}, OTHER, "supp-00000001", 404, "client.case_not_found"),
        ({"materials": [PHOTO]}, OPERATOR, "supp-00000001", 403, "client.forbidden"),
        (
            {"materials": [{**PHOTO, "digest": "sha256:nope"}]},
            CITIZEN,
            "supp-00000001",
            422,
            "client.materials_invalid",
        ),
        (
            {"materials": [{**PHOTO, "code": "id-card"}]},
            CITIZEN,
            "supp-00000001",
            422,
            "client.materials_invalid",
        ),
        (
            {"materials": [PHOTO], "extra": 1},
            CITIZEN,
            "supp-00000001",
            422,
            "client.validation_failed",
        ),
    ]
    for body, token, key, code_status, code in cases:
        status, problem, headers = await api.supply(case_id, body, token, key)
        assert (status, problem["code"]) == (code_status, code), problem
        assert headers["Content-Type"].startswith("application/problem+json")
    status, problem, _ = await api.supply("TB63NOSUCHCASE", {"materials": [PHOTO]})
    assert (status, problem["code"]) == (404, "client.case_not_found")

    status, _, _ = await api.supply(case_id, {"materials": [PHOTO]})
    assert status == 202
    status, problem, _ = await api.supply(case_id, {"materials": [PHOTO], "note": "other"})
    assert (status, problem["code"]) == (409, "client.idempotency_key_reused")
    status, problem, _ = await api.supply(case_id, {"materials": [PHOTO]}, key="supp-00000002")
    assert (status, problem["code"]) == (409, "client.case_not_awaiting_supplement")
    response = await api.client.post(
        SUPPLEMENTS.format(case_id),
        data=b"materials",
        headers={"Authorization": f"Bearer {CITIZEN}", "Idempotency-Key": "supp-00000003"},
    )
    assert response.status == 415
    case = await api.show(case_id)
    assert len(case["supplements"]) == 1


async def test_the_clerk_answers_for_a_window_case_and_the_citizen_may_too(
    api: Described,
) -> None:
    body = {
        "mode": "proxy",
        "receiving_province": "61",
        "handling_province": "62",
        "originals_check": {"checked": True},
    }
    case_id = await waiting_case(api, CLERK, **body)
    citizen = ISSUER.issue("citizen-c", "L3", client_id="portal-63")
    await api.show(case_id, citizen)
    status, receipt, _ = await api.supply(case_id, {"materials": [PHOTO]}, CLERK)
    assert status == 202, receipt
    case = await api.until(case_id, "processing", CLERK)
    assert [t["to"] for t in case["timeline"]][-3:] == ["received", "forwarded", "processing"]
    assert case["supplements"][0]["actor"] == "clerk-7"
    sent = api.fakes["62"].supplement_sends[0]
    assert (sent.context.actor, sent.context.principal) == ("clerk-7", "citizen-c")


async def test_a_callback_request_shows_and_is_answered(api: Described) -> None:
    api.fakes["61"].answer = "WIP"
    status, receipt = await api.post(
        "/api/v1/cases", application(), **{"Idempotency-Key": "apply-0000002"}
    )
    case_id = receipt["case_id"]
    await api.until(case_id, "processing")
    status, answer = await api.callback(
        {
            "sequence": 1,
            "case_id": case_id,
            "status": "supplement_requested",
            "supplement": {"materials": ["photo"], "message": "请补充照片"},
        },
        stamp=time.time(),
    )
    assert (status, answer["status"]) == (200, "applied")
    case = await api.show(case_id)
    assert case["status"] == "supplement_requested"
    request = case["parts"][0]["supplement_request"]
    assert (request["materials"], request["message"], request["deadline"]) == (
        ["photo"],
        "请补充照片",
        None,
    )
    status, _, _ = await api.supply(case_id, {"materials": [PHOTO]})
    assert status == 202
    await api.until(case_id, "processing")
