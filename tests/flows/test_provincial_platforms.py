"""The platform kinds over real loopback HTTP and SOAP: every upstream kind beside OIDC reaches
the same internal identity; one citizen through two provinces is one person; the legacy system
signs in through the ticket and CAS faces; and the refusals of bad input and attacks, each a
test.
"""

from __future__ import annotations

import html
import io
import itertools
import os
import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from pydantic import SecretStr
from yarl import URL

from gateway.demo.guangdong_idp import GuangdongIdpState
from gateway.demo.legacy_system import APP_CODE, LegacySystemState
from gateway.demo.legal_idp import ACCOUNTS, LegalIdpState
from gateway.demo.residents import MA_WENHUA, SU_LANXIN, ZHAO_YIMING
from gateway.demo.ticket_idp import BAD_CHECKSUM, LI_QIUSHUI, TicketPlatformState
from gateway.identity.citizen import ClaimMapping, LevelRule
from gateway.identity.signing import SignatureSettings, sign_request
from gateway.identity.ticket_soap import header_signed_fields
from gateway.identity.upstream import IdpName, UpstreamError, UpstreamLogin
from gateway.identity.upstream_kinds import TicketIdpSettings
from gateway.identity.upstream_ticket import TicketUpstream
from tests.flows.conftest import CONFIG_DIR
from tests.flows.test_federated_sso import (
    QH,
    SX,
    Sso,
    browser,
    only_session,
    sign_in,
)
from tests.flows.test_federated_sso import sso as sso  # noqa: PLC0414 - the shared fixture

_HIDDEN = re.compile(r"<input type='hidden' name='(\w+)' value='([^']*)'>")
_ACTION = re.compile(r"<form method='post' action='([^']+)'")
_TX = re.compile(r"name='tx' value='([^']+)'")
_CSRF = re.compile(r"name='csrf' value='([^']+)'")
OTHER = (LI_QIUSHUI, BAD_CHECKSUM)


def ticking() -> Any:
    """A clock one second later at every call (signatures carry second-level times)."""
    start = time.time()
    ticks = itertools.count()
    return lambda: start + next(ticks)


def platforms(sso: Sso) -> Any:
    assert sso.identity.platforms is not None
    return sso.identity.platforms


async def post_form(
    b: aiohttp.ClientSession, page: aiohttp.ClientResponse, **fields: str
) -> aiohttp.ClientResponse:
    """Submit the first form of ``page`` with its hidden fields and ``fields``."""
    text = await page.text()
    action = _ACTION.search(text)
    assert action, text[:400]
    data = {k: html.unescape(v) for k, v in _HIDDEN.findall(text)}
    data.update(fields)
    target = page.url.join(URL(html.unescape(action.group(1))))
    return await b.post(target, data=data)


async def login_page(sso: Sso, b: aiohttp.ClientSession, portal: str = SX) -> Any:
    page = await b.get(f"{sso.portal(portal).base_url}/login")
    assert str(page.url).startswith(f"{sso.gateway}/login?tx="), str(page.url)
    return page


async def choose(sso: Sso, b: aiohttp.ClientSession, idp: str, portal: str = SX) -> Any:
    page = await login_page(sso, b, portal)
    text = await page.text()
    tx, csrf = _TX.search(text), _CSRF.search(text)
    assert tx
    assert csrf
    return await b.post(
        f"{sso.gateway}/login", data={"tx": tx.group(1), "csrf": csrf.group(1), "idp": idp}
    )


async def sign_in_at(
    sso: Sso, b: aiohttp.ClientSession, idp: str, user: str, portal: str = SX
) -> aiohttp.ClientResponse:
    """Portal → login page → platform's own form → (assertion post) → back at the portal."""
    form = await choose(sso, b, idp, portal)
    assert form.status == 200, await form.text()
    done = await post_form(b, form, user=user, password="demo")
    if idp == "shaanxi-legal" and done.status == 200 and "assertion" in await done.text():
        done = await post_form(b, done)  # the auto-submitting form, as a browser would
    return done


async def session_attributes(sso: Sso) -> dict[str, str]:
    """The attributes kept for the one session the portal (``SX``) holds, found by its ``sid``."""
    sid = only_session(sso.portal(SX)).sid
    assert sid is not None
    attributes = await sso.authenticator.store.get_pending(f"attrs:{sid}")
    assert attributes is not None
    return attributes


