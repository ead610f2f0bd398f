"""Federated SSO over real loopback HTTP: portal A → gateway → Qinghai IdP → tokens → service call;
portal B signs in with no prompt; logout at A reaches B by back-channel. Then the refusals of the
federation side (bad input and attacks), each checked for having no side effect.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from joserfc import jwt
from yarl import URL

from gateway.app import create_app, open_provider
from gateway.demo.backends import (
    SHAANXI_DEGREE,
    SHAANXI_HOUSING,
    DemoBackends,
    DemoSecrets,
    start_demo_backends,
)
from gateway.demo.federation import DemoIdentity, DemoIdentitySecrets, start_demo_identity
from gateway.demo.portals import PortalState
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.demo.runner import demo_identity_env, point_at
from gateway.http.login import build_authenticator
from gateway.identity.assertion import verify_assertion
from gateway.identity.provider import OpenIDProvider
from gateway.identity.sqlite_sessions import FILE_NAME as SESSIONS_FILE
from gateway.identity.sqlite_sessions import SqliteSessionStore
from gateway.identity.sso import SessionAuthenticator
from gateway.identity.subject_keys import province_key, province_person_hash
from gateway.identity.upstream import UpstreamError, UpstreamLogin
from gateway.identity.upstream_oidc import OidcUpstream
from gateway.settings import load_settings
from tests.flows.conftest import CONFIG_DIR, audit_verify
from tests.ports import HeldPort

QH = "demo-portal-qinghai"
SX = "demo-portal-shaanxi"


@dataclass
class Sso:
    gateway: str
    provider: OpenIDProvider
    identity: DemoIdentity
    backends: DemoBackends
    secrets: list[str]
    """Every credential seen during the test: none may reach a log line."""

    @property
    def idp_state(self) -> Any:
        return self.identity.idp

    def portal(self, client_id: str) -> PortalState:
        return self.identity.portal(client_id)

    @property
    def authenticator(self) -> SessionAuthenticator:
        authenticator = self.provider.authenticator
        assert isinstance(authenticator, SessionAuthenticator)
        return authenticator


def browser() -> aiohttp.ClientSession:
    # unsafe=True: cookies for an IP host, as a browser keeps them (ports are ignored, RFC 6265).
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def sso(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Sso]:
    backend_secrets = DemoSecrets.generate()
    env = {**backend_secrets.env(), **demo_identity_env(tmp_path)}
    identity_secrets = DemoIdentitySecrets.from_env(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The gateway's port is held (bound, not listening) while the demo servers take ports of
    # their own, and handed to the server itself: nothing can take it in between.
    holder = HeldPort()
    port = holder.port
    gateway = f"http://127.0.0.1:{port}"
    try:
        async with (
            await start_demo_backends(backend_secrets, config_dir=CONFIG_DIR) as backends,
            await start_demo_identity(gateway, identity_secrets) as identity,
        ):
            settings = point_at(
                load_settings(CONFIG_DIR), backends.overrides(), tmp_path, port=port
            )
            settings = identity.configure(settings)
            # The flows run on the persistent session store (the product default is in-process):
            # every SSO journey then exercises sessions.sqlite end to end.
            assert settings.gateway.identity is not None
            identity_settings = settings.gateway.identity
            settings = dataclasses.replace(
                settings,
                gateway=settings.gateway.model_copy(
                    update={
                        "identity": identity_settings.model_copy(
                            update={
                                "session": identity_settings.session.model_copy(
                                    update={"store": "sqlite"}
                                )
                            }
                        )
                    }
                ),
            )
            provider = await open_provider(settings, build_authenticator(settings))
            assert provider is not None
            app = create_app(settings, verifier=provider.access_token_verifier(), oidc=provider)
            server = TestServer(
                app, host="127.0.0.1", port=port, socket_factory=holder.socket_factory
            )
            await server.start_server()
            try:
                yield Sso(gateway, provider, identity, backends, list(env.values()))
            finally:
                await server.close()
    finally:
        holder.close()
    # Every identity flow leaves a trail that `tongban audit verify` accepts.
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0
    text = log_stream.getvalue().decode()
    for secret in env.values():
        assert secret not in text, "a secret reached the log"


_REQUEST_ID = re.compile(r"name='request_id' value='([^']+)'")


async def idp_login(
    b: aiohttp.ClientSession, form_page: aiohttp.ClientResponse, user: str, *, face: bool = False
) -> aiohttp.ClientResponse:
    """Post the Qinghai platform's own login form; follows redirects back to the portal."""
    html = await form_page.text()
    match = _REQUEST_ID.search(html)
    assert match, html[:300]
    data = {"request_id": match.group(1), "user": user, "password": "demo"}
    if face:
        data["face"] = "1"
    return await b.post(str(form_page.url.with_path("/authorize").with_query({})), data=data)


