"""Two demo portals (a Qinghai and a Shaanxi 政务服务网) that sign in through the gateway.

Each is a confidential OpenID Connect client of the gateway (config/clients.yaml): code flow with
``state``, ``nonce`` and PKCE S256 (OIDC Core §3.1.2, RFC 7636), client_secret_basic at the token
endpoint, ID token checked against the gateway's JWKS (§3.1.3.7). Signed in, a portal shows the
service catalogue and makes one call with the user's access token; a call refused for its level
offers a step-up (``acr_values``). Sign-out is RP-initiated (RP-Initiated Logout 1.0); the
``/backchannel-logout`` endpoint validates logout tokens (Back-Channel Logout 1.0 §2.6) and ends
the local sessions of that ``sid``.

The portals share 127.0.0.1 with the gateway, and cookies ignore ports: every cookie name here
carries the client id so the portals and the gateway never read each other's cookies.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.demo.examples import DEMO_CALLS, DemoCall

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def _call(scenario: str, service: str, operation: str) -> DemoCall:
    return next(
        c
        for c in DEMO_CALLS
        if c.scenario == scenario and c.service == service and c.body["operation"] == operation
    )


@dataclass
class PortalSession:
    sid: str | None
    subject: str
    acr: str
    access_token: str
    id_token: str
    name: str | None


@dataclass
class PortalState:
    """One portal: its registration at the gateway and its local sessions."""

    client_id: str
    client_secret: str
    title: str
    gateway: str
    """The gateway's issuer URL."""
    calls: tuple[DemoCall, ...]
    scope: str = "openid profile services:call"
    province_hint: str | None = None
    base_url: str = ""
    sessions: dict[str, PortalSession] = field(default_factory=dict)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)
    backchannel_logouts: list[dict[str, Any]] = field(default_factory=list)
    """Validated logout tokens' claims (tests read them)."""
    http: aiohttp.ClientSession | None = None
    clock: Callable[[], float] = time.time

    @property
    def cookie(self) -> str:
        return f"portal_{self.client_id}"

    @property
    def login_cookie(self) -> str:
        return f"portal_login_{self.client_id}"


STATE = web.AppKey("portal_state", PortalState)


def qinghai_portal(gateway: str, secret: str) -> PortalState:
    return PortalState(
        client_id="demo-portal-qinghai",
        client_secret=secret,
        title="青海政务服务网（示范）Qinghai portal",
        gateway=gateway,
        calls=(
            _call("S6", "degree-verification", "verify"),
            _call("S1", "pension-transfer", "contribution-history"),
        ),
        scope="openid profile phone services:call",
        province_hint="63",
    )


def shaanxi_portal(gateway: str, secret: str) -> PortalState:
    return PortalState(
        client_id="demo-portal-shaanxi",
        client_secret=secret,
        title="陕西政务服务网（示范）Shaanxi portal",
        gateway=gateway,
        calls=(_call("S4", "housing-fund-transfer", "account-query"),),
    )