# --- each kind reaches the same internal identity ----------------------------------------------

SHAPE = {"local_id", "level", "authlevel", "authlevelscale", "applicanttype", "usertype"}


@pytest.mark.parametrize(
    ("idp", "user", "level", "raw", "scale", "name"),
    [
        ("shaanxi", "sx-200101", "L3", "3", "zhejiang-authlevel", MA_WENHUA.name),
        ("shaanxi-soap", "sx-200102", "L2", "2", "zhejiang-authlevel", ZHAO_YIMING.name),
        ("gansu", "gs-300102", "L2", "0/1", "gansu-isauth-authstate", "段浩然"),
        ("guangdong", "gd-400101", "L3", "L4", "guangdong-trust-level", ZHAO_YIMING.name),
    ],
)
async def test_natural_person_through_each_kind(
    sso: Sso, idp: str, user: str, level: str, raw: str, scale: str, name: str
) -> None:
    async with browser() as b:
        home = await sign_in_at(sso, b, idp, user)
        assert home.status == 200, await home.text()
        assert str(home.url) == f"{sso.portal(SX).base_url}/"
        assert name in await home.text()
        assert only_session(sso.portal(SX)).acr == level
    attributes = await session_attributes(sso)
    assert set(attributes) >= SHAPE
    assert attributes["level"] == level
    assert (attributes["authlevel"], attributes["authlevelscale"]) == (raw, scale)
    assert attributes["applicanttype"] == "1"
    assert attributes["usertype"] == "natural"
    assert attributes["idtype"] == "111"
    assert attributes["local_id"].startswith("person:")  # linked across provinces
    assert "*" in attributes["idnum"]  # masked at once: no platform keeps the number


async def test_guangdong_quirks_token_by_get_with_secret_and_init_service(sso: Sso) -> None:
    async with browser() as b:
        await sign_in_at(sso, b, "guangdong", "gd-400102")
    gd: GuangdongIdpState = platforms(sso).guangdong
    (request,) = gd.token_requests
    assert request["service"] == "initService"
    assert request["client_secret"] == "***"  # it came in the query string
    attributes = await session_attributes(sso)
    assert attributes["region"] == "440106"  # from an extproperties "k=v" string
    assert (attributes["level"], attributes["authlevel"]) == ("L2", "L3")


async def test_legal_person_through_a_signed_assertion(sso: Sso) -> None:
    async with browser() as b:
        home = await sign_in_at(sso, b, "shaanxi-legal", "lp-500101")
        assert str(home.url) == f"{sso.portal(SX).base_url}/", await home.text()
        assert only_session(sso.portal(SX)).acr == "LP"
    attributes = await session_attributes(sso)
    account = ACCOUNTS[0]
    assert attributes["usertype"] == "legal"
    assert attributes["applicanttype"] == "2"  # organisation type 1 企业法人
    assert attributes["uniscid"] == account.enterprise.credit_code
    assert attributes["orgname"] == account.enterprise.name
    assert (attributes["authlevel"], attributes["authlevelscale"]) == ("1", "zhejiang-reallevel")
    assert attributes["local_id"].startswith(f"legal:{account.enterprise.credit_code}:")


async def test_two_agents_of_one_enterprise_are_two_accounts(sso: Sso) -> None:
    subjects: list[str] = []
    actors: list[dict[str, Any]] = []
    for user in ("lp-500101", "lp-500102"):
        async with browser() as b:
            await sign_in_at(sso, b, "shaanxi-legal", user)
            session = only_session(sso.portal(SX))
            subjects.append(session.subject)
            claims = jwt.decode(session.access_token, sso.provider.keys.public_key_set()).claims
            assert "act" in claims, "an LP token names its operator as actor"
            actors.append(claims["act"])
            sso.portal(SX).sessions.clear()
    assert subjects[0] != subjects[1]  # same credit code, never merged
    # The enterprise account acts through its operator, who is in the token too:
    # as an agent, under a pairwise id of the portal's own (never the link key or ID number).
    assert [a["role"] for a in actors] == ["agent", "agent"]
    assert actors[0]["sub"] != actors[1]["sub"]
    assert {a["sub"] for a in actors}.isdisjoint(subjects)
    assert all(len(a["sub"]) == len(subjects[0]) for a in actors), "pairwise form, like sub"