async def sign_in(
    sso: Sso, b: aiohttp.ClientSession, user: str, *, face: bool = False
) -> aiohttp.ClientResponse:
    portal = sso.portal(QH)
    page = await b.get(f"{portal.base_url}/login")
    assert page.status == 200
    assert str(page.url).startswith(sso.idp_state.issuer), "idp_hint=63 goes straight to Qinghai"
    home = await idp_login(b, page, user, face=face)
    assert home.status == 200, await home.text()
    assert str(home.url) == f"{portal.base_url}/"
    return home


def only_session(portal: PortalState) -> Any:
    assert len(portal.sessions) == 1
    return next(iter(portal.sessions.values()))


_CALL_CSRF = re.compile(r"name='csrf' value='([0-9a-f]+)'")


async def call_via_portal(b: aiohttp.ClientSession, portal: PortalState, index: int) -> str:
    """Click the home page's call button: the form carries its CSRF token."""
    home = await (await b.get(f"{portal.base_url}/")).text()
    token = _CALL_CSRF.search(home)
    assert token, home[:300]
    data = {"call": str(index), "csrf": token.group(1)}
    response = await b.post(f"{portal.base_url}/call", data=data)
    assert response.status == 200
    return await response.text()


async def api_call(sso: Sso, token: str, service: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sso.gateway}/api/v1/services/{service}/calls",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def eventually(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


# --- the journey -----------------------------------------------------------------------------


