"""S13 (二手房转移登记及水电气联动过户) through the real app to the demo's Xining and Shaanxi systems.

One application, linked parts: the filing and the Shaanxi check go out first, the tax after the
filing, registration after both, the utilities after registration, each part's input made of
the answers it waited for. A seized home is refused at registration: the filing and the tax are
undone at their systems, the utilities are never asked, and the case closes with one outcome.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cases.model import compensation_key, delivery_key
from gateway.demo.backends import (
    SHAANXI_CIVIL,
    XINING_HOUSING,
    XINING_REGISTRY,
    XINING_TAX,
    XINING_UTILITIES,
)
from gateway.demo.cases import S13_CASE, S13_REFUSED
from gateway.demo.property_transfer import SELLER
from tests.consent_books import MemoryConsentBook, TestGrant
from tests.flows.conftest import Journey, audit_verify, demo_journey

SELLER_GRANT = "grant-s13-seller"


@pytest.fixture
async def journey(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Journey]:
    # The buyer (马文华) files; the seller (韩雪梅) is a co-applicant whose part of the
    # application is reached under her consent grant to the buyer's portal.
    book = MemoryConsentBook()
    async with demo_journey(tmp_path, monkeypatch, poll_quickly=True, consent_book=book) as journey:
        book.grants[SELLER_GRANT] = TestGrant(
            subject=journey.keys.person(SELLER.id_number),
            client_id="demo-portal-qinghai",
            service="second-hand-home-transfer",
        )
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


async def submit_and_settle(journey: Journey, body: dict[str, Any], key: str) -> dict[str, Any]:
    refused = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    assert refused.status == 403  # the seller's data without her grant
    assert (await refused.json())["code"] == "client.not_data_subject"
    body = {**body, "consent": SELLER_GRANT}
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    receipt = await response.json()
    assert response.status == 202, receipt
    case: dict[str, Any] = {}
    for _ in range(300):
        got = await journey.client.get(
            f"/api/v1/cases/{receipt['case_id']}", headers=journey.auth()
        )
        case = await got.json()
        if case["status"] == "closed":
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(f"case stuck at {case.get('status')}: {case.get('timeline')}")


def parts(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in case["parts"]}


async def test_s13_parts_run_in_order_and_pass_their_answers_on(journey: Journey) -> None:
    _scenario, _title, key, body = S13_CASE
    case = await submit_and_settle(journey, body, key)
    by_name = parts(case)
    assert {name: p["status"] for name, p in by_name.items()} == dict.fromkeys(
        (
            "contract-filing",
            "buyer-check",
            "deed-tax",
            "registration",
            "electricity",
            "water",
            "gas",
        ),
        "done",
    )
    assert case["outcome"]["result"] == "done"
    assert by_name["registration"]["after"] == ["deed-tax", "buyer-check"]
    assert by_name["buyer-check"]["handling_province"] == "61"
    filing = by_name["contract-filing"]["result"]["filing_number"]
    title = by_name["registration"]["result"]["title_number"]
    assert title.startswith("青(2026)西宁市不动产权第")
    # Each system got what the parts before it answered, under the part's own key.
    agencies = journey.backends.agencies
    (tax,) = agencies[XINING_TAX].by_number.values()
    assert tax.refs == {"filingNumber": filing}
    (sent,) = journey.backends.recorder(XINING_TAX).requests
    assert sent.idempotency_key == delivery_key(case["case_id"], 2)
    (registration,) = agencies[XINING_REGISTRY].by_number.values()
    assert registration.refs == {
        "filingNumber": filing,
        "taxVoucherNo": by_name["deed-tax"]["result"]["tax_voucher_no"],
        "buyerMaritalStatus": "married",  # as Shaanxi answered
    }
    transfers = journey.backends.recorder(XINING_UTILITIES).requests
    assert sorted(r.path for r in transfers) == [
        "/api/electricity-transfers",
        "/api/gas-transfers",
        "/api/water-transfers",
    ]
    assert {r.refs["titleNumber"] for r in agencies[XINING_UTILITIES].by_number.values()} == {title}
    assert journey.backends.recorder(SHAANXI_CIVIL).count == 1
    assert journey.backends.recorder(XINING_HOUSING).count == 1


async def test_s13_refused_registration_undoes_the_filing_and_the_tax(journey: Journey) -> None:
    _scenario, _title, key, body = S13_REFUSED
    case = await submit_and_settle(journey, body, key)
    case_id = case["case_id"]
    by_name = parts(case)
    assert {name: p["status"] for name, p in by_name.items()} == {
        "contract-filing": "compensated",
        "buyer-check": "done",
        "deed-tax": "compensated",
        "registration": "not_accepted",
        "electricity": "cancelled",
        "water": "cancelled",
        "gas": "cancelled",
    }
    assert by_name["registration"]["error_code"] == "backend.rejected"
    assert case["outcome"]["result"] == "not_accepted"
    assert case["outcome"]["failed_part"] == "registration"
    assert "compensating" in [t["to"] for t in case["timeline"]]
    # Undone at the systems, once each, under the parts' undo keys.
    housing = journey.backends.agencies[XINING_HOUSING]
    tax = journey.backends.agencies[XINING_TAX]
    assert [r.cancelled for r in housing.by_number.values()] == [True]
    assert [r.cancelled for r in tax.by_number.values()] == [True]
    assert set(housing.cancellations) == {compensation_key(case_id, 0)}
    assert set(tax.cancellations) == {compensation_key(case_id, 2)}
    # The utilities were never asked.
    assert journey.backends.recorder(XINING_UTILITIES).requests == []
    # The applicant's events say so: one closure, with the combined outcome.
    listed = await journey.client.get("/api/v1/cases", headers=journey.auth())
    assert case_id in {c["case_id"] for c in (await listed.json())["cases"]}


async def test_the_seller_sees_the_buyers_application_from_another_portal(
    journey: Journey,
) -> None:
    """Co-applicants: the seller named in the buyer's application (under her grant) finds the
    case in her own list and reads it, signed in at the Shaanxi portal; a third person does not,
    and the seller's own key names no case she is not part of."""
    _scenario, _title, key, body = S13_CASE
    case = await submit_and_settle(journey, body, key)
    seller = journey.issuer.issue(
        "seller-at-shaanxi",
        "L2",
        client_id="demo-portal-shaanxi",
        person=journey.keys.person(SELLER.id_number).key,
    )
    headers = {"Authorization": f"Bearer {seller}"}
    listed = await journey.client.get("/api/v1/cases", headers=headers)
    assert listed.status == 200
    assert [c["case_id"] for c in (await listed.json())["cases"]] == [case["case_id"]]
    read = await journey.client.get(f"/api/v1/cases/{case['case_id']}", headers=headers)
    assert read.status == 200, await read.text()
    assert (await read.json())["service"] == "second-hand-home-transfer"

    stranger = journey.issuer.issue(
        "someone-else",
        "L3",
        client_id="demo-portal-shaanxi",
        person=journey.keys.person("610102199001010015").key,
    )
    headers = {"Authorization": f"Bearer {stranger}"}
    assert (await (await journey.client.get("/api/v1/cases", headers=headers)).json())[
        "cases"
    ] == []
    hidden = await journey.client.get(f"/api/v1/cases/{case['case_id']}", headers=headers)
    assert hidden.status == 404