# --- one citizen, two provinces ---------------------------------------------------------------


async def test_same_citizen_through_shaanxi_then_qinghai_is_one_person(sso: Sso) -> None:
    async with browser() as b:
        await sign_in_at(sso, b, "shaanxi", "sx-200101", portal=SX)  # 马文华 in Shaanxi
        through_shaanxi = only_session(sso.portal(SX)).subject
        # The Qinghai portal in the same browser: no prompt at all.
        page = await b.get(f"{sso.portal(QH).base_url}/login")
        assert str(page.url) == f"{sso.portal(QH).base_url}/"
        first_qh = only_session(sso.portal(QH)).subject
    sso.portal(QH).sessions.clear()
    sso.portal(SX).sessions.clear()
    async with browser() as b:
        await sign_in(sso, b, "qh-100231")  # 马文华 again, now through Qinghai's OIDC
        assert only_session(sso.portal(QH)).subject == first_qh
        page = await b.get(f"{sso.portal(SX).base_url}/login")
        assert only_session(sso.portal(SX)).subject == through_shaanxi
    assert through_shaanxi != first_qh  # pairwise: still different per portal


# --- the legacy system: ticket face and CAS face ------------------------------------------------


async def test_legacy_system_signs_in_through_the_ticket_face_without_a_prompt(
    sso: Sso, log_stream: io.BytesIO
) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    async with browser() as b:
        await sign_in(sso, b, "qh-100231", face=True)  # through Qinghai's OIDC platform
        page = await b.get(f"{legacy.base_url}/sso/login")
        assert str(page.url) == f"{legacy.base_url}/", await page.text()
        assert all(not str(h.url).startswith(sso.idp_state.issuer) for h in page.history)
    (session,) = legacy.sessions.values()
    released = session["attributes"]
    assert set(released) == {
        "userid",
        "name",
        "idtype",
        "idnum",
        "mobile",
        "level",
        "authlevel",
        "authlevelscale",
        "applicanttype",
    }
    assert released["name"] == MA_WENHUA.name  # entitled unmasked
    assert released["idnum"] != MA_WENHUA.id_number
    assert "*" in released["idnum"]
    assert released["mobile"] == "138****1234"
    assert released["level"] == "L3"
    tickets = [
        q["ticket"][0]
        for h in page.history
        if (q := parse_qs(urlsplit(str(h.url)).query)) and "ticket" in q
    ]
    assert tickets
    text = log_stream.getvalue().decode()
    assert all(t not in text for t in tickets), "a ticket reached the log"


async def test_legacy_cas_face_releases_masked_entitled_attributes(sso: Sso) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        page = await b.get(f"{legacy.base_url}/cas/login")
        assert str(page.url) == f"{legacy.base_url}/", await page.text()
    (session,) = legacy.sessions.values()
    assert session["face"] == "cas"
    released = session["attributes"]
    assert set(released) == {"userid", "name", "level", "applicanttype"}
    assert released["name"] == "苏**"  # not in `unmasked`: the desensitisation rule applies
    assert released["level"] == "L2"


async def test_cas_ticket_is_one_time_and_bound_to_its_service(sso: Sso) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        first = await b.get(
            f"{sso.gateway}/cas/login",
            params={"service": legacy.cas_service},
            allow_redirects=False,
        )
        ticket = parse_qs(urlsplit(first.headers["Location"]).query)["ticket"][0]
        other = f"{legacy.base_url}/cas/elsewhere"
        wrong = await b.get(
            f"{sso.gateway}/cas/serviceValidate", params={"service": other, "ticket": ticket}
        )
        assert 'code="INVALID_SERVICE"' in await wrong.text()
        # Invalidated by the failed attempt too (CAS 3.0 §3.1.1).
        again = await b.get(
            f"{sso.gateway}/cas/serviceValidate",
            params={"service": legacy.cas_service, "ticket": ticket},
        )
        assert 'code="INVALID_TICKET"' in await again.text()
        unknown = await b.get(f"{sso.gateway}/cas/login", params={"service": "http://evil.test/"})
        assert unknown.status == 400