async def test_sso_journey_two_portals_one_login_and_backchannel_logout(sso: Sso) -> None:
    portal_a, portal_b = sso.portal(QH), sso.portal(SX)
    async with browser() as b:
        home = await sign_in(sso, b, "qh-100233")  # 苏兰心, real name checked (L2)
        assert "苏兰心" in await home.text()
        session_a = only_session(portal_a)
        assert session_a.acr == "L2"
        assert sso.idp_state.token_requests == 1

        # A service call with the user's access token: S6 degree verification (L2 + consent).
        sso.backends.recorder(SHAANXI_DEGREE).clear()
        answer = await call_via_portal(b, portal_a, 0)
        assert "data-http-status='200'" in answer, answer
        received = sso.backends.recorder(SHAANXI_DEGREE).requests
        assert received, "the degree back-end was called"
        assertion = received[-1].context["identity_assertion"]
        async with aiohttp.ClientSession() as http:
            jwks = await (await http.get(f"{sso.gateway}/oauth2/jwks")).json()
        claims = verify_assertion(
            assertion,
            jwks,
            issuer=sso.gateway,
            audience=SHAANXI_DEGREE,
            now=sso.provider.clock(),
        )
        assert claims["sub"] == session_a.subject
        assert claims["acr"] == "L2"
        assert claims["purpose"] == "本人学历学位核验"
        # Whose data: the signed-in person herself, named by the hash Shaanxi computes from the
        # ID number it is asked about with its own subject key; no grant was needed.
        shaanxi_key = province_key(os.environ["TONGBAN_LINK_SECRET"], "61")
        assert claims["data_subjects"] == [
            {
                "type": "person",
                "hash": province_person_hash(shaanxi_key, "111", SU_LANXIN.id_number),
            }
        ]
        assert (claims["source_province"], claims["client_id"]) == ("63", QH)
        assert "grant" not in claims
        assert "authorisation_ref" not in claims
        assert SU_LANXIN.id_number not in assertion

        # Portal B: tokens with no login prompt (no new upstream login, no form on the way).
        page = await b.get(f"{portal_b.base_url}/login")
        assert str(page.url) == f"{portal_b.base_url}/"
        assert [str(h.url).split("?")[0] for h in page.history][
            -1
        ] == f"{portal_b.base_url}/callback"
        assert all(not str(h.url).startswith(sso.idp_state.issuer) for h in page.history)
        assert sso.idp_state.token_requests == 1
        session_b = only_session(portal_b)
        assert session_b.sid == session_a.sid
        assert session_b.subject != session_a.subject, "pairwise subjects per portal"
        sso.backends.recorder(SHAANXI_HOUSING).clear()
        status, answer = await api_call(
            sso,
            session_b.access_token,
            "housing-fund-transfer",
            portal_b.calls[0].body,
        )
        # B's own token is accepted for B's service (S4 account query, L2), but the demo's
        # account is 马文华's, not the signed-in 苏兰心's: the subject rule refuses it and the
        # fund centre is never asked.
        assert (status, answer["code"]) == (403, "client.not_data_subject"), answer
        assert sso.backends.recorder(SHAANXI_HOUSING).count == 0

        # Logout at A ends the SSO session; B hears it by back-channel and ends its session.
        bye = await b.get(f"{portal_a.base_url}/logout")
        assert str(bye.url) == f"{portal_a.base_url}/"
        assert portal_a.sessions == {}
        await eventually(lambda: portal_b.backchannel_logouts and not portal_b.sessions)
        logout_claims = portal_b.backchannel_logouts[0]
        assert logout_claims["sid"] == session_a.sid
        assert "nonce" not in logout_claims
        deliveries = await sso.authenticator.backchannel.queue.all()  # type: ignore[union-attr]
        assert {d.client_id for d in deliveries} == {QH, SX}
        # Grants of the session are revoked: the old access tokens no longer work.
        for token in (session_a.access_token, session_b.access_token):
            status, problem = await api_call(sso, token, "degree-verification", {})
            assert status == 401, problem
        # And a new authorization needs a login again.
        page = await b.get(f"{portal_b.base_url}/login")
        assert str(page.url).startswith(f"{sso.gateway}/login?tx=")


async def test_step_up_raises_the_level_for_a_while_then_falls_back(sso: Sso) -> None:
    portal = sso.portal(QH)
    async with browser() as b:
        await sign_in(sso, b, "qh-100231")  # 马文华 by password: level 2
        assert only_session(portal).acr == "L2"
        # S1 needs L3: refused, naming the level, with a step-up link.
        answer = await call_via_portal(b, portal, 1)
        assert "data-http-status='403'" in answer
        assert "client.insufficient_level" in answer
        assert "/login?acr=L3" in answer
        # Step-up: the gateway sends the browser back to Qinghai asking for level 3.
        page = await b.get(f"{portal.base_url}/login?acr=L3")
        assert str(page.url).startswith(sso.idp_state.issuer)
        assert "acr_values=3" in str(page.url)
        home = await idp_login(b, page, "qh-100231", face=True)
        assert str(home.url) == f"{portal.base_url}/"
        stepped = only_session(portal)
        assert stepped.acr == "L3"
        answer = await call_via_portal(b, portal, 1)
        assert "data-http-status='200'" in answer, answer
        # The elevated level lasts elevated_level_ttl, then the session falls back to L2.
        ttl = sso.authenticator.settings.elevated_level_ttl
        assert stepped.sid is not None
        key = await sso.authenticator.store.key_for_sid(stepped.sid)
        assert key is not None
        session = await sso.authenticator.store.get_session(key)
        assert session is not None
        assert session.level(sso.authenticator.clock() + ttl + 1) == "L2"
        assert session.level(sso.authenticator.clock()) == "L3"


# --- refusals --------------------------------------------------------------------------------


async def _start_at_idp(sso: Sso, b: aiohttp.ClientSession) -> dict[str, str]:
    """Start a login at portal A and stop at the platform's form; the upstream request's params."""
    page = await b.get(f"{sso.portal(QH).base_url}/login")
    assert str(page.url).startswith(sso.idp_state.issuer)
    return {k: v[0] for k, v in parse_qs(urlsplit(str(page.url)).query).items()}


