"""S1, S2, S3, S4, S8, S9, S10 as cases: POST /api/v1/cases through the real app to the demo provinces and back."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.cases.model import delivery_key
from gateway.demo.backends import (
    GANSU_GOV,
    JIANGSU_PROOF,
    QINGHAI_GOV,
    QINGHAI_SI,
    SHAANXI_HOUSING,
)
from gateway.demo.cases import S10_CASE
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.http.keys import STATE
from tests.flows.conftest import Journey, demo_journey

ID_CARD = {
    "code": "resident-id-card",
    "ref": "elicence:63:idcard:0001",
    "digest": "sha256:" + "e" * 64,
}


@pytest.fixture
async def journey(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Journey]:
    """The demo journey, with a status poll every 0.2 s instead of every minute."""
    async with demo_journey(tmp_path, monkeypatch, poll_quickly=True) as journey:
        yield journey


async def submit(
    journey: Journey, body: dict[str, Any], key: str, token: str = "citizen-l3"
) -> tuple[int, dict[str, Any]]:
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(token), "Idempotency-Key": key}
    )
    return response.status, await response.json(content_type=None)


async def wait_for(
    journey: Journey, case_id: str, status: str, token: str = "citizen-l3"
) -> dict[str, Any]:
    case: dict[str, Any] = {}
    for _ in range(200):
        response = await journey.client.get(f"/api/v1/cases/{case_id}", headers=journey.auth(token))
        case = await response.json()
        if case["status"] == status:
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(f"case stuck at {case.get('status')}: {case.get('timeline')}")


def s1_application() -> dict[str, Any]:
    return {
        "service": "pension-transfer",
        "operation": "transfer-application",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "企业职工养老保险关系转移接续",
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "insurance_number": "6301002023004567",
            "out_province": "61",
            "contribution_certificate_no": "61SICABCDEF123456",
        },
        "materials": [ID_CARD],
    }


async def test_s1_case_is_received_forwarded_polled_and_closed(
    journey: Journey, tmp_path: Path
) -> None:
    status, receipt = await submit(journey, s1_application(), "s1-case-apply-0001")
    assert status == 202, receipt
    case_id = receipt["case_id"]
    assert receipt["handling_provinces"] == ["63"]
    assert receipt["status_url"].endswith(f"/api/v1/cases/{case_id}")
    again_status, again = await submit(journey, s1_application(), "s1-case-apply-0001")
    assert again_status == 202
    assert again["case_id"] == case_id, "a retried submission is the same case"

    case = await wait_for(journey, case_id, "forwarded")
    accept_no = case["parts"][0]["result"]["acceptance_number"]
    sent = journey.backends.recorder(QINGHAI_SI).for_operation("SubmitTransfer")
    assert [r.idempotency_key for r in sent] == [delivery_key(case_id, 0)]
    assert sent[0].context["case_id"] == case_id
    assert sent[0].context["purpose"] == "企业职工养老保险关系转移接续"

    journey.backends.qinghai_si.advance_transfer(accept_no, "03")  # the officers' work
    case = await wait_for(journey, case_id, "closed")
    steps = [t["to"] for t in case["timeline"]]
    assert steps == ["received", "forwarded", "result_delivered", "closed"]
    assert case["materials"] == [ID_CARD]
    assert journey.backends.recorder(QINGHAI_SI).for_operation("GetTransferStatus")

    # Events go out through the outbox after the step that made them: the closing event may
    # follow the closed case by a moment.
    mine: list[dict[str, Any]] = []
    for _ in range(100):
        events = [
            orjson.loads(line)
            for line in (tmp_path / "case-events.jsonl").read_bytes().splitlines()
        ]
        mine = [e for e in events if e["case_id"] == case_id]
        if mine and mine[-1]["type"] == "case_closed":
            break
        await asyncio.sleep(0.05)
    assert mine[-1]["type"] == "case_closed"
    assert mine[-1]["detail"]["rating"]["channel"] == "haochaping"

    listed = await (await journey.client.get("/api/v1/cases", headers=journey.auth())).json()
    assert [c["case_id"] for c in listed["cases"]] == [case_id]

    # Every transition is in the instance's audit chain (digests and ids, never data).
    state = journey.client.app[STATE]
    assert state.audit is not None
    assert state.audit_store is not None
    await state.audit.flush()
    texts = [
        record.text
        async for page in state.audit_store.read_pages(state.audit.chain)
        for record in page
    ]
    outcomes = [
        orjson.loads(t)["outcome"]
        for t in texts
        if case_id in t and orjson.loads(t)["type"] == "case_transition"
    ]
    assert outcomes[0] == "received"
    assert outcomes[-1] == "closed"
    assert not any(MA_WENHUA.id_number in t for t in texts)


async def test_s4_case_is_confirmed_by_the_old_fund_centre(journey: Journey) -> None:
    body = {
        "service": "housing-fund-transfer",
        "operation": "transfer",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "住房公积金异地转移接续",
        "data": {
            "account_no": "610100201000123456",
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "in_centre_code": "630100",
        },
        "materials": [ID_CARD],
    }
    status, receipt = await submit(journey, body, "s4-case-transfer-0001")
    assert status == 202, receipt
    case = await wait_for(journey, receipt["case_id"], "closed")
    assert case["parts"][0]["result"]["status"] == "CONFIRMED"
    assert len(journey.backends.housing.transfers) == 1
    assert journey.backends.recorder(SHAANXI_HOUSING).idempotency_keys("create_transfer") == [
        delivery_key(receipt["case_id"], 0)
    ]


async def test_bad_applications_are_problems_and_create_nothing(journey: Journey) -> None:
    good = s1_application()
    cases: list[tuple[dict[str, Any], str | None, str, int, str]] = [
        (good, None, "citizen-l3", 400, "client.idempotency_key_missing"),
        ({**good, "service": "nope"}, "bad-0000001", "citizen-l3", 404, "client.unknown_service"),
        (
            {**good, "receiving_province": "32"},
            "bad-0000002",
            "citizen-l3",
            422,
            "client.no_agreement",
        ),
        (good, "bad-0000003", "citizen-l2", 403, "client.insufficient_level"),
        ({**good, "materials": []}, "bad-0000004", "citizen-l3", 422, "client.materials_invalid"),
    ]
    for body, key, token, status, code in cases:
        headers = {**journey.auth(token), **({"Idempotency-Key": key} if key else {})}
        response = await journey.client.post("/api/v1/cases", json=body, headers=headers)
        problem = await response.json(content_type=None)
        assert (response.status, problem["code"]) == (status, code), problem
        assert response.content_type == "application/problem+json"
    status, first = await submit(journey, good, "reuse-000001")
    assert status == 202
    other = {**good, "purpose": "another purpose"}
    status, conflict = await submit(journey, other, "reuse-000001")
    assert (status, conflict["code"]) == (409, "client.idempotency_key_reused")
    listed = await (await journey.client.get("/api/v1/cases", headers=journey.auth())).json()
    assert [c["case_id"] for c in listed["cases"]] == [first["case_id"]]


async def test_only_the_applicant_and_staff_see_a_case(journey: Journey) -> None:
    status, receipt = await submit(journey, s1_application(), "private-00001")
    assert status == 202
    url = f"/api/v1/cases/{receipt['case_id']}"
    other = await journey.client.get(url, headers=journey.auth("citizen-l2"))
    assert other.status == 404
    operator = journey.issuer.issue("ops-1", "L3", roles=["operator"])
    seen = await journey.client.get(url, headers={"Authorization": f"Bearer {operator}"})
    assert seen.status == 200


async def test_s3_household_move_is_handled_jointly_by_gansu_and_qinghai(journey: Journey) -> None:
    body = {
        "service": "household-move",
        "mode": "joint",
        "receiving_province": "63",
        "parts": [
            {"handling_province": "62", "operation": "move-out"},
            {"handling_province": "63", "operation": "move-in"},
        ],
        "purpose": "兰西城市群户口迁移",
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "from_region": "620102",
            "to_region": "630104",
            "reason": "work",
        },
        "materials": [ID_CARD, {**ID_CARD, "code": "household-register"}],
    }
    status, receipt = await submit(journey, body, "s3-case-move-0001")
    assert status == 202, receipt
    assert receipt["handling_provinces"] == ["62", "63"]
    case = await wait_for(journey, receipt["case_id"], "closed")
    assert [(p["handling_province"], p["status"]) for p in case["parts"]] == [
        ("62", "done"),
        ("63", "done"),
    ]
    assert case["parts"][0]["result"]["result"]["document"].startswith("迁出确认")
    assert case["parts"][1]["result"]["result"]["document"].startswith("准予迁入")
    steps = [(t["to"], t["part"], t["part_status"]) for t in case["timeline"]]
    assert ("forwarded", 0, "done") in steps  # Gansu done while Qinghai still waits
    assert steps[-2:] == [("result_delivered", 1, "done"), ("closed", None, None)]
    for system in (GANSU_GOV, QINGHAI_GOV):
        sent = journey.backends.recorder(system).for_operation("submit_application")
        assert [r.context["case_id"] for r in sent] == [receipt["case_id"]]


async def test_s10_window_intake_with_an_unknown_outcome_reconciled(journey: Journey) -> None:
    clerk = journey.issuer.issue(
        "demo-" + SU_LANXIN.key,
        "Counter",
        client_id="window-61-xian",
        actor="clerk-61-0007",
        actor_role="clerk",
        roles=["clerk"],
        person=journey.keys.person(SU_LANXIN.id_number).key,  # the document the clerk checked
    )
    journey.tokens["clerk"] = {"token": clerk}
    qinghai = journey.backends.recorder(QINGHAI_GOV)
    qinghai.trouble.fail_next = 1  # the first send gets a 503: did Qinghai take it or not?
    qinghai.trouble.retry_after = None
    body = copy.deepcopy(S10_CASE[3])  # the very body the demo banner prints for S10
    status, receipt = await submit(journey, body, "s10-window-0001", token="clerk")
    assert status == 202, receipt
    case = await wait_for(journey, receipt["case_id"], "closed", token="clerk")
    steps = [t["to"] for t in case["timeline"]]
    assert steps[:2] == ["received", "originals_checked"]
    assert "outcome_unknown" in steps
    assert case["timeline"][1]["actor"] == "clerk-61-0007"
    operations = [r.operation for r in qinghai.requests]
    assert operations[:3] == ["submit_application", "find_application", "submit_application"]
    assert len(journey.backends.offices[QINGHAI_GOV].applications) == 1
    queue = await journey.client.get("/api/v1/cases?queue=window", headers=journey.auth("clerk"))
    assert [c["case_id"] for c in (await queue.json())["cases"]] == [receipt["case_id"]]


async def test_s2_medical_filing_is_issued_at_once(journey: Journey) -> None:
    body = {
        "service": "medical-filing",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "异地就医备案",
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "treatment_province": "61",
            "filing_type": "resident-elsewhere",
            "valid_from": "2026-12-01",
        },
        "materials": [{**ID_CARD, "code": "medical-insurance-voucher"}],
    }
    status, receipt = await submit(journey, body, "s2-case-filing-01")
    assert status == 202, receipt
    case = await wait_for(journey, receipt["case_id"], "closed")
    assert [t["to"] for t in case["timeline"]] == [
        "received",
        "forwarded",
        "result_delivered",
        "closed",
    ]
    assert case["parts"][0]["result"]["result"]["document"].startswith("异地就医备案凭证")


async def test_s8_branch_bundle_fans_out_to_four_agencies(journey: Journey) -> None:
    enterprise = journey.issuer.issue(
        "demo-enterprise-xian-qinchuan",
        "LP",
        actor="demo-" + MA_WENHUA.key,
        actor_role="agent",
        enterprise=journey.keys.enterprise("91610113MA6TXXXX0Q").key,
    )
    journey.tokens["enterprise"] = {"token": enterprise}
    operations = ["registration", "seal-filing", "invoices", "social-insurance"]
    body = {
        "service": "branch-registration",
        "receiving_province": "63",
        "parts": [{"handling_province": "63", "operation": op} for op in operations],
        "purpose": "跨省设立分支机构",
        "data": {
            "credit_code": "91610113MA6TXXXX0Q",
            "parent_name": "西安秦川示例电子有限公司",
            "branch_name": "西安秦川示例电子有限公司西宁分公司",
            "branch_address": "西宁市城西区示范大街8号",
            "principal_name": MA_WENHUA.name,
            "principal_id_number": MA_WENHUA.id_number,
        },
        "materials": [
            # 免证办: found and verified at Shaanxi's e-licence system by the credit code.
            {"code": "parent-business-licence", "licence": {}},
            {
                "code": "representative-authorisation",
                "ref": "urn:upload:1",
                "digest": ID_CARD["digest"],
            },
        ],
    }
    status, problem = await submit(journey, body, "s8-case-bundle-01")  # a citizen's token
    assert (status, problem["code"]) == (403, "client.insufficient_level")
    status, receipt = await submit(journey, body, "s8-case-bundle-01", token="enterprise")
    assert status == 202, receipt
    assert receipt["handling_provinces"] == ["63"]  # four parts, one province
    case = await wait_for(journey, receipt["case_id"], "closed", token="enterprise")
    assert [p["status"] for p in case["parts"]] == ["done"] * 4
    # The parent's business licence was found and verified at Shaanxi (sealed before the
    # issuer rotated its key: the retired key still verifies it).
    licence = next(m for m in case["materials"] if m["code"] == "parent-business-licence")
    assert licence["ref"] == "elicence:61:business-licence:91610113MA6TXXXX0Q"
    assert any("(key sx-seal-2025)" in (t.get("reason") or "") for t in case["timeline"])
    documents = [p["result"]["result"]["document"] for p in case["parts"]]
    assert [d.split()[0] for d in documents] == [
        "分支机构营业执照",
        "印章备案回执",
        "发票领用核定",
        "社会保险登记证明",
    ]
    sent = journey.backends.recorder(QINGHAI_GOV).for_operation("submit_application")
    assert sorted(r.idempotency_key or "" for r in sent) == [
        delivery_key(receipt["case_id"], n) for n in range(4)
    ]
    assert {r.context["actor"] for r in sent} == {"demo-" + MA_WENHUA.key}


def s9_proof_call(authorisation: str | None = None) -> dict[str, Any]:
    return {
        "operation": "contribution-proof",
        "receiving_province": "63",
        "handling_province": "32",
        "purpose": "申请公共租赁住房",
        "data": {"id_number": SU_LANXIN.id_number, "name": SU_LANXIN.name},
        **({"authorisation_ref": authorisation} if authorisation else {}),
    }


def s9_application(proof: dict[str, Any], authorisation: str | None) -> dict[str, Any]:
    return {
        "service": "public-rental-housing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "申请公共租赁住房",
        **({"authorisation_ref": authorisation} if authorisation else {}),
        "data": {
            "id_number": SU_LANXIN.id_number,
            "name": SU_LANXIN.name,
            "household_size": 2,
            "proof_number": proof["number"],
            "proof_seal_digest": proof["seal_digest"],
            "proof_seal_value": proof["seal_value"],
        },
        "materials": [
            ID_CARD,
            {
                "code": "contribution-proof",
                "ref": f"urn:proof:32:{proof['number']}",
                "digest": proof["seal_digest"],
            },
        ],
    }


async def test_s9_rental_housing_with_the_jiangsu_proof_pulled_and_checked(
    journey: Journey,
) -> None:
    status, answer = await journey.call(
        "public-rental-housing", s9_proof_call(), token="citizen-l2"
    )
    assert status == 200, answer
    assert answer["system"] == JIANGSU_PROOF
    data = answer["data"]
    assert (data["social_insurance_months"], data["housing_fund_months"]) == (38, 36)
    assert data["latest_month"] == "2026-10"
    proof = data["proof"]
    content = base64.b64decode(proof["content_base64"])
    assert proof["seal_digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert proof["number"].startswith("32")
    (asked,) = journey.backends.recorder(JIANGSU_PROOF).for_operation("issue_proof")
    # The holder herself: Jiangsu is told she is the verified subject (its own hash of her ID
    # number), and no grant is named because none was needed.
    assert asked.context["subjects"].startswith("person:")
    assert "authorisation_ref" not in asked.context

    body = s9_application(proof, None)
    status, receipt = await submit(journey, body, "s9-case-rental-01", token="citizen-l2")
    assert status == 202, receipt
    case = await wait_for(journey, receipt["case_id"], "closed", token="citizen-l2")
    assert [t["to"] for t in case["timeline"]] == [
        "received",
        "forwarded",
        "processing",
        "result_delivered",
        "closed",
    ]
    assert case["parts"][0]["result"]["result"]["document"].startswith("公共租赁住房资格确认书")
    assert case["materials"][1]["digest"] == proof["seal_digest"]
    (sent,) = journey.backends.recorder(QINGHAI_GOV).for_operation("submit_application")
    assert sent.context["subjects"].startswith("person:")

    # A proof whose seal does not hold is refused by Qinghai: 不予受理, the case closes.
    forged = {**proof, "seal_value": base64.b64encode(b"x" * 32).decode()}
    status, receipt = await submit(
        journey, s9_application(forged, None), "s9-case-forged-1", token="citizen-l2"
    )
    assert status == 202, receipt
    case = await wait_for(journey, receipt["case_id"], "closed", token="citizen-l2")
    assert "not_accepted" in [t["to"] for t in case["timeline"]]


async def test_s9_without_the_holders_authorisation_is_a_problem_and_no_case(
    journey: Journey,
) -> None:
    # Someone else (苏兰心's proof asked by 马文华) with a made-up reference: refused, nothing sent.
    status, problem = await journey.call(
        "public-rental-housing", s9_proof_call("AUTH-2026-0009"), token="citizen-l3"
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert not journey.backends.recorder(JIANGSU_PROOF).requests

    # Jiangsu itself refuses a proof without an authorisation reference or a verified holder.
    proof_state = journey.backends.proof
    assert proof_state is not None
    base = journey.backends.running[JIANGSU_PROOF].base_url
    session = journey.client.session
    async with session.post(
        base + "/api/proofs",
        json={"idNumber": SU_LANXIN.id_number, "name": SU_LANXIN.name},
        headers={"X-API-Key": proof_state.api_key},
    ) as refused:
        assert refused.status == 403
        assert (await refused.json())["error"] == "authorisation_required"
    assert not proof_state.issued

    fake = {
        "number": "32JFZM20261128000001",
        "seal_digest": ID_CARD["digest"],
        "seal_value": "A" * 44,
    }
    status, problem = await submit(
        journey, s9_application(fake, "AUTH-2026-0009"), "s9-case-noauth-1", token="citizen-l3"
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    listed = await journey.client.get("/api/v1/cases", headers=journey.auth("citizen-l3"))
    assert (await listed.json())["cases"] == []
    assert not journey.backends.recorder(QINGHAI_GOV).for_operation("submit_application")