async def _ticket_for_legacy(sso: Sso, b: aiohttp.ClientSession) -> str:
    legacy: LegacySystemState = platforms(sso).legacy
    await sign_in(sso, b, "qh-100231", face=True)
    start = await b.get(
        f"{sso.gateway}/legacy/ticket/login",
        params={"servicecode": APP_CODE, "goto": legacy.callback},
        allow_redirects=False,
    )
    assert start.status == 302
    return parse_qs(urlsplit(start.headers["Location"]).query)["ticket"][0]


async def _face_call(
    sso: Sso,
    operation: str,
    params: dict[str, str],
    *,
    secret: str | None = None,
    now: float,
    app: str = APP_CODE,
) -> dict[str, Any]:
    legacy: LegacySystemState = platforms(sso).legacy
    signed, _ = sign_request(
        SignatureSettings(scheme="md5", code_param="servicecode"),
        app,
        secret or legacy.secret,
        method="POST",
        path="",
        params={},
        now=now,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sso.gateway}/legacy/ticket/{operation}", data={**params, **signed}
        ) as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json(content_type=None)
        return body


async def test_ticket_face_refusals(sso: Sso) -> None:
    now = sso.authenticator.clock()
    async with browser() as b:
        ticket = await _ticket_for_legacy(sso, b)
    # Wrong signature, timestamp outside the window, unknown app: refused before the ticket.
    bad = await _face_call(sso, "ticketValidation", {"st": ticket}, secret="x" * 32, now=now)
    assert bad["result"] == "6101"
    old = await _face_call(sso, "ticketValidation", {"st": ticket}, now=now - 3600)
    assert old["result"] == "6102"
    # A forged ticket.
    forged = await _face_call(sso, "ticketValidation", {"st": "forged-ticket"}, now=now)
    assert forged["result"] == "6001"
    # The real one works once; its replay (a new signature) is refused as a spent ticket.
    ok = await _face_call(sso, "ticketValidation", {"st": ticket}, now=now + 1)
    assert ok["result"] == "0"
    replay = await _face_call(sso, "ticketValidation", {"st": ticket}, now=now + 2)
    assert replay["result"] == "6001"
    # The exact same signed request again: the nonce cache refuses it.
    same = await _face_call(sso, "ticketValidation", {"st": ticket}, now=now + 2)
    assert same["result"] == "6103"
    token = str(ok["token"])
    info = await _face_call(sso, "getUserInfo", {"token": token}, now=now + 3)
    assert info["result"] == "0"
    # An app asking for attributes it is not entitled to is refused, not trimmed.
    greedy = await _face_call(
        sso, "getUserInfo", {"token": token, "attrs": "name,uniscid"}, now=now + 4
    )
    assert greedy["result"] == "6601"
    assert "user" not in greedy
    forged_token = await _face_call(sso, "getUserInfo", {"token": "nope"}, now=now + 5)
    assert forged_token["result"] == "6501"


async def test_ticket_face_over_soap_with_the_gateways_own_zeep_client(sso: Sso) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    async with browser() as b:
        ticket = await _ticket_for_legacy(sso, b)
    settings = TicketIdpSettings(
        kind="ticket",
        province="61",
        name=IdpName(zh="门面", en="face"),
        login_url=f"{sso.gateway}/legacy/ticket/login",
        service_url=f"{sso.gateway}/legacy/ticket/soap",
        transport="soap",
        wsdl="wsdl/identity-ticket.wsdl",
        app_code=APP_CODE,
        app_secret=SecretStr(legacy.secret),
        claims=ClaimMapping(level=LevelRule(scale="x", map={"L3": "L3"})),
    )
    async with httpx.AsyncClient() as http:
        # A ticking clock: two identical md5 calls within one second are refused as replays.
        client = TicketUpstream("face", settings, http, config_dir=CONFIG_DIR, clock=ticking())
        validated = await client.call("validate", ticket)
        info = await client.call("userinfo", str(validated["token"]))
        assert info["user"]["name"] == MA_WENHUA.name
        with pytest.raises(UpstreamError) as refused:
            await client.call("validate", ticket)
        assert refused.value.reason == "ticket_invalid"


async def test_cross_app_ticket_is_refused(sso: Sso) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    async with browser() as b:
        await sign_in(sso, b, "qh-100231")
        start = await b.get(
            f"{sso.gateway}/cas/login",
            params={"service": legacy.cas_service},
            allow_redirects=False,
        )
        cas_ticket = parse_qs(urlsplit(start.headers["Location"]).query)["ticket"][0]
    # A CAS service's ticket presented at the ticket face by the registry app.
    refused = await _face_call(
        sso, "ticketValidation", {"st": cas_ticket}, now=sso.authenticator.clock()
    )
    assert refused["result"] == "6001"