def build_portal_app(state: PortalState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.cleanup_ctx.append(_http_client)
    app.router.add_get("/", home)
    app.router.add_get("/login", login)
    app.router.add_get("/callback", callback)
    app.router.add_post("/call", call)
    app.router.add_get("/logout", logout)
    app.router.add_post("/backchannel-logout", backchannel_logout)
    return app


async def _http_client(app: web.Application) -> Any:
    state = app[STATE]
    state.http = aiohttp.ClientSession()
    yield
    await state.http.close()


def _page(state: PortalState, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        f"<title>{html.escape(state.title)}</title><style>body{{font-family:'WenQuanYi Zen Hei',"
        "sans-serif;max-width:48em;margin:2em auto}pre{background:#f4f4f4;padding:.5em;"
        "white-space:pre-wrap}</style></head><body>"
        f"<h1>{html.escape(state.title)}</h1>{body}</body></html>"
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def _session(request: web.Request) -> tuple[str, PortalSession] | None:
    state = request.app[STATE]
    key = request.cookies.get(state.cookie, "")
    session = state.sessions.get(key)
    return (key, session) if session is not None else None


def _http(state: PortalState) -> aiohttp.ClientSession:
    assert state.http is not None, "the portal's client opens with the app"
    return state.http


async def _api(
    state: PortalState, session: PortalSession, method: str, path: str, **kw: Any
) -> Any:
    headers = {"Authorization": f"Bearer {session.access_token}"}
    async with _http(state).request(
        method, state.gateway + path, headers=headers, **kw
    ) as response:
        return response.status, await response.json(content_type=None)


async def home(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found = _session(request)
    if found is None:
        return _page(
            state,
            "<p>您尚未登录。/ You are not signed in.</p>"
            "<p><a id='sign-in' href='/login'>统一身份认证登录 / Sign in</a></p>",
        )
    _, session = found
    status, catalogue = await _api(state, session, "GET", "/api/v1/services")
    items = ""
    if status == 200:
        items = "".join(
            f"<li>{html.escape(s['code'])}: {html.escape(s['name']['zh'])} "
            f"(min {html.escape(s['min_level'])})</li>"
            for s in catalogue["services"]
        )
    else:
        items = f"<li>catalogue: HTTP {status}</li>"
    forms = "".join(
        f"<form method='post' action='/call'><input type='hidden' name='call' value='{i}'>"
        f"<button type='submit' id='call-{i}'>{html.escape(c.scenario)}: "
        f"{html.escape(c.service)}</button></form>"
        for i, c in enumerate(state.calls)
    )
    name = html.escape(session.name or "")
    return _page(
        state,
        f"<p id='who'>已登录 / Signed in: <strong>{name}</strong> "
        f"level <span id='acr'>{html.escape(session.acr)}</span></p>"
        f"<h2>事项目录 / Service catalogue</h2><ul id='catalogue'>{items}</ul>"
        f"<h2>办事 / Make a call</h2>{forms}"
        "<p><a id='sign-out' href='/logout'>退出 / Sign out</a></p>",
    )


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    verifier, challenge = _pkce()
    oauth_state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    state.pending[oauth_state] = {"verifier": verifier, "nonce": nonce}
    params = {
        "response_type": "code",
        "client_id": state.client_id,
        "redirect_uri": f"{state.base_url}/callback",
        "scope": state.scope,
        "state": oauth_state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    acr = request.query.get("acr")
    if acr in ("L2", "L3"):
        params["acr_values"] = acr
    if state.province_hint:
        params["idp_hint"] = state.province_hint
    response = web.HTTPFound(f"{state.gateway}/oauth2/authorize?{urlencode(params)}")
    response.set_cookie(state.login_cookie, oauth_state, httponly=True, samesite="Lax")
    raise response


async def _jwks(state: PortalState) -> KeySet:
    async with _http(state).get(f"{state.gateway}/oauth2/jwks") as response:
        return KeySet.import_key_set(await response.json())


async def callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    oauth_state = request.query.get("state", "")
    if request.cookies.get(state.login_cookie) != oauth_state:
        return _page(state, "<p>state mismatch</p>", status=400)
    pending = state.pending.pop(oauth_state, None)
    if pending is None or "error" in request.query:
        error = html.escape(request.query.get("error", "state"))
        return _page(state, f"<p>登录失败 / Sign-in failed: {error}</p>", status=400)
    form = {
        "grant_type": "authorization_code",
        "code": request.query.get("code", ""),
        "redirect_uri": f"{state.base_url}/callback",
        "code_verifier": pending["verifier"],
    }
    auth = {"Authorization": aiohttp.encode_basic_auth(state.client_id, state.client_secret)}
    async with _http(state).post(
        f"{state.gateway}/oauth2/token", data=form, headers=auth
    ) as response:
        tokens = await response.json(content_type=None)
        if response.status != 200:
            return _page(state, f"<p>token: {html.escape(str(tokens))}</p>", status=502)
    try:
        decoded = jwt.decode(tokens["id_token"], await _jwks(state), algorithms=["ES256", "RS256"])
        jwt.JWTClaimsRegistry(
            now=int(state.clock()),
            leeway=30,
            iss={"essential": True, "value": state.gateway},
            aud={"essential": True, "value": state.client_id},
            nonce={"essential": True, "value": pending["nonce"]},
        ).validate(decoded.claims)
    except (JoseError, ValueError, KeyError):
        return _page(state, "<p>ID token invalid</p>", status=502)
    claims = decoded.claims
    name = None
    async with _http(state).get(
        f"{state.gateway}/oauth2/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as response:
        if response.status == 200:
            name = (await response.json()).get("name")
    # A step-up replaces the browser's local session rather than adding a second one.
    state.sessions.pop(request.cookies.get(state.cookie, ""), None)
    key = secrets.token_urlsafe(24)
    state.sessions[key] = PortalSession(
        sid=claims.get("sid"),
        subject=str(claims["sub"]),
        acr=str(claims.get("acr", "")),
        access_token=tokens["access_token"],
        id_token=tokens["id_token"],
        name=name,
    )
    done = web.HTTPFound("/")
    done.set_cookie(state.cookie, key, httponly=True, samesite="Lax")
    done.del_cookie(state.login_cookie)
    raise done


async def call(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found = _session(request)
    if found is None:
        raise web.HTTPFound("/")
    _, session = found
    form = await request.post()
    try:
        demo = state.calls[int(str(form.get("call", "0")))]
    except (ValueError, IndexError):
        demo = state.calls[0]
    headers = {"Idempotency-Key": demo.idempotency_key} if demo.idempotency_key else {}
    status, answer = await _api_call(state, session, demo, headers)
    step_up = ""
    if status == 403 and answer.get("code") == "client.insufficient_level":
        need = html.escape(str(answer.get("required", "L3")))
        step_up = (
            f"<p id='step-up'>需要更高的认证等级 {need}。/ This needs level {need}. "
            f"<a id='step-up-link' href='/login?acr={need}'>提升认证等级 / Step up</a></p>"
        )
    body = json.dumps(answer, ensure_ascii=False, indent=1)
    return _page(
        state,
        f"<p>HTTP <span id='status'>{status}</span></p>{step_up}"
        f"<pre id='answer'>{html.escape(body)}</pre><p><a href='/'>返回 / Back</a></p>",
    )


async def _api_call(
    state: PortalState, session: PortalSession, demo: DemoCall, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with _http(state).post(
        f"{state.gateway}/api/v1/services/{demo.service}/calls",
        json=demo.body,
        headers={"Authorization": f"Bearer {session.access_token}", **headers},
    ) as response:
        return response.status, await response.json(content_type=None)


async def logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found = _session(request)
    target = f"{state.base_url}/"
    if found is None:
        raise web.HTTPFound(target)
    key, session = found
    del state.sessions[key]
    params = urlencode({"id_token_hint": session.id_token, "post_logout_redirect_uri": target})
    response = web.HTTPFound(f"{state.gateway}/oauth2/logout?{params}")
    response.del_cookie(state.cookie)
    raise response


async def backchannel_logout(request: web.Request) -> web.Response:
    """Back-Channel Logout 1.0 §2.6 validation, then end every local session of the sid."""
    state = request.app[STATE]
    form = await request.post()
    token = str(form.get("logout_token", ""))
    try:
        decoded = jwt.decode(token, await _jwks(state), algorithms=["ES256", "RS256"])
        jwt.JWTClaimsRegistry(
            now=int(state.clock()),
            leeway=30,
            iss={"essential": True, "value": state.gateway},
            aud={"essential": True, "value": state.client_id},
            iat={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
    except (JoseError, ValueError):
        return web.json_response({"error": "invalid_request"}, status=400)
    claims = dict(decoded.claims)
    events = claims.get("events")
    if (
        decoded.header.get("typ") != "logout+jwt"
        or not isinstance(events, dict)
        or LOGOUT_EVENT not in events
        or "nonce" in claims
        or not (claims.get("sid") or claims.get("sub"))
    ):
        return web.json_response({"error": "invalid_request"}, status=400)
    ended = [
        key
        for key, s in state.sessions.items()
        if (claims.get("sid") and s.sid == claims["sid"])
        or (not claims.get("sid") and s.subject == claims.get("sub"))
    ]
    for key in ended:
        del state.sessions[key]
    state.backchannel_logouts.append(claims)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})
