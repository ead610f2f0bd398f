"""补齐补正 through the real app and the demo provinces over loopback HTTP: a window takes S10
in for an intellectual disability, Qinghai asks for the guardianship certificate, the citizen
sees what is missing and supplies it (on the API and through the Qinghai portal's form), Qinghai
receives it exactly once though the POST is repeated and Qinghai is down once, decides, and the
case closes. The fixture ends with `tongban audit verify` on the trail the journey wrote."""

from __future__ import annotations

import asyncio
import copy
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.cases.model import supplement_key
from gateway.demo.backends import QINGHAI_GOV
from gateway.demo.cases import S10_CASE
from gateway.demo.portals import PortalSession, Tokens, build_portal_app, qinghai_portal
from gateway.demo.residents import SU_LANXIN
from gateway.http.keys import STATE
from tests.flows.conftest import Journey, audit_verify, demo_journey

GUARDIAN = {
    "code": "guardian-certificate",
    "ref": "urn:upload:61:guardian-0001",
    "digest": "sha256:" + "9" * 64,
}


@pytest.fixture
async def journey(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Journey]:
    """The demo journey with quick status polls, ending with the audit verifier."""
    async with demo_journey(tmp_path, monkeypatch, poll_quickly=True) as journey:
        journey.tokens["clerk"] = {
            "token": journey.issuer.issue(
                "demo-" + SU_LANXIN.key,  # 苏兰心, identified at the window
                "Counter",
                client_id="demo-window-shaanxi",
                actor="clerk-61-0007",
                actor_role="clerk",
                roles=["clerk"],
                person=journey.keys.person(SU_LANXIN.id_number).key,
            )
        }
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