async def test_ticket_face_refuses_an_unregistered_callback(sso: Sso) -> None:
    async with browser() as b:
        response = await b.get(
            f"{sso.gateway}/legacy/ticket/login",
            params={"servicecode": APP_CODE, "goto": "http://127.0.0.1:1/steal"},
            allow_redirects=False,
        )
        assert response.status == 400


# --- upstream refusals -------------------------------------------------------------------------


async def _at_platform_form(sso: Sso, b: aiohttp.ClientSession, idp: str) -> Any:
    form = await choose(sso, b, idp)
    assert form.status == 200
    return form


async def test_upstream_result_codes_become_clear_errors(sso: Sso) -> None:
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    for code, reason in (
        ("6002", "ticket_invalid"),
        ("6501", "token_invalid"),
        ("9999", "upstream_error"),
    ):
        shaanxi.force_result = code
        async with browser() as b:
            form = await _at_platform_form(sso, b, "shaanxi")
            refused = await post_form(b, form, user="sx-200101", password="demo")
            assert refused.status == 400
            assert reason in await refused.text()
    assert sso.portal(SX).sessions == {}


async def test_forged_and_replayed_tickets_are_refused(sso: Sso) -> None:
    configured = sso.authenticator.idps["shaanxi"]
    assert isinstance(configured, TicketUpstream)
    idp = TicketUpstream(
        "shaanxi", configured.settings, configured._http, config_dir=CONFIG_DIR, clock=ticking()
    )
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb")
    with pytest.raises(UpstreamError) as refused:
        await idp.complete({"state": "s", "ticket": "forged"}, login)
    assert refused.value.reason == "ticket_invalid"
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    shaanxi.tickets["known"] = {"user": "sx-200101", "expires": shaanxi.clock() + 300}
    identity = await idp.complete({"state": "s", "ticket": "known"}, login)
    assert identity.level == "L3"
    asked = len(shaanxi.calls)
    with pytest.raises(UpstreamError) as replayed:
        await idp.complete({"state": "s", "ticket": "known"}, login)
    # The gateway's own used-ticket record refuses it before the platform is asked.
    assert replayed.value.reason == "ticket_replayed"
    assert len(shaanxi.calls) == asked
    shaanxi.tickets["old"] = {"user": "sx-200101", "expires": shaanxi.clock() - 1}
    with pytest.raises(UpstreamError) as expired:
        await idp.complete({"state": "s", "ticket": "old"}, login)
    assert expired.value.reason == "ticket_invalid"
    with pytest.raises(UpstreamError) as other_login:
        await idp.complete({"state": "other", "ticket": "x"}, login)
    assert other_login.value.reason == "state_mismatch"


async def test_wrong_signature_towards_the_platform_is_an_upstream_error(sso: Sso) -> None:
    idp = sso.authenticator.idps["gansu"]
    assert isinstance(idp, TicketUpstream)
    forged = TicketUpstream(
        "gansu",
        idp.settings.model_copy(update={"app_secret": SecretStr("wrong-secret")}),
        idp._http,
        config_dir=CONFIG_DIR,
    )
    gansu: TicketPlatformState = platforms(sso).gansu
    gansu.tickets["t"] = {"user": "gs-300101", "expires": gansu.clock() + 300}
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb")
    with pytest.raises(UpstreamError) as refused:
        await forged.complete({"state": "s", "ticket": "t"}, login)
    assert refused.value.reason == "upstream_error"
    assert "t" in gansu.tickets  # refused before the ticket was looked at


async def test_malformed_user_info_and_checksum_failures_are_refused(sso: Sso) -> None:
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    shaanxi.malformed_userinfo = True
    async with browser() as b:
        form = await _at_platform_form(sso, b, "shaanxi")
        refused = await post_form(b, form, user="sx-200101", password="demo")
        assert "userinfo_malformed" in await refused.text()
    shaanxi.malformed_userinfo = False
    async with browser() as b:
        form = await _at_platform_form(sso, b, "shaanxi")
        refused = await post_form(b, form, user="sx-200199", password="demo")  # bad ID checksum
        assert refused.status == 400
        assert "claims_unusable" in await refused.text()
    async with browser() as b:
        refused = await sign_in_at(sso, b, "shaanxi-legal", "lp-500199")  # bad credit code
        assert refused.status == 400
        assert "claims_unusable" in await refused.text()
    assert sso.portal(SX).sessions == {}


