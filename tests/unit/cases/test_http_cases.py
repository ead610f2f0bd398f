"""The case API over loopback with fake provinces: callbacks (HMAC, replay, order), admin replay,
the clerk's window intake and queue."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.adapter import Adapter, FakeAdapter, SystemSpec
from gateway.app import create_app
from gateway.cases.config import CallbackSystem, CaseSettings, DeliverySettings
from gateway.cases.model import delivery_key
from gateway.http.cases import CASES
from gateway.identity.devtokens import DevTokenIssuer
from gateway.settings import SystemSettings
from tests.unit.cases.catalog_fixtures import FakeProvince, settings, unavailable

ISSUER = DevTokenIssuer(b"t" * 32)
CITIZEN = ISSUER.issue("citizen-a", "L3", client_id="portal-63")
OTHER = ISSUER.issue("citizen-b", "L3", client_id="portal-63")
CLERK = ISSUER.issue(
    "citizen-c",
    "Counter",
    client_id="window-61",
    actor="clerk-7",
    actor_role="clerk",
    roles=["clerk"],
)
OPERATOR = ISSUER.issue("ops-1", "L3", roles=["operator"])
KEY = b"k" * 32
MATERIALS = [{"code": "id-card", "ref": "urn:elicence:1", "digest": "sha256:" + "b" * 64}]


@dataclasses.dataclass
class Api:
    client: TestClient[Any, Any]
    fakes: dict[str, FakeProvince]

    async def post(
        self, path: str, body: Any, token: str = CITIZEN, **headers: str
    ) -> tuple[int, Any]:
        response = await self.client.post(
            path, json=body, headers={"Authorization": f"Bearer {token}", **headers}
        )
        return response.status, await response.json(content_type=None)

    async def get(self, path: str, token: str = CITIZEN) -> tuple[int, Any]:
        response = await self.client.get(path, headers={"Authorization": f"Bearer {token}"})
        return response.status, await response.json(content_type=None)

    async def callback(
        self,
        body: dict[str, Any],
        *,
        key: bytes = KEY,
        stamp: float | None = None,
        timestamp: str | None = None,
    ) -> tuple[int, Any]:
        raw = orjson.dumps(body)
        if timestamp is None:
            timestamp = str(int(stamp if stamp is not None else time.time()))
        signature = hmac.new(key, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        response = await self.client.post(
            "/api/v1/callbacks/sys-61",
            data=raw,
            headers={
                "Content-Type": "application/json",
                "X-Tongban-Timestamp": timestamp,
                "X-Tongban-Signature": f"sha256={signature}",
            },
        )
        return response.status, await response.json(content_type=None)

    async def until(self, case_id: str, status: str, token: str = CITIZEN) -> dict[str, Any]:
        for _ in range(200):
            _, case = await self.get(f"/api/v1/cases/{case_id}", token)
            if case["status"] == status:
                return dict(case)
            await asyncio.sleep(0.02)
        raise AssertionError(case)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    config = settings(tmp_path)
    cases = CaseSettings(
        callbacks={"sys-61": CallbackSystem(secret=SecretStr(KEY.decode()))},
        delivery=DeliverySettings(
            max_attempts=2,
            initial_backoff=0.01,
            jitter=0,
            poll_interval=0.02,
            status_poll_interval=600,
        ),
    )
    config = dataclasses.replace(config, gateway=config.gateway.model_copy(update={"cases": cases}))
    fakes = {p: FakeProvince(p) for p in ("61", "62")}

    async def opener(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return FakeAdapter(fakes[system.province].handle)

    app = create_app(config, verifier=ISSUER, open_adapter=opener)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Api(client, fakes)


def application(**extra: Any) -> dict[str, Any]:
    return {
        "service": "filing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"n": 1},
        "materials": MATERIALS,
        **extra,
    }


async def test_callbacks_are_signed_idempotent_and_ordered(api: Api) -> None:
    status, receipt = await api.post(
        "/api/v1/cases", application(), **{"Idempotency-Key": "cb-000001"}
    )
    assert status == 202
    case_id = receipt["case_id"]
    await api.until(case_id, "processing")

    status, problem = await api.callback(
        {"sequence": 1, "case_id": case_id, "status": "done"}, key=b"x" * 32
    )
    assert (status, problem["code"]) == (401, "client.callback_refused")
    stale = time.time() - 3600
    status, _ = await api.callback(
        {"sequence": 1, "case_id": case_id, "status": "done"}, stamp=stale
    )
    assert status == 401

    status, answer = await api.callback({"sequence": 7, "case_id": case_id, "status": "processing"})
    assert (status, answer["status"]) == (200, "unchanged")
    status, answer = await api.callback({"sequence": 7, "case_id": case_id, "status": "done"})
    assert answer["status"] == "duplicate"
    status, answer = await api.callback({"sequence": 3, "case_id": case_id, "status": "done"})
    assert answer["status"] == "out_of_order"
    _, case = await api.get(f"/api/v1/cases/{case_id}")
    assert case["status"] == "processing"
    status, answer = await api.callback(
        {"sequence": 8, "case_id": case_id, "status": "done", "result": {"permit": "P-1"}}
    )
    assert answer["status"] == "applied"
    case = await api.until(case_id, "closed")
    assert case["parts"][0]["result"] == {"permit": "P-1"}


async def test_a_callback_timestamp_must_be_a_finite_number(api: Api) -> None:
    status, receipt = await api.post(
        "/api/v1/cases", application(), **{"Idempotency-Key": "cb-nan-0001"}
    )
    case_id = receipt["case_id"]
    await api.until(case_id, "processing")
    body = {"sequence": 1, "case_id": case_id, "status": "done"}
    # Correctly signed, yet no moment in time: NaN compares false with any window.
    for stamp in ("NaN", "nan", "-nan", "inf", "-Infinity", "1e999", " 1e3 ", "0x10"):
        status, problem = await api.callback(body, timestamp=stamp)
        assert (status, problem["code"]) == (401, "client.callback_refused"), stamp
    _, case = await api.get(f"/api/v1/cases/{case_id}")
    assert case["status"] == "processing"
    status, answer = await api.callback(body, timestamp=f"{time.time():.3f}")
    assert (status, answer["status"]) == (200, "applied")


async def test_dead_letters_are_listed_for_operators_and_replayed(api: Api) -> None:
    api.fakes["61"].fail_next = [unavailable(), unavailable()]
    status, receipt = await api.post(
        "/api/v1/cases", application(), **{"Idempotency-Key": "dl-000001"}
    )
    case_id = receipt["case_id"]
    await api.until(case_id, "dead_lettered")
    anonymous = await api.client.get("/admin/cases/dead-letters")
    assert anonymous.status == 401
    assert (await anonymous.json())["code"] == "client.unauthenticated"
    status, _ = await api.get("/admin/cases/dead-letters", CITIZEN)
    assert status == 403
    status, letters = await api.get("/admin/cases/dead-letters", OPERATOR)
    assert [(d["case_id"], d["reason"]) for d in letters["dead_letters"]] == [
        (case_id, "backend.unavailable")
    ]
    status, problem = await api.post("/admin/cases/NOPE/replay", {}, OPERATOR)
    assert status == 404
    status, _replayed = await api.post(f"/admin/cases/{case_id}/replay", {}, OPERATOR)
    assert status == 202
    await api.until(case_id, "processing")
    status, problem = await api.post(f"/admin/cases/{case_id}/replay", {}, OPERATOR)
    assert (status, problem["code"]) == (409, "client.case_not_replayable")
    keys = [c.context.idempotency_key for c in api.fakes["61"].sends]
    assert keys == [delivery_key(case_id, 0)] * 3


async def test_window_clerk_takes_in_a_proxy_case_and_sees_the_queue(api: Api) -> None:
    body = application(
        mode="proxy",
        receiving_province="61",
        handling_province="62",
        originals_check={"checked": True, "note": "身份证原件已核验"},
    )
    status, problem = await api.post(
        "/api/v1/cases", body, CITIZEN, **{"Idempotency-Key": "win-000001"}
    )
    assert (status, problem["code"]) == (403, "client.clerk_required")
    status, receipt = await api.post(
        "/api/v1/cases", body, CLERK, **{"Idempotency-Key": "win-000001"}
    )
    assert status == 202
    case = await api.until(receipt["case_id"], "processing", CLERK)
    assert [t["to"] for t in case["timeline"]][:3] == ["received", "originals_checked", "forwarded"]
    assert case["timeline"][1]["actor"] == "clerk-7"
    status, queue = await api.get("/api/v1/cases?queue=window", CLERK)
    assert [c["case_id"] for c in queue["cases"]] == [receipt["case_id"]]
    status, _ = await api.get("/api/v1/cases?queue=window", CITIZEN)
    assert status == 403
    status, _ = await api.get(f"/api/v1/cases/{receipt['case_id']}", OTHER)
    assert status == 404
    sent = api.fakes["62"].sends[0]
    assert (sent.context.actor, sent.context.principal) == ("clerk-7", "citizen-c")


async def test_readiness_includes_the_case_store(api: Api) -> None:
    response = await api.client.get("/readyz")
    body = await response.json()
    assert body["stores"]["cases"] == {"ready": True}
    assert api.client.app[CASES].worker is not None


async def test_a_queue_other_than_the_window_is_refused(api: Api) -> None:
    status, problem = await api.get("/api/v1/cases?queue=AAA")
    assert (status, problem["code"]) == (400, "client.invalid_request")
    status, answer = await api.get("/api/v1/cases")
    assert status == 200
    assert "cases" in answer
