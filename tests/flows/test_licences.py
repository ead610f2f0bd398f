"""Electronic licences in cases (免证办) against the demo's loopback issuers: S12 end to end, and
every refusal (revoked, another holder's, an altered record, not found, the issuer down or
garbled, licences the applicant tries to fill in) before any case exists."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.demo.backends import QINGHAI_GOV, SHAANXI_LICENCE
from gateway.demo.cases import S8_CASE, S12_CASE, S12_REFUSED
from gateway.demo.licence_system import (
    BIRTH_CERTIFICATE,
    BIRTH_CERTIFICATE_ALTERED,
    BIRTH_CERTIFICATE_OTHER,
    BIRTH_CERTIFICATE_REVOKED,
)
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, ZHAO_YIMING
from gateway.http.keys import SETTINGS
from gateway.identity.citizen import natural_person_id
from gateway.identity.identifiers import link_keyer
from gateway.identity.person_key import PersonKeys
from tests.flows.conftest import Journey


@pytest.fixture
def poll_quickly() -> bool:
    return True


def s12(number: str | None = None) -> dict[str, Any]:
    """The demo's printed S12 application, naming a certificate number if given."""
    body = copy.deepcopy(S12_CASE[3])
    if number is not None:
        body["materials"] = [{"code": "birth-medical-certificate", "licence": {"number": number}}]
    return body


