"""A case belongs to the person, not to the portal they filed it through, over real
loopback HTTP: 马文华 signs in at the Qinghai portal through the Qinghai platform, then at the
Shaanxi portal by SSO; a case filed with the Qinghai portal's token is his through the Shaanxi
portal's token too (listed, readable, the same on an idempotent retry), though the two tokens'
subjects differ and nothing in either token or answer lets the portals match them. Another
citizen sees none of it. The fixture ends with `tongban audit verify` on the trail.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.demo.cases import DEMO_CASES
from gateway.identity.person_key import PERSON_CLAIM
from tests.flows import test_federated_sso as federated

sso = federated.sso  # the gateway, the demo Qinghai platform and both demo portals
QH, SX = federated.QH, federated.SX
S4 = next(body for scenario, _, _, body in DEMO_CASES if scenario == "S4")


def _claims(token: str) -> dict[str, Any]:
    """What a portal can read in its access token (RFC 9068 tokens are signed, not encrypted)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def _api(
    sso: federated.Sso,
    method: str,
    path: str,
    token: str,
    body: dict[str, Any] | None = None,
    **headers: str,
) -> tuple[int, Any, Mapping[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{sso.gateway}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}", **headers},
        ) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None, dict(response.headers)


async def test_a_case_filed_at_one_portal_is_hers_at_the_other(sso: federated.Sso) -> None:
    portal_a, portal_b = sso.portal(QH), sso.portal(SX)
    async with federated.browser() as b:
        # 马文华 (L3): the demo's S4 application is about his own fund account.
        await federated.sign_in(sso, b, "qh-100231")
        page = await b.get(f"{portal_b.base_url}/login")  # SSO: no second login
        assert str(page.url) == f"{portal_b.base_url}/"
    at_a, at_b = federated.only_session(portal_a), federated.only_session(portal_b)
    assert at_a.subject != at_b.subject, "pairwise subjects per portal (OIDC Core §8.1)"
    token_a, token_b = at_a.access_token, at_b.access_token
    claims_a, claims_b = _claims(token_a), _claims(token_b)
    assert claims_a[PERSON_CLAIM] != claims_b[PERSON_CLAIM], "nothing the portals could match"

    # Filed through portal A.
    status, receipt, headers = await _api(
        sso, "POST", "/api/v1/cases", token_a, S4, **{"Idempotency-Key": "cross-portal-0001"}
    )
    assert status == 202, receipt
    case_id = receipt["case_id"]
    assert headers["Idempotent-Replayed"] == "false"

    # Hers through portal B: in "mine", readable, and the same case on a retry with the key.
    status, mine, _ = await _api(sso, "GET", "/api/v1/cases", token_b)
    assert status == 200
    assert [c["case_id"] for c in mine["cases"]] == [case_id]
    status, case, _ = await _api(sso, "GET", f"/api/v1/cases/{case_id}", token_b)
    assert status == 200, case
    assert case["case_id"] == case_id
    assert case["service"] == "housing-fund-transfer"
    status, again, headers = await _api(
        sso, "POST", "/api/v1/cases", token_b, S4, **{"Idempotency-Key": "cross-portal-0001"}
    )
    assert status == 202, again
    assert again["case_id"] == case_id
    assert headers["Idempotent-Replayed"] == "true"
    status, problem, _ = await _api(
        sso,
        "POST",
        "/api/v1/cases",
        token_b,
        {**S4, "purpose": "another application"},
        **{"Idempotency-Key": "cross-portal-0001"},
    )
    assert status == 409, problem
    assert problem["code"] == "client.idempotency_key_reused"

    # No answer names the person key, nor the other portal's subject.
    person = (await sso.provider.access_token_verifier().verify(token_b)).person
    assert person is not None
    assert person == (await sso.provider.access_token_verifier().verify(token_a)).person
    answers = json.dumps([receipt, mine, case, again], ensure_ascii=False)
    for hidden in (person, at_a.subject, at_b.subject, claims_a[PERSON_CLAIM]):
        assert hidden not in answers
    assert "owner" not in answers
    assert "person" not in answers

    # Another citizen, through either portal, sees none of it.
    async with federated.browser() as other:
        await federated.sign_in(sso, other, "qh-100233")  # 苏兰心
        await other.get(f"{portal_b.base_url}/login")
    strangers = [
        s.access_token
        for portal in (portal_a, portal_b)
        for s in portal.sessions.values()
        if s.sid != at_a.sid
    ]
    assert len(strangers) == 2
    for token in strangers:
        status, _, _ = await _api(sso, "GET", f"/api/v1/cases/{case_id}", token)
        assert status == 404
        status, theirs, _ = await _api(sso, "GET", "/api/v1/cases", token)
        assert status == 200
        assert theirs["cases"] == []
    # His key and his application from someone else: not the replay of his case (nothing of
    # his comes back), and not hers to file either (his account, his ID number).
    status, own, _ = await _api(
        sso, "POST", "/api/v1/cases", strangers[1], S4, **{"Idempotency-Key": "cross-portal-0001"}
    )
    assert (status, own["code"]) == (403, "client.not_data_subject"), own
    assert case_id not in json.dumps(own)
    status, mine, _ = await _api(sso, "GET", "/api/v1/cases", token_a)
    assert [c["case_id"] for c in mine["cases"]] == [case_id]
