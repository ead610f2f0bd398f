"""S10 at the window over real loopback HTTP: the clerk signs in through the staff
directory at the gateway, the window console exchanges her token and the applicant's ID number
for a Counter token (RFC 8693), and files the case with it; the citizen then sees her case at the
Qinghai portal. Then the staff/citizen separation refused both ways. Every journey ends with
`tongban audit verify` passing on the trail it wrote (the ``sso`` fixture).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from gateway.audit.record import AuditRecord
from gateway.demo.federation import WINDOW_CLIENT
from gateway.demo.portals import ClerkSession, PortalState, WindowDesk
from gateway.demo.residents import SU_LANXIN
from gateway.demo.staff_directory import STAFF_IDP
from gateway.identity.citizen import natural_person_id
from gateway.identity.config import pairwise_subject
from gateway.identity.identifiers import link_keyer
from gateway.identity.token_exchange import ACCESS_TOKEN_TYPE, ID_DOCUMENT_TOKEN_TYPE
from tests.flows.test_federated_sso import (
    QH,
    SX,
    Sso,
    browser,
    only_session,
    sign_in,
    sso,  # noqa: F401 - the fixture
)
from tests.flows.test_identity_audit import _records, _wait_for
from tests.flows.test_oidc_provider import unverified_claims

_HIDDEN = re.compile(r"name='(tx|csrf|request_id)' value='([^']+)'")
_IDP_CHOICE = re.compile(r"name='idp' value='([^']+)'")
_CASE_ID = re.compile(r"id='receipt-case'>(TB61[0-9A-F]+)<")


def console(gw: Sso) -> tuple[PortalState, WindowDesk]:
    portal = gw.portal(SX)
    assert portal.window is not None
    return portal, portal.window


def subject_of(gw: Sso, local_id: str, client_id: str = WINDOW_CLIENT) -> str:
    sector = gw.provider.clients[client_id].registration.sector
    return pairwise_subject(gw.provider.settings.pairwise_secret, sector, local_id)


def person_id(gw: Sso, id_number: str) -> str:
    secret = gw.provider.settings.link_secret
    assert secret is not None
    return natural_person_id(link_keyer(secret.get_secret_value())("111", id_number))


async def gateway_login_page(gw: Sso, b: aiohttp.ClientSession) -> tuple[str, dict[str, str]]:
    """The window console's sign-in: the gateway's login page, its choices and hidden fields."""
    portal, _ = console(gw)
    page = await b.get(f"{portal.base_url}/window/login")
    assert page.status == 200, await page.text()
    assert str(page.url).startswith(f"{gw.gateway}/login?tx="), str(page.url)
    html = await page.text()
    return html, dict(_HIDDEN.findall(html))


async def clerk_sign_in(
    gw: Sso, b: aiohttp.ClientSession, staff_id: str = "clerk-61-0007"
) -> aiohttp.ClientResponse:
    """Through the gateway's login page (staff directory only) and the directory's own form."""
    html, fields = await gateway_login_page(gw, b)
    assert _IDP_CHOICE.findall(html) == [STAFF_IDP], "a window client offers staff only"
    form_page = await b.post(f"{gw.gateway}/login", data={**fields, "idp": STAFF_IDP})
    assert form_page.status == 200
    assert gw.identity.staff is not None
    assert str(form_page.url).startswith(gw.identity.staff.issuer)
    hidden = dict(_HIDDEN.findall(await form_page.text()))
    return await b.post(
        str(form_page.url.with_path("/authorize").with_query({})),
        data={"request_id": hidden["request_id"], "staff": staff_id, "password": "demo"},
    )


def only_clerk(portal: PortalState) -> ClerkSession:
    assert len(portal.clerk_sessions) == 1
    return next(iter(portal.clerk_sessions.values()))


async def exchange(
    gw: Sso, desk: WindowDesk, actor_token: str, id_number: str
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.gateway}/oauth2/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": f"111:{id_number}",
                "subject_token_type": ID_DOCUMENT_TOKEN_TYPE,
                "actor_token": actor_token,
                "actor_token_type": ACCESS_TOKEN_TYPE,
                "scope": "services:call",
            },
            headers=desk.auth,
        ) as response,
    ):
        return response.status, await response.json()


async def api_get(gw: Sso, token: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gw.gateway}{path}", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_clerk_signs_in_exchanges_and_takes_an_s10_case_in(
    sso: Sso,  # noqa: F811
    tmp_path: Path,
) -> None:
    portal, desk = console(sso)
    async with browser() as b:
        home = await clerk_sign_in(sso, b)
        assert home.status == 200, await home.text()
        assert str(home.url) == f"{portal.base_url}/window"
        page = await home.text()
        assert "clerk-61-0007" in page
        assert "王静" in page

        # The clerk's own token: her pairwise sub at the window client, role clerk, staff level.
        clerk = only_clerk(portal)
        clerk_claims = unverified_claims(clerk.access_token)
        clerk_sub = subject_of(sso, f"staff:{STAFF_IDP}:clerk-61-0007")
        assert (clerk_claims["sub"], clerk.subject) == (clerk_sub, clerk_sub)
        assert clerk_claims["roles"] == ["clerk"]
        assert clerk_claims["acr"] == "L2"  # password only at the directory (cert: L3)
        assert clerk_claims["client_id"] == WINDOW_CLIENT
        assert "act" not in clerk_claims

        # Intake: the ID number typed from the document, originals checked.
        csrf = re.search(r"name='csrf' value='([^']+)'", page)
        assert csrf is not None
        done = await b.post(
            f"{portal.base_url}/window/intake",
            data=[
                ("csrf", csrf.group(1)),
                ("idempotency_key", "window-flow-0001"),
                ("id_number", SU_LANXIN.id_number),
                ("applicant_name", SU_LANXIN.name),
                ("category", "hearing"),
                ("address", "西安市雁塔区示范路1号"),
                ("material", "disability-assessment"),
                ("material", "photo"),
                ("originals", "yes"),
                ("note", "身份证原件已核验"),
            ],
        )
        receipt = await done.text()
        assert done.status == 200, receipt
        found = _CASE_ID.search(receipt)
        assert found, receipt[:2000]
        case_id = found.group(1)

    # The Counter token, as the console got it: the person as federation links her.
    citizen_sub = subject_of(sso, person_id(sso, SU_LANXIN.id_number))
    status, counter = await exchange(sso, desk, clerk.access_token, SU_LANXIN.id_number)
    assert status == 200, counter
    assert counter["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in counter
    claims = unverified_claims(counter["access_token"])
    assert claims["sub"] == citizen_sub
    assert claims["acr"] == "Counter"
    assert claims["act"] == {"sub": clerk_sub, "role": "clerk"}
    assert claims["scope"] == "services:call"

    # The case: the clerk as actor; the window queue (the clerk's own token) lists it.
    status, case = await api_get(sso, clerk.access_token, f"/api/v1/cases/{case_id}")
    assert status == 200, case
    assert case["actor"] == clerk_sub
    assert case["service"] == "disability-card"
    status, queue = await api_get(sso, clerk.access_token, "/api/v1/cases?queue=window")
    assert [c["case_id"] for c in queue["cases"]] == [case_id]

    # 苏兰心 follows it at the Qinghai portal, signed in through her own platform.
    async with browser() as citizen:
        await sign_in(sso, citizen, "qh-100233")
        mine = only_session(sso.portal(QH))
        status, listing = await api_get(sso, mine.access_token, "/api/v1/cases")
        assert status == 200, listing
        assert case_id in [c["case_id"] for c in listing["cases"]]

    # The trail: the clerk's staff login, the exchange, the case under principal and actor.
    logins = [r.event for r in await _wait_for(tmp_path, ("login",), 2)]
    staff_login = next(e for e in logins if e.extra.get("idp") == STAFF_IDP)
    assert (staff_login.principal, staff_login.client, staff_login.extra["staff"]) == (
        clerk_sub,
        WINDOW_CLIENT,
        True,
    )
    issued = [r.event for r in await _wait_for(tmp_path, ("token_issued",), 4)]
    exchanges = [e for e in issued if e.operation == "token_exchange"]
    assert len(exchanges) == 2  # the console's intake and the one above
    for event in exchanges:
        assert (event.principal, event.actor, event.identity_level, event.client) == (
            citizen_sub,
            clerk_sub,
            "Counter",
            WINDOW_CLIENT,
        )
        assert event.extra["refresh_token"] is False
    transitions = [
        r.event
        for r in await _records(tmp_path, ("case_transition",))
        if r.event.case_id == case_id
    ]
    assert transitions, "the case's transitions are in the trail"
    assert {(e.principal, e.actor) for e in transitions} >= {(citizen_sub, clerk_sub)}
    everything: list[AuditRecord] = await _records(tmp_path, ())
    text = " ".join(r.text for r in everything)
    for value in (SU_LANXIN.id_number, counter["access_token"], clerk.access_token):
        assert value not in text


async def test_clerk_logout_revokes_her_counter_tokens(sso: Sso) -> None:  # noqa: F811
    portal, desk = console(sso)
    async with browser() as b:
        page = await (await clerk_sign_in(sso, b)).text()
        clerk = only_clerk(portal)
        status, counter = await exchange(sso, desk, clerk.access_token, SU_LANXIN.id_number)
        assert status == 200, counter
        csrf = re.search(r"name='csrf' value='([^']+)'", page)
        assert csrf is not None
        bye = await b.post(f"{portal.base_url}/window/logout", data={"csrf": csrf.group(1)})
        assert bye.status == 200
        assert str(bye.url) == f"{portal.base_url}/window"
        assert not portal.clerk_sessions
    for token in (clerk.access_token, counter["access_token"]):
        status, _ = await api_get(sso, token, "/api/v1/cases?queue=window")
        assert status == 401


async def test_a_trainee_without_an_allowed_role_is_refused(
    sso: Sso,  # noqa: F811
    tmp_path: Path,
) -> None:
    portal, _ = console(sso)
    async with browser() as b:
        refused = await clerk_sign_in(sso, b, "trainee-61-0031")
        assert refused.status == 400
        assert "staff_role_missing" in await refused.text()
        assert sso.authenticator.settings.cookie_name not in {c.key for c in b.cookie_jar}
    assert not portal.clerk_sessions
    (login,) = [r.event for r in await _wait_for(tmp_path, ("login",), 1)]
    assert (login.outcome, login.error_code, login.client) == (
        "denied",
        "staff_role_missing",
        WINDOW_CLIENT,
    )


async def test_a_citizen_platform_asserting_roles_is_not_believed(sso: Sso) -> None:  # noqa: F811
    portal, desk = console(sso)
    # The Qinghai (citizen) platform claims 苏兰心 is a clerk: the gateway never reads it.
    sso.idp_state.extra_claims = {"roles": ["clerk", "operator"], "窗口受理": True}
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        citizen = only_session(sso.portal(QH))
        claims = unverified_claims(citizen.access_token)
        assert "roles" not in claims
        status, _ = await api_get(sso, citizen.access_token, "/api/v1/cases?queue=window")
        assert status == 403, "no window queue for a citizen"

        # Her session does not satisfy the window client: the gateway asks for a staff login,
        # and offers no citizen platform.
        html, _ = await gateway_login_page(sso, b)
        assert _IDP_CHOICE.findall(html) == [STAFF_IDP]
        assert not portal.clerk_sessions

    # Nor can her token act at the window: another client's token, and no clerk in it.
    status, body = await exchange(sso, desk, citizen.access_token, SU_LANXIN.id_number)
    assert (status, body["error"]) == (400, "invalid_request")


async def test_a_clerks_session_does_not_sign_her_in_at_a_citizen_portal(
    sso: Sso,  # noqa: F811
) -> None:
    async with browser() as b:
        await clerk_sign_in(sso, b)
        # The same browser at the Shaanxi citizen portal: the login page offers citizen
        # platforms only, never the staff directory, and nobody is signed in silently.
        page = await b.get(f"{sso.portal(SX).base_url}/login")
        html = await page.text()
        assert str(page.url).startswith(f"{sso.gateway}/login?tx=")
        choices = _IDP_CHOICE.findall(html)
        assert STAFF_IDP not in choices
        assert "qinghai" in choices
        assert not sso.portal(SX).sessions
        # A staff directory posted anyway is refused.
        fields = dict(_HIDDEN.findall(html))
        forced = await b.post(f"{sso.gateway}/login", data={**fields, "idp": STAFF_IDP})
        assert forced.status == 400
        assert "unknown_identity_platform" in await forced.text()
