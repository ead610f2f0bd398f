"""异议复核: the holder disputes a licence's data; the dispute reaches the issuer durably as a case
(verified first as the holder's), and the reviewers' answer comes back on the case."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.demo.backends import SHAANXI_LICENCE
from gateway.demo.licence_system import BIRTH_CERTIFICATE, BIRTH_CERTIFICATE_OTHER
from gateway.demo.residents import MA_WENHUA
from tests.flows.conftest import Journey


@pytest.fixture
def poll_quickly() -> bool:
    return True


def dispute(number: str = BIRTH_CERTIFICATE, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": "licence-dispute",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "电子证照异议复核",
        "data": {
            "licence_type": "birth-medical-certificate",
            "number": number,
            "issuing_province": "61",
            "holder_id_number": MA_WENHUA.id_number,
            "field": "birth_date",
            "claimed": "2026-11-19",
            "reason": "出生时间为11月19日23时58分，登记有误",
        },
        "materials": [
            {"code": "disputed-licence", "licence": {"number": number}},
        ],
    }
    body.update({k: v for k, v in changes.items() if k != "data"})
    body["data"].update(changes.get("data", {}))
    return body


async def submit(journey: Journey, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    return response.status, await response.json(content_type=None)


async def test_a_dispute_reaches_the_issuer_and_its_answer_comes_back(journey: Journey) -> None:
    status, receipt = await submit(journey, dispute(), "dispute-0000001")
    assert status == 202, receipt
    assert receipt["handling_provinces"] == ["61"]
    case: dict[str, Any] = {}
    for _ in range(200):
        response = await journey.client.get(
            f"/api/v1/cases/{receipt['case_id']}", headers=journey.auth()
        )
        case = await response.json()
        if case["status"] == "closed":
            break
        await asyncio.sleep(0.05)
    assert case["status"] == "closed", case["timeline"]
    (part,) = case["parts"]
    assert part["result"]["decision"]["outcome"] == "upheld"
    assert "维持" in part["result"]["decision"]["answer"]
    assert part["result"]["deadline"]
    # The disputed licence was verified as the holder's first, and bound to the case.
    assert (
        case["materials"][0]["ref"] == f"elicence:61:birth-medical-certificate:{BIRTH_CERTIFICATE}"
    )
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    (taken,) = issuer.disputes.values()
    assert (taken.number, taken.field_name) == (BIRTH_CERTIFICATE, "birth_date")
    assert issuer.recorder.for_operation("file_dispute")[0].context["case_id"] == receipt["case_id"]


async def test_a_dispute_not_at_the_issuer_or_about_another_holders_licence_is_refused(
    journey: Journey,
) -> None:
    status, problem = await submit(journey, dispute(handling_province="63"), "dispute-wrong-01")
    assert (status, problem["code"]) in {
        (422, "client.validation_failed"),
        (422, "client.no_agreement"),
    }
    status, problem = await submit(journey, dispute(BIRTH_CERTIFICATE_OTHER), "dispute-other-01")
    assert (status, problem["code"]) == (403, "client.licence_not_subjects")
    body = dispute(data={"licence_type": "no-such-licence"})
    body["materials"] = [{"code": "disputed-licence", "licence": {"number": BIRTH_CERTIFICATE}}]
    status, problem = await submit(journey, body, "dispute-type-0001")
    assert (status, problem["code"]) == (422, "client.unknown_licence_type")
    response = await journey.client.get("/api/v1/cases", headers=journey.auth())
    assert (await response.json())["cases"] == []