async def test_province_down_is_named_on_the_login_page(sso: Sso) -> None:
    platforms(sso).gansu.down = True
    async with browser() as b:
        page = await login_page(sso, b)
        text = await page.text()
        assert "data-idp='gansu'" in text
        assert "name='idp' value='gansu'" not in text
        assert "name='idp' value='shaanxi'" in text


async def test_slow_province_is_bounded_by_the_timeout(sso: Sso) -> None:
    gansu: TicketPlatformState = platforms(sso).gansu
    idp = sso.authenticator.idps["gansu"]
    assert isinstance(idp, TicketUpstream)
    slow = TicketUpstream("gansu", idp.settings, idp._http, config_dir=CONFIG_DIR, timeout=0.2)
    gansu.delay = 1.0
    gansu.tickets["t"] = {"user": "gs-300101", "expires": gansu.clock() + 300}
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb")
    with pytest.raises(UpstreamError) as refused:
        await slow.complete({"state": "s", "ticket": "t"}, login)
    assert refused.value.unavailable
    assert not await slow.available()


async def test_assertion_with_a_bad_signature_another_audience_or_replayed(sso: Sso) -> None:
    legal: LegalIdpState = platforms(sso).legal
    idp = sso.authenticator.idps["shaanxi-legal"]
    login = UpstreamLogin("st", "n", "v", "c", None, "http://127.0.0.1/cb")
    claims = legal.claims_for(ACCOUNTS[0], "st")
    intruder = ECKey.generate_key("P-256", auto_kid=True)
    cases = {
        "assertion_unknown_kid": legal.sign(claims, intruder),
        "assertion_wrong_audience": legal.sign({**claims, "aud": "another-gateway"}),
        "assertion_for_another_login": legal.sign({**claims, "state": "other"}),
        "assertion_claims_invalid": legal.sign({**claims, "exp": claims["iat"] - 3600}),
    }
    # Same kid, another key: the signature itself fails.
    forged_key = ECKey.generate_key("P-256", parameters={"kid": str(legal.key.kid)})
    cases["assertion_signature_invalid"] = legal.sign(claims, forged_key)
    for reason, assertion in cases.items():
        with pytest.raises(UpstreamError) as refused:
            await idp.complete({"state": "st", "assertion": assertion}, login)
        # joserfc reports an unknown kid as a failed signature.
        assert refused.value.reason in {reason, "assertion_signature_invalid"}
    good = legal.sign(claims)
    identity = await idp.complete({"state": "st", "assertion": good}, login)
    assert identity.person_type == "legal"
    with pytest.raises(UpstreamError) as replayed:
        await idp.complete({"state": "st", "assertion": good}, login)
    assert replayed.value.reason == "assertion_replayed"


async def test_no_ticket_token_or_personal_data_in_the_log(
    sso: Sso, log_stream: io.BytesIO
) -> None:
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    async with browser() as b:
        await sign_in_at(sso, b, "shaanxi", "sx-200102")
    async with browser() as b:
        await sign_in_at(sso, b, "shaanxi-legal", "lp-500103")
    text = log_stream.getvalue().decode()
    for token in shaanxi.tokens:
        assert token not in text
    for assertion in platforms(sso).legal.assertions:
        assert assertion not in text
    for person in (*OTHER, SU_LANXIN):
        assert person.id_number not in text


# --- proxy tickets (generateST) and HMAC-SHA256 header signatures over SOAP ---------------------

SECOND_APP = "sx-gjj-second"
SECOND_SECRET = "second-app-secret-0123456789abcdef"
PROXY_TARGET = "SX_GJJ_QUERY"  # legacy-apps.yaml: SX_BDC_QUERY may_proxy_to it


def _as_app(settings: TicketIdpSettings, app: str, secret: str) -> TicketIdpSettings:
    return settings.model_copy(update={"app_code": app, "app_secret": SecretStr(secret)})