async def post(
    journey: Journey, path: str, body: Any, token: str, key: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = journey.auth(token) | ({"Idempotency-Key": key} if key else {})
    response = await journey.client.post(path, json=body, headers=headers)
    return response.status, await response.json(content_type=None), dict(response.headers)


async def wait_for(journey: Journey, case_id: str, status: str, token: str) -> dict[str, Any]:
    case: dict[str, Any] = {}
    for _ in range(300):
        response = await journey.client.get(f"/api/v1/cases/{case_id}", headers=journey.auth(token))
        case = await response.json()
        if case["status"] == status:
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(f"case stuck at {case.get('status')}: {case.get('timeline')}")


async def take_in_s10(journey: Journey, key: str) -> str:
    """The window takes S10 in for an intellectual disability: Qinghai asks for material."""
    body = copy.deepcopy(S10_CASE[3])
    body["data"]["disability_category"] = "intellectual"
    status, receipt, _ = await post(journey, "/api/v1/cases", body, "clerk", key)
    assert status == 202, receipt
    return str(receipt["case_id"])


async def test_s10_supplement_requested_supplied_once_and_decided(
    journey: Journey, tmp_path: Path
) -> None:
    case_id = await take_in_s10(journey, "s10-supplement-0001")
    case = await wait_for(journey, case_id, "supplement_requested", "citizen-l2")
    asked = case["parts"][0]["supplement_request"]
    assert asked["materials"] == ["guardian-certificate"]
    assert "监护关系证明" in asked["message"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", asked["deadline"])
    url = f"/api/v1/cases/{case_id}/supplements"

    # Refusals first: each with its code, nothing taken.
    refusals: list[tuple[dict[str, Any], str, str | None, int, str]] = [
        ({"materials": [GUARDIAN]}, "citizen-l2", None, 400, "client.idempotency_key_missing"),
        ({"materials": [GUARDIAN]}, "citizen-l3", "supp-s10-0001", 404, "client.case_not_found"),
        (
            {"materials": [{**GUARDIAN, "digest": "sha256:" + "9" * 63}]},
            "citizen-l2",
            "supp-s10-0001",
            422,
            "client.materials_invalid",
        ),
        (
            {"materials": [{**GUARDIAN, "code": "photo"}]},
            "citizen-l2",
            "supp-s10-0001",
            422,
            "client.materials_invalid",
        ),
    ]
    for body, token, key, status, code in refusals:
        got, problem, headers = await post(journey, url, body, token, key)
        assert (got, problem["code"]) == (status, code), problem
        assert headers["Content-Type"].startswith("application/problem+json")

    qinghai = journey.backends.recorder(QINGHAI_GOV)
    qinghai.trouble.fail_next = 1  # Qinghai is down for the supplement's first send
    qinghai.trouble.retry_after = None
    supplement = {"materials": [GUARDIAN], "note": "监护人：父亲"}
    status, receipt, headers = await post(journey, url, supplement, "citizen-l2", "supp-s10-0001")
    assert status == 202, receipt
    assert headers["Idempotent-Replayed"] == "false"
    assert receipt["supplement"]["sequence"] == 1
    status, again, headers = await post(journey, url, supplement, "citizen-l2", "supp-s10-0001")
    assert (status, headers["Idempotent-Replayed"]) == (202, "true")
    assert again["supplement"] == receipt["supplement"]
    status, problem, _ = await post(
        journey, url, {**supplement, "note": "另一份"}, "citizen-l2", "supp-s10-0001"
    )
    assert (status, problem["code"]) == (409, "client.idempotency_key_reused")

    case = await wait_for(journey, case_id, "closed", "citizen-l2")
    office = journey.backends.offices[QINGHAI_GOV]
    (application,) = office.applications.values()
    key = supplement_key(case_id, 0, 1)
    assert application.supplements == [key], "Qinghai took the supplement exactly once"
    sends = qinghai.for_operation("supplement_application")
    assert [r.idempotency_key for r in sends] == [key] * len(sends)
    assert (sends[0].status, sends[-1].status) == (503, 201), "down once, then taken"
    assert sends[-1].context["case_id"] == case_id
    assert case["parts"][0]["result"]["result"]["document"].startswith("残疾人证")
    assert case["supplements"][0]["materials"] == [GUARDIAN]
    steps = [t["to"] for t in case["timeline"]]
    assert steps[:3] == ["received", "originals_checked", "supplement_requested"]
    assert steps[3:5] == ["received", "forwarded"]
    assert steps[-2:] == ["result_delivered", "closed"]

    # Too late now: the case no longer waits for anything.
    status, problem, _ = await post(journey, url, supplement, "citizen-l2", "supp-s10-0002")
    assert (status, problem["code"]) == (409, "client.case_not_awaiting_supplement")

    events = [
        orjson.loads(line) for line in (tmp_path / "case-events.jsonl").read_bytes().splitlines()
    ]
    types = [e["type"] for e in events if e["case_id"] == case_id]
    assert types.index("case_supplement_requested") < types.index("case_supplement_received")
    requested = next(e for e in events if e["type"] == "case_supplement_requested")
    assert requested["detail"]["materials"] == ["guardian-certificate"]

    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    records = [
        orjson.loads(record.text)
        async for page in state.audit_store.read_pages(state.audit.chain)
        for record in page
    ]
    supplied = [
        r
        for r in records
        if r["type"] == "case_transition"
        and r.get("case_id") == case_id
        and "supplement #1" in str(r.get("extra", {}).get("reason", ""))
    ]
    assert supplied, "the supplement's transition is on the audit chain"
    assert not any(SU_LANXIN.id_number in orjson.dumps(r).decode() for r in records)


async def test_s10_supplement_through_the_citizens_portal_form(journey: Journey) -> None:
    case_id = await take_in_s10(journey, "s10-supplement-0002")
    await wait_for(journey, case_id, "supplement_requested", "citizen-l2")
    gateway = str(journey.client.make_url("")).rstrip("/")
    portal = qinghai_portal(gateway, "portal-secret")
    portal.sessions["cookie-1"] = PortalSession(
        sid=None,
        subject="demo-" + SU_LANXIN.key,
        acr="L2",
        tokens=Tokens(
            access_token=journey.tokens["citizen-l2"]["token"],
            refresh_token=None,
            expires_at=time.time() + 3600,
            lifetime=3600,
            id_token="",
        ),
        name=SU_LANXIN.name,
    )
    async with TestClient(TestServer(build_portal_app(portal), host="127.0.0.1")) as browser:
        cookies = {portal.cookie: "cookie-1"}
        page = await (await browser.get("/cases", cookies=cookies)).text()
        assert "data-code='guardian-certificate'" in page
        assert "监护关系证明" in page
        form = re.search(
            r"<form method='post' action='(/cases/[^']+/supplements)'>(.*?)</form>", page
        )
        assert form is not None
        fields = dict(re.findall(r"name='(csrf|idempotency_key|part)' value='([^']*)'", form[2]))
        assert set(fields) == {"csrf", "idempotency_key", "part"}

        forged = await browser.post(
            form[1],
            data={**fields, "csrf": "x" * 64, "material": "guardian-certificate"},
            cookies=cookies,
            allow_redirects=False,
        )
        assert forged.status == 403
        for _ in range(2):  # a double click sends one supplement
            sent = await browser.post(
                form[1],
                data={**fields, "material": "guardian-certificate", "note": "父亲"},
                cookies=cookies,
                allow_redirects=False,
            )
            assert sent.status == 303, await sent.text()
    case = await wait_for(journey, case_id, "closed", "citizen-l2")
    assert len(case["supplements"]) == 1
    assert case["supplements"][0]["materials"][0]["ref"].startswith("urn:upload:demo-portal-")
    office = journey.backends.offices[QINGHAI_GOV]
    assert [len(a.supplements) for a in office.applications.values()] == [1]