async def submit(journey: Journey, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    return response.status, await response.json(content_type=None)


async def my_cases(journey: Journey) -> list[dict[str, Any]]:
    response = await journey.client.get("/api/v1/cases", headers=journey.auth())
    cases: list[dict[str, Any]] = (await response.json())["cases"]
    return cases


async def wait_closed(journey: Journey, case_id: str) -> dict[str, Any]:
    case: dict[str, Any] = {}
    for _ in range(200):
        response = await journey.client.get(f"/api/v1/cases/{case_id}", headers=journey.auth())
        case = await response.json()
        if case["status"] == "closed":
            return case
        await asyncio.sleep(0.05)
    raise AssertionError(f"case stuck at {case.get('status')}: {case.get('timeline')}")


async def test_s12_needs_no_upload_and_takes_the_verified_certificate_to_qinghai(
    journey: Journey,
) -> None:
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    status, receipt = await submit(journey, s12(), "s12-newborn-0001")
    assert status == 202, receipt
    case = await wait_closed(journey, receipt["case_id"])
    assert [p["status"] for p in case["parts"]] == ["done"] * 3
    sealed = issuer.licences[("birth-medical-certificate", BIRTH_CERTIFICATE)].sealed
    # Found for the applying parent (the revoked first certificate is passed over), bound to
    # the case by reference and the digest of the data its issuer sealed.
    assert case["materials"] == [
        {
            "code": "birth-medical-certificate",
            "ref": f"elicence:61:birth-medical-certificate:{BIRTH_CERTIFICATE}",
            "digest": sealed.data_digest,
        }
    ]
    (entry,) = [t for t in case["timeline"] if "免证办" in (t.get("reason") or "")]
    assert BIRTH_CERTIFICATE in entry["reason"]
    assert sealed.data_digest in entry["reason"]
    assert sealed.seal_digest in entry["reason"]
    assert "valid at its issuer (verified 20" in entry["reason"]
    # Search, download and verification at Shaanxi, each carrying the case id and purpose.
    asked = [r.operation for r in issuer.recorder.requests]
    assert asked == ["search_licences", "get_licence", "verify_licence"]
    assert {r.context.get("case_id") for r in issuer.recorder.requests} == {receipt["case_id"]}
    # Qinghai's agencies each took the application with the verification (they refuse without).
    office = journey.backends.offices[QINGHAI_GOV]
    kinds = sorted(a.kind for a in office.applications.values())
    assert kinds == [
        "newborn-medical-insurance",
        "newborn-registration",
        "newborn-social-security-card",
    ]
    # The same application again: the same case, nothing asked of the issuer again.
    status, again = await submit(journey, s12(), "s12-newborn-0001")
    assert (status, again["case_id"]) == (202, receipt["case_id"])
    assert len(issuer.recorder.requests) == 3


@pytest.mark.parametrize(
    ("number", "status", "code"),
    [
        (BIRTH_CERTIFICATE_REVOKED, 422, "client.licence_revoked"),
        (BIRTH_CERTIFICATE_OTHER, 403, "client.licence_not_subjects"),
        (BIRTH_CERTIFICATE_ALTERED, 422, "client.licence_seal_invalid"),
        ("S619999999", 422, "client.licence_not_found"),
    ],
)
async def test_a_licence_that_does_not_hold_is_refused_before_any_case(
    journey: Journey, number: str, status: int, code: str
) -> None:
    got, problem = await submit(journey, s12(number), f"s12-refused-{number}")
    assert (got, problem["code"]) == (status, code), problem
    assert problem["detail"]
    assert MA_WENHUA.id_number not in json.dumps(problem, ensure_ascii=False)
    assert await my_cases(journey) == []
    assert journey.backends.offices[QINGHAI_GOV].applications == {}


async def test_the_issuer_down_fails_closed_and_a_fresh_answer_is_used_and_said(
    journey: Journey,
) -> None:
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    issuer.recorder.trouble.fail_next = 1000
    status, problem = await submit(journey, s12(BIRTH_CERTIFICATE), "s12-issuer-down-1")
    assert (status, problem["code"]) == (503, "backend.licence_issuer_unavailable")
    assert "陕西省电子证照系统" in problem["detail"]
    assert await my_cases(journey) == []
    issuer.recorder.trouble.fail_next = 0
    # The breaker opened on the failures; once it lets a probe through, the issuer answers.
    await asyncio.sleep(0)
    journey.backends.licence_systems[SHAANXI_LICENCE].recorder.clear()
    status, first = await _submit_when_breaker_allows(journey, "s12-issuer-up-1")
    assert status == 202, first
    # Down again: the answer of a moment ago is inside its window, used, and the case says so.
    issuer.recorder.trouble.fail_next = 1000
    body = s12(BIRTH_CERTIFICATE)
    body["data"]["household_address"] = "西宁市城东区示范路5号"
    status, second = await submit(journey, body, "s12-issuer-down-2")
    assert status == 202, second
    response = await journey.client.get(
        f"/api/v1/cases/{second['case_id']}", headers=journey.auth()
    )
    case = await response.json()
    (entry,) = [t for t in case["timeline"] if "免证办" in (t.get("reason") or "")]
    assert "a cached answer of the issuer" in entry["reason"]


async def _submit_when_breaker_allows(journey: Journey, key: str) -> tuple[int, dict[str, Any]]:
    for _ in range(100):
        status, body = await submit(journey, s12(BIRTH_CERTIFICATE), key)
        if status != 503:
            return status, body
        await asyncio.sleep(0.5)
    raise AssertionError("the issuer's breaker never closed")


async def test_a_garbled_issuer_answer_is_a_problem_and_no_case(journey: Journey) -> None:
    journey.backends.licence_systems[SHAANXI_LICENCE].garbled = True
    status, problem = await submit(journey, s12(BIRTH_CERTIFICATE), "s12-garbled-0001")
    assert (status, problem["code"]) == (502, "backend.licence_answer_malformed")
    assert await my_cases(journey) == []


async def test_the_applicant_cannot_fill_in_licences_or_name_another_type(
    journey: Journey,
) -> None:
    body = s12()
    body["data"]["licences"] = [{"type": "birth-medical-certificate", "status": "valid"}]
    status, problem = await submit(journey, body, "s12-self-made-01")
    assert (status, problem["code"]) == (422, "client.validation_failed")
    assert problem["errors"] == [{"path": "/data/licences", "message": "filled by the gateway"}]
    body = s12()
    body["materials"] = [
        {"code": "birth-medical-certificate", "licence": {"type": "driving-licence"}}
    ]
    status, problem = await submit(journey, body, "s12-other-type-1")
    assert (status, problem["code"]) == (422, "client.validation_failed")
    body = copy.deepcopy(s12())
    body["materials"] = [{"code": "birth-medical-certificate", "licence": {}, "ref": "urn:x"}]
    status, problem = await submit(journey, body, "s12-both-forms-1")
    assert (status, problem["code"]) == (422, "client.validation_failed")
    assert await my_cases(journey) == []


async def test_the_demos_printed_s12_examples_do_what_they_say(journey: Journey) -> None:
    _scenario, _title, key, body = S12_CASE
    status, receipt = await submit(journey, body, key)
    assert status == 202, receipt
    expected = ["client.licence_revoked", "client.licence_seal_invalid"]
    for (_s, title, key, body), code in zip(S12_REFUSED, expected, strict=True):
        status, problem = await submit(journey, body, key)
        assert (status, problem["code"]) == (422, code)
        assert code in title
    assert [c["case_id"] for c in await my_cases(journey)] == [receipt["case_id"]]


def person_key_of(journey: Journey, id_number: str) -> str:
    """The person key a signed-in citizen with this ID number carries (derived as the
    provider derives it: from the link key of the ID number)."""
    identity = journey.client.app[SETTINGS].gateway.identity
    assert identity is not None
    assert identity.link_secret is not None
    link = link_keyer(identity.link_secret.get_secret_value(), identity.link_algorithm)
    keys = PersonKeys(identity.pairwise_secret)
    return keys.person_key(natural_person_id(link("111", id_number)))


async def test_only_the_holder_uses_the_licence_without_a_grant(journey: Journey) -> None:
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    # Signed in as someone else, naming 马文华 as the parent: refused, the issuer never asked.
    other = journey.issuer.issue(
        "demo-zhao",
        "L3",
        client_id="demo-portal-qinghai",
        person=person_key_of(journey, ZHAO_YIMING.id_number),
    )
    response = await journey.client.post(
        "/api/v1/cases",
        json=s12(),
        headers={"Authorization": f"Bearer {other}", "Idempotency-Key": "s12-not-mine-01"},
    )
    problem = await response.json()
    # The data-subject rule refuses it before the licence is even looked for.
    assert (response.status, problem["code"]) == (403, "client.not_data_subject")
    assert issuer.recorder.requests == []
    # Signed in as 马文华 himself (his person key): his certificate, no grant needed.
    own = journey.issuer.issue(
        "demo-ma",
        "L3",
        client_id="demo-portal-qinghai",
        person=person_key_of(journey, MA_WENHUA.id_number),
    )
    response = await journey.client.post(
        "/api/v1/cases",
        json=s12(),
        headers={"Authorization": f"Bearer {own}", "Idempotency-Key": "s12-mine-0001"},
    )
    assert response.status == 202, await response.text()


async def test_a_made_up_licence_reference_with_a_zero_digest_is_refused(journey: Journey) -> None:
    """The parent company's business licence (S8) given as a reference to a number its issuer
    never issued, with an all-zero digest: refused, where it used to be taken in."""
    body = copy.deepcopy(S8_CASE[3])
    enterprise = journey.issuer.issue(
        "demo-enterprise-xian-qinchuan",
        "LP",
        actor="demo-" + MA_WENHUA.key,
        actor_role="agent",
        enterprise=journey.keys.enterprise(body["data"]["credit_code"]).key,
    )
    body["materials"] = [
        {
            "code": "parent-business-licence",
            "ref": "elicence:61:business-licence:91610000000000000X",
            "digest": "sha256:" + "0" * 64,
        },
        *body["materials"][1:],
    ]
    headers = {"Authorization": f"Bearer {enterprise}", "Idempotency-Key": "s8-made-up-0001"}
    response = await journey.client.post("/api/v1/cases", json=body, headers=headers)
    problem = await response.json()
    assert (response.status, problem["code"]) == (422, "client.licence_not_found"), problem
    body["materials"][0]["ref"] = "elicence:63:resident-id-card:demo-0001"
    response = await journey.client.post("/api/v1/cases", json=body, headers=headers)
    problem = await response.json()
    assert (response.status, problem["code"]) == (422, "client.validation_failed")
    assert problem["errors"] == [
        {"path": "/materials/0/ref", "message": "not a reference to this licence"}
    ]


async def test_someone_else_uses_the_licence_under_the_holders_grant(journey: Journey) -> None:
    """The grandmother applies at the Qinghai portal for 马文华's newborn: his birth certificate
    is used under the consent grant he gave her portal for 出生一件事, and refused without it."""
    ma = journey.issuer.issue(
        "demo-ma",
        "L3",
        client_id="demo-portal-qinghai",
        person=person_key_of(journey, MA_WENHUA.id_number),
    )
    response = await journey.client.post(
        "/api/v1/me/consents",
        json={
            "requester": {"client": "demo-portal-shaanxi"},
            "services": ["newborn-bundle"],
            "purpose": "出生一件事",
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
            "max_uses": 1,
        },
        headers={"Authorization": f"Bearer {ma}"},
    )
    assert response.status == 201, await response.text()
    grant = (await response.json())["id"]
    other = journey.issuer.issue(
        "demo-han",
        "L3",
        client_id="demo-portal-shaanxi",
        person=person_key_of(journey, HAN_XUEMEI.id_number),
    )
    headers = {"Authorization": f"Bearer {other}"}
    response = await journey.client.post(
        "/api/v1/cases", json=s12(), headers={**headers, "Idempotency-Key": "s12-no-grant-01"}
    )
    assert (response.status, (await response.json())["code"]) == (
        403,
        "client.not_data_subject",
    )
    body = {**s12(), "consent": grant}
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**headers, "Idempotency-Key": "s12-granted-01"}
    )
    assert response.status == 202, await response.text()
    # Used once: the grant allowed one use.
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**headers, "Idempotency-Key": "s12-granted-02"}
    )
    problem = await response.json()
    assert response.status == 403, problem
    assert problem["code"].startswith("client.grant_")


async def test_an_issuer_refusing_the_gateway_is_not_a_missing_licence(journey: Journey) -> None:
    """Our credentials refused (HTTP 401) is the issuer not answering: fail closed, named."""
    journey.backends.licence_systems[SHAANXI_LICENCE].api_key = "rotated-without-telling-us"
    status, problem = await submit(journey, s12(BIRTH_CERTIFICATE), "s12-key-rotated-1")
    assert (status, problem["code"]) == (503, "backend.licence_issuer_unavailable")
    assert await my_cases(journey) == []