@pytest.mark.parametrize("pid", ["shaanxi", "shaanxi-soap"])
async def test_upstream_proxy_ticket_is_one_time_and_bound_to_its_app(
    sso: Sso, log_stream: io.BytesIO, pid: str
) -> None:
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    shaanxi.other_apps[SECOND_APP] = SECOND_SECRET
    configured = sso.authenticator.idps[pid]
    assert isinstance(configured, TicketUpstream)
    gateway = TicketUpstream(
        pid, configured.settings, configured._http, config_dir=CONFIG_DIR, clock=ticking()
    )
    second = TicketUpstream(
        "second",
        _as_app(configured.settings, SECOND_APP, SECOND_SECRET),
        configured._http,
        config_dir=CONFIG_DIR,
        clock=ticking(),
    )
    shaanxi.tickets["login"] = {"user": "sx-200101", "expires": shaanxi.clock() + 300}
    token = str((await gateway.call("validate", "login"))["token"])
    proxy = await gateway.proxy_ticket(token, SECOND_APP)
    # The second app validates it with its own ticketValidation, once.
    validated = await second.call("validate", proxy)
    assert validated["userid"] == "sx-200101"
    info = await second.call("userinfo", str(validated["token"]))
    assert info["user"]["username"] == MA_WENHUA.name
    with pytest.raises(UpstreamError) as replayed:
        await second.call("validate", proxy)
    assert replayed.value.reason == "ticket_invalid"
    # Presented by another app than the one it was issued for (the gateway itself).
    other = await gateway.proxy_ticket(token, SECOND_APP)
    with pytest.raises(UpstreamError) as wrong_app:
        await gateway.call("validate", other)
    assert wrong_app.value.reason == "ticket_invalid"
    # An app the platform does not know; a token that is not the caller's.
    with pytest.raises(UpstreamError) as unknown:
        await gateway.proxy_ticket(token, "not-registered")
    assert unknown.value.reason == "upstream_error"
    with pytest.raises(UpstreamError) as not_yours:
        await second.proxy_ticket(token, SECOND_APP)
    assert not_yours.value.reason == "token_invalid"
    text = log_stream.getvalue().decode()
    assert proxy not in text
    assert other not in text


async def _legacy_token(sso: Sso, now: float) -> str:
    async with browser() as b:
        ticket = await _ticket_for_legacy(sso, b)
    validated = await _face_call(sso, "ticketValidation", {"st": ticket}, now=now)
    assert validated["result"] == "0"
    return str(validated["token"])


async def test_legacy_proxy_ticket_issued_validated_once_by_its_app(
    sso: Sso, log_stream: io.BytesIO
) -> None:
    second_secret = os.environ["TONGBAN_SECRET_LEGACY_SX_GJJ"]
    now = sso.authenticator.clock()
    token = await _legacy_token(sso, now)
    issued = await _face_call(
        sso, "generateST", {"token": token, "proxyapp": PROXY_TARGET}, now=now + 1
    )
    assert issued["result"] == "0"
    proxy = str(issued["ticket"])
    as_second = {"app": PROXY_TARGET, "secret": second_secret}
    validated = await _face_call(sso, "ticketValidation", {"st": proxy}, now=now + 2, **as_second)
    assert validated["result"] == "0", validated
    info = await _face_call(
        sso, "getUserInfo", {"token": str(validated["token"])}, now=now + 3, **as_second
    )
    assert info["result"] == "0"
    # The second app's own entitlements and pairwise id, masked by its rules.
    assert set(info["user"]) == {"userid", "name", "level"}
    assert info["user"]["name"] == "马**"
    assert info["user"]["userid"] == validated["userid"]
    replay = await _face_call(sso, "ticketValidation", {"st": proxy}, now=now + 4, **as_second)
    assert replay["result"] == "6001"
    # A fresh proxy ticket presented by the app that asked for it, not the one it is for.
    again = await _face_call(
        sso, "generateST", {"token": token, "proxyapp": PROXY_TARGET}, now=now + 5
    )
    wrong = await _face_call(sso, "ticketValidation", {"st": str(again["ticket"])}, now=now + 6)
    assert wrong["result"] == "6002"
    # Not in may_proxy_to: a CAS app, itself, an unknown app; nor back from the second app.
    for n, target in enumerate(("sx-hrss-cas", APP_CODE, "NOPE")):
        refused = await _face_call(
            sso, "generateST", {"token": token, "proxyapp": target}, now=now + 7 + n
        )
        assert refused["result"] == "6602", target
        assert "ticket" not in refused
    back = await _face_call(
        sso,
        "generateST",
        {"token": str(validated["token"]), "proxyapp": APP_CODE},
        now=now + 10,
        **as_second,
    )
    assert back["result"] == "6602"
    # Another app's token is not the caller's.
    stolen = await _face_call(
        sso, "generateST", {"token": token, "proxyapp": APP_CODE}, now=now + 11, **as_second
    )
    assert stolen["result"] == "6502"
    text = log_stream.getvalue().decode()
    assert proxy not in text
    assert str(again["ticket"]) not in text