async def test_upstream_state_mismatch_is_refused_before_any_token_request(sso: Sso) -> None:
    async with browser() as b:
        upstream = await _start_at_idp(sso, b)
        callback = f"{sso.gateway}/login/callback/qinghai"
        for state in ("forged-state", ""):
            response = await b.get(callback + "?" + urlencode({"code": "x", "state": state}))
            assert response.status == 400
            assert "state_mismatch" in await response.text()
        # The real state at the wrong platform's callback: refused too (mix-up).
        response = await b.get(
            f"{sso.gateway}/login/callback/gansu?"
            + urlencode({"code": "x", "state": upstream["state"]})
        )
        assert response.status == 400
        assert sso.idp_state.token_requests == 0
        assert sso.portal(QH).sessions == {}


async def test_upstream_error_is_refused_before_any_token_request(sso: Sso) -> None:
    async with browser() as b:
        upstream = await _start_at_idp(sso, b)
        response = await b.get(
            f"{sso.gateway}/login/callback/qinghai?"
            + urlencode({"error": "access_denied", "state": upstream["state"], "code": "x"})
        )
        assert response.status == 400
        assert "upstream_refused" in await response.text()
        assert sso.idp_state.token_requests == 0
        assert "tongban_sso" not in {c.key for c in b.cookie_jar}
        # The state is spent: replaying it with a code is refused too.
        response = await b.get(
            f"{sso.gateway}/login/callback/qinghai?"
            + urlencode({"state": upstream["state"], "code": "x"})
        )
        assert response.status == 400
        assert sso.idp_state.token_requests == 0


async def test_replayed_id_token_nonce_is_refused(sso: Sso) -> None:
    idp = sso.authenticator.idps["qinghai"]
    assert isinstance(idp, OidcUpstream)
    await idp.metadata()
    now = int(sso.provider.clock())
    claims = {
        "iss": sso.idp_state.issuer,
        "sub": "qh-100231",
        "aud": "tongban-gateway",
        "iat": now,
        "exp": now + 60,
        "nonce": "the-nonce-of-an-earlier-login",
        "auth_level": "3",
    }
    key = sso.idp_state.key
    replayed = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])
    with pytest.raises(UpstreamError) as refused:
        idp.validate_id_token(replayed, "this-logins-nonce")
    assert refused.value.reason == "nonce_mismatch"
    assert idp.validate_id_token(replayed, "the-nonce-of-an-earlier-login")["sub"] == "qh-100231"
    # HS256 with the public key, and alg none: refused by the pinned algorithms.
    with pytest.raises(UpstreamError):
        idp.validate_id_token(replayed.rsplit(".", 1)[0] + ".", "the-nonce-of-an-earlier-login")
    login = UpstreamLogin("s", "n", "v", "c", None, "http://127.0.0.1/cb")
    with pytest.raises(UpstreamError) as refused:
        await idp.complete({"state": "other", "code": "x"}, login)
    assert refused.value.reason == "state_mismatch"
    assert sso.idp_state.token_requests == 0


async def test_session_fixation_a_planted_cookie_is_replaced_at_login(sso: Sso) -> None:
    planted = "attacker-chosen-session-handle-0123456789"
    async with browser() as b:
        b.cookie_jar.update_cookies({"tongban_sso": planted}, URL(sso.gateway))
        await sign_in(sso, b, "qh-100233")
        values = {c.value for c in b.cookie_jar if c.key == "tongban_sso"}
        assert values
        assert planted not in values
    # The planted handle never became a session: another browser holding it is not signed in.
    async with browser() as attacker:
        attacker.cookie_jar.update_cookies({"tongban_sso": planted}, URL(sso.gateway))
        page = await attacker.get(f"{sso.portal(SX).base_url}/login")
        assert str(page.url).startswith(f"{sso.gateway}/login?tx=")


_TX = re.compile(r"name='tx' value='([^']+)'")
_CSRF = re.compile(r"name='csrf' value='([^']+)'")


