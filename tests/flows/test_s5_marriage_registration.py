"""S5 内地居民婚姻登记 at a Qinghai window: both parties checked in Shaanxi's civil register, then
Qinghai registers the marriage and issues sealed e-marriage certificates into its e-licence
system, found and verified from then on like any licence; a party held as married is refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.adapter import CallContext
from gateway.demo.backends import QINGHAI_LICENCE
from gateway.demo.residents import MA_WENHUA, SU_LANXIN, ZHAO_YIMING, Resident
from gateway.http.licences import LICENCES
from tests.flows.conftest import Journey


@pytest.fixture
def poll_quickly() -> bool:
    return True


def application(a: Resident, b: Resident) -> dict[str, Any]:
    return {
        "service": "marriage-registration",
        "mode": "joint",
        "receiving_province": "63",
        "purpose": "内地居民婚姻登记",
        "data": {
            "party_a": {"id_number": a.id_number, "name": a.name, "household_province": "61"},
            "party_b": {"id_number": b.id_number, "name": b.name, "household_province": "61"},
            "registry": "西宁市城中区民政局婚姻登记处（示范）",
        },
    }


async def party_b_consents(journey: Journey, body: dict[str, Any]) -> str:
    """Party B, signed in on her own phone, lets the window take her part of the application in
    (授权用证): both parties are the application's data subjects."""
    party_b = journey.issuer.issue(
        "demo-party-b",
        "L3",
        client_id="demo-portal-qinghai",
        person=journey.keys.person(body["data"]["party_b"]["id_number"]).key,
    )
    response = await journey.client.post(
        "/api/v1/me/consents",
        json={
            "requester": {"client": "demo-window-qinghai"},
            "services": ["marriage-registration"],
            "purpose": body["purpose"],
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "max_uses": 1,
        },
        headers={"Authorization": f"Bearer {party_b}"},
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def register(journey: Journey, body: dict[str, Any], key: str) -> dict[str, Any]:
    # Taken in at the Qinghai window: a clerk acting for party A, whose document she checked
    # (Counter), under party B's consent grant to the window.
    token = journey.issuer.issue(
        "demo-party-a",
        "Counter",
        client_id="demo-window-qinghai",
        actor="clerk-63-0001",
        actor_role="clerk",
        person=journey.keys.person(body["data"]["party_a"]["id_number"]).key,
    )
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    refused = await journey.client.post("/api/v1/cases", json=body, headers=headers)
    assert (refused.status, (await refused.json())["code"]) == (403, "client.not_data_subject")
    body = {**body, "consent": await party_b_consents(journey, body)}
    response = await journey.client.post("/api/v1/cases", json=body, headers=headers)
    receipt = await response.json()
    assert response.status == 202, receipt
    for _ in range(200):
        response = await journey.client.get(f"/api/v1/cases/{receipt['case_id']}", headers=headers)
        case: dict[str, Any] = await response.json()
        if case["status"] == "closed":
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(case["timeline"])


async def test_s5_registers_after_the_shaanxi_checks_and_issues_sealed_certificates(
    journey: Journey,
) -> None:
    case = await register(journey, application(ZHAO_YIMING, SU_LANXIN), "s5-marriage-0001")
    parts = {p["name"]: p for p in case["parts"]}
    assert parts["check-a"]["handling_province"] == "61"
    assert parts["check-a"]["result"]["marital_status"] == "unmarried"
    registration = parts["registration"]
    assert registration["status"] == "done", case["timeline"]
    numbers = registration["result"]["certificates"]
    assert len(numbers) == 2
    # Each party's e-marriage certificate is found, seal-checked and verified at Qinghai.
    runtime = journey.client.app[LICENCES]
    assert runtime.verifier is not None
    context = CallContext("r", "核验", "test", "63", "63", "p", "p", "L3")
    for party, number in zip((ZHAO_YIMING, SU_LANXIN), numbers, strict=True):
        holder = runtime.verifier.holder("person", "111", party.id_number)
        found = await runtime.verifier.find("marriage-certificate", "63", holder, context)
        assert (found.number, found.status, found.seal_kid) == (number, "valid", "qh-seal-2026")
    issuer = journey.backends.licence_systems[QINGHAI_LICENCE]
    spouse = issuer.licences[("marriage-certificate", numbers[0])].sealed.data["fields"]
    assert spouse["spouse_name"] == SU_LANXIN.name


async def test_s5_a_party_held_as_married_is_refused_and_nothing_issued(journey: Journey) -> None:
    case = await register(journey, application(MA_WENHUA, SU_LANXIN), "s5-marriage-0002")
    parts = {p["name"]: p for p in case["parts"]}
    assert parts["check-a"]["result"]["marital_status"] == "married"
    assert parts["registration"]["status"] == "not_accepted"
    issuer = journey.backends.licence_systems[QINGHAI_LICENCE]
    assert not [k for k in issuer.licences if k[0] == "marriage-certificate"]