async def test_legacy_proxy_ticket_over_soap_with_the_gateways_own_zeep_client(sso: Sso) -> None:
    legacy: LegacySystemState = platforms(sso).legacy
    token = await _legacy_token(sso, sso.authenticator.clock())
    settings = TicketIdpSettings(
        kind="ticket",
        province="61",
        name=IdpName(zh="门面", en="face"),
        login_url=f"{sso.gateway}/legacy/ticket/login",
        service_url=f"{sso.gateway}/legacy/ticket/soap",
        transport="soap",
        wsdl="wsdl/identity-ticket.wsdl",
        app_code=APP_CODE,
        app_secret=SecretStr(legacy.secret),
        operations={
            "validate": "ticketValidation",
            "userinfo": "getUserInfo",
            "proxy": "generateST",
        },
        claims=ClaimMapping(level=LevelRule(scale="x", map={"L3": "L3"})),
    )
    second_settings = _as_app(settings, PROXY_TARGET, os.environ["TONGBAN_SECRET_LEGACY_SX_GJJ"])
    async with httpx.AsyncClient() as http:
        client = TicketUpstream("face", settings, http, config_dir=CONFIG_DIR, clock=ticking())
        second = TicketUpstream(
            "face2", second_settings, http, config_dir=CONFIG_DIR, clock=ticking()
        )
        proxy = await client.proxy_ticket(token, PROXY_TARGET)
        validated = await second.call("validate", proxy)
        info = await second.call("userinfo", str(validated["token"]))
        assert info["user"]["level"] == "L3"
        with pytest.raises(UpstreamError) as replayed:
            await second.call("validate", proxy)
        assert replayed.value.reason == "ticket_invalid"
        with pytest.raises(UpstreamError) as refused:
            await client.proxy_ticket(token, "sx-hrss-cas")
        assert refused.value.reason == "upstream_error"


async def test_hmac_header_signatures_over_soap(sso: Sso) -> None:
    shaanxi: TicketPlatformState = platforms(sso).shaanxi
    shaanxi.soap_signature = SignatureSettings(scheme="hmac-sha256")
    configured = sso.authenticator.idps["shaanxi-soap"]
    assert isinstance(configured, TicketUpstream)
    hmac_settings = configured.settings.model_copy(
        update={"signature": SignatureSettings(scheme="hmac-sha256")}
    )
    idp = TicketUpstream("shaanxi-soap", hmac_settings, configured._http, config_dir=CONFIG_DIR)
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb")
    shaanxi.tickets["h"] = {"user": "sx-200102", "expires": shaanxi.clock() + 300}
    identity = await idp.complete({"state": "s", "ticket": "h"}, login)
    assert identity.level == "L2"
    # A wrong secret, and the platform's md5 scheme where headers are expected: refused before
    # the ticket is looked at.
    shaanxi.tickets["w"] = {"user": "sx-200102", "expires": shaanxi.clock() + 300}
    for settings in (
        _as_app(hmac_settings, hmac_settings.app_code, "wrong-secret-0123456789"),
        configured.settings,
    ):
        forged = TicketUpstream("x", settings, configured._http, config_dir=CONFIG_DIR)
        with pytest.raises(UpstreamError) as refused:
            await forged.complete({"state": "s", "ticket": "w"}, login)
        assert refused.value.reason == "upstream_error"
    assert "w" in shaanxi.tickets
    # The signature covers the operation and its arguments (both sides use this function).
    fields = {"app": "a", "time": "t", "sign": "", "arg": "x", "datatype": "json"}
    assert header_signed_fields("getUserInfo", fields) == {
        "operation": "getUserInfo",
        "arg": "x",
        "datatype": "json",
    }