async def test_login_form_needs_its_csrf_token_and_the_same_browser(sso: Sso) -> None:
    async with browser() as b:
        page = await b.get(f"{sso.portal(SX).base_url}/login")  # no hint: the login page
        html = await page.text()
        assert "青海政务服务网" in html
        assert "Qinghai" in html
        tx, csrf = _TX.search(html), _CSRF.search(html)
        assert tx
        assert csrf
        form = {"tx": tx.group(1), "csrf": "wrong", "idp": "qinghai"}
        refused = await b.post(f"{sso.gateway}/login", data=form)
        assert refused.status == 403
        # Another browser (an attacker's page posting the victim's transaction) is refused too.
        async with browser() as other:
            form["csrf"] = csrf.group(1)
            refused = await other.post(f"{sso.gateway}/login", data=form)
            assert refused.status == 403
            assert "login_not_bound_to_browser" in await refused.text()
        # The right token from the right browser goes on to the platform.
        accepted = await b.post(f"{sso.gateway}/login", data=form)
        assert str(accepted.url).startswith(sso.idp_state.issuer)


async def test_login_page_names_an_unavailable_province(sso: Sso) -> None:
    sso.idp_state.down = True
    async with browser() as b:
        page = await b.get(f"{sso.portal(SX).base_url}/login")
        html = await page.text()
        assert "currently unavailable" in html
        assert "name='idp' value='qinghai'" not in html


async def test_service_outside_allowed_services_and_above_level_are_forbidden(sso: Sso) -> None:
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")  # L2
        await b.get(f"{sso.portal(SX).base_url}/login")
        token_b = only_session(sso.portal(SX)).access_token
        token_a = only_session(sso.portal(QH)).access_token
    pension = sso.portal(QH).calls[1].body
    # Shaanxi portal may not call pension-transfer at all.
    status, problem = await api_call(sso, token_b, "pension-transfer", pension)
    assert status == 403
    assert problem["code"] == "client.forbidden"
    # Qinghai portal may, but the token's L2 is below the service's L3.
    status, problem = await api_call(sso, token_a, "pension-transfer", pension)
    assert status == 403
    assert problem["code"] == "client.insufficient_level"
    assert "L3" in problem["detail"]
    assert MA_WENHUA.id_number not in str(problem)


async def test_a_portal_call_without_its_form_token_is_refused(sso: Sso) -> None:
    """Login CSRF's sibling at the portal: another site posting the call form with the
    citizen's cookie gets no call made on her behalf."""
    portal = sso.portal(QH)
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        for data in ({"call": "0"}, {"call": "0", "csrf": "0" * 64}):
            refused = await b.post(f"{portal.base_url}/call", data=data)
            assert refused.status == 403
            assert "csrf-refused" in await refused.text()
        assert "data-http-status='200'" in await call_via_portal(b, portal, 0)


# --- the gateway's default session store -------------------------------------------------------


async def test_sessions_live_in_sqlite_in_the_data_directory_and_outlive_the_process(
    sso: Sso, tmp_path: Path
) -> None:
    """Built from configuration as `serve` builds it with `session.store: sqlite`:
    sessions.sqlite in the data directory. Another store opened on the file (the gateway after a restart) finds the session
    by its sid; after the logout it finds nothing, and nothing is left to claim."""
    store = sso.authenticator.store
    assert isinstance(store, SqliteSessionStore)
    assert store.path == tmp_path / SESSIONS_FILE
    restarted = SqliteSessionStore.in_data_dir(tmp_path, clock=sso.authenticator.clock)
    try:
        async with browser() as b:
            await sign_in(sso, b, "qh-100233")
            sid = only_session(sso.portal(QH)).sid
            assert sid is not None
            key = await restarted.key_for_sid(sid)
            assert key is not None
            found = await restarted.get_session(key)
            assert found is not None
            assert found.clients == (QH,)
            await b.get(f"{sso.portal(QH).base_url}/logout")
        assert await restarted.key_for_sid(sid) is None
        assert await restarted.get_session(key) is None
        far = sso.authenticator.clock() + 48 * 3600
        assert await restarted.claim_expired(far, 10) == [], "a logged-out session is not claimed"
    finally:
        await restarted.aclose()
