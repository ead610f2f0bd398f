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

Issue 5 §7: ``/cases`` shows a signed-in citizen her cases (办件) with status and timeline; the
Shaanxi portal's ``/window`` is a window clerk's console (S10 异地代收代办): the clerk signs in
at the desk, takes an application in for a citizen (原件核验 ticked) with an Idempotency-Key and
sees the window queue. The console's forms carry a CSRF token bound to the clerk's session.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.demo.examples import DEMO_CALLS, DemoCall
from gateway.demo.residents import RESIDENTS, Resident

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


@dataclass(frozen=True)
class WindowDesk:
    """A province's window desk (S10): its clerks and how it gets tokens at the gateway."""

    mint: Callable[[str, str | None], str]
    """(clerk, citizen's ID number or None) → a clerk token for the citizen / the desk."""
    clerks: Mapping[str, str]
    """Staff id → display name; every demo password is 'demo'."""
    receiving_province: str = "61"
    handling_province: str = "63"
    citizens: tuple[Resident, ...] = RESIDENTS


@dataclass
class ClerkSession:
    clerk: str
    csrf: str
    last_receipt: str = ""


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
    window: WindowDesk | None = None
    """Set on the Shaanxi portal by `tongban demo`: the window clerk console (/window)."""
    clerk_sessions: dict[str, ClerkSession] = field(default_factory=dict)
    clerk_logins: set[str] = field(default_factory=set)
    """One-time CSRF tokens of rendered clerk sign-in forms."""

    @property
    def cookie(self) -> str:
        return f"portal_{self.client_id}"

    @property
    def login_cookie(self) -> str:
        return f"portal_login_{self.client_id}"

    @property
    def clerk_cookie(self) -> str:
        return f"portal_clerk_{self.client_id}"

    @property
    def clerk_login_cookie(self) -> str:
        return f"portal_clerk_login_{self.client_id}"


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
    app.router.add_get("/cases", my_cases)
    app.router.add_get("/window", window)
    app.router.add_post("/window/login", window_login)
    app.router.add_post("/window/intake", window_intake)
    app.router.add_post("/window/logout", window_logout)
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
            "<p><a id='sign-in' href='/login'>统一身份认证登录 / Sign in</a></p>"
            + (
                "<p><a id='window-console' href='/window'>窗口受理 / Window clerk console</a></p>"
                if state.window is not None
                else ""
            ),
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
        "<p><a id='my-cases' href='/cases'>我的办件 / My cases</a></p>"
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


# --- 我的办件: the citizen follows her cases --------------------------------------------------

_STATUS_ZH = {
    "received": "已收件",
    "originals_checked": "原件已核验",
    "forwarded": "已转办",
    "processing": "办理中",
    "result_delivered": "结果已送达",
    "closed": "已办结",
    "supplement_requested": "需补齐补正",
    "not_accepted": "不予受理",
    "returned": "已退件",
    "outcome_unknown": "结果待核实",
    "dead_lettered": "投递失败待处理",
}


def _status_label(status: object) -> str:
    text = str(status)
    zh = _STATUS_ZH.get(text)
    return html.escape(f"{zh} / {text}" if zh else text)


def _timeline(case: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<li><span class='at'>{html.escape(str(t.get('at', '')))}</span> "
        f"<span class='to'>{_status_label(t.get('to'))}</span>"
        + (f" ({html.escape(str(t['actor']))})" if t.get("actor") else "")
        + (f" — {html.escape(str(t['reason']))}" if t.get("reason") else "")
        + "</li>"
        for t in case.get("timeline", ())
        if isinstance(t, dict)
    )
    return f"<ol class='timeline'>{rows}</ol>"


async def my_cases(request: web.Request) -> web.Response:
    """GET /api/v1/cases with the citizen's own access token, then each case's timeline."""
    state = request.app[STATE]
    found = _session(request)
    if found is None:
        raise web.HTTPFound("/")
    _, session = found
    status, answer = await _api(state, session, "GET", "/api/v1/cases?limit=20")
    if status != 200 or not isinstance(answer, dict):
        detail = html.escape(json.dumps(answer, ensure_ascii=False)[:500])
        return _page(
            state,
            f"<p>办件查询失败 / Could not load your cases: HTTP {status}</p><pre>{detail}</pre>"
            "<p><a href='/'>返回 / Back</a></p>",
            status=502,
        )
    sections = []
    for summary in answer.get("cases", [])[:20]:
        case_id = str(summary.get("case_id", ""))
        got, case = await _api(state, session, "GET", f"/api/v1/cases/{case_id}")
        timeline = _timeline(case) if got == 200 and isinstance(case, dict) else ""
        provinces = ", ".join(str(p) for p in summary.get("handling_provinces", ()))
        sections.append(
            f"<section class='case' data-case='{html.escape(case_id)}'>"
            f"<h3>{html.escape(case_id)}</h3>"
            f"<p>事项 / Service: <span class='case-service'>"
            f"{html.escape(str(summary.get('service', '')))}</span>; "
            f"收件地 / Received in {html.escape(str(summary.get('receiving_province', '')))}, "
            f"办理地 / Handled in {html.escape(provinces)}</p>"
            f"<p>状态 / Status: <strong class='case-status' "
            f"data-status='{html.escape(str(summary.get('status', '')))}'>"
            f"{_status_label(summary.get('status'))}</strong> "
            f"(更新 / updated {html.escape(str(summary.get('updated_at', '')))})</p>"
            f"{timeline}</section>"
        )
    listing = "".join(sections) or "<p id='no-cases'>暂无办件 / No cases yet.</p>"
    return _page(
        state,
        f"<h2>我的办件 / My cases</h2><div id='cases'>{listing}</div>"
        "<p><a id='refresh' href='/cases'>刷新 / Refresh</a> · <a href='/'>返回 / Back</a></p>",
    )


# --- 窗口受理: the window clerk console (S10 异地代收代办) --------------------------------------

DISABILITY_CATEGORIES = {
    "hearing": "听力残疾 / hearing",
    "visual": "视力残疾 / visual",
    "speech": "言语残疾 / speech",
    "physical": "肢体残疾 / physical",
    "intellectual": "智力残疾 / intellectual",
    "mental": "精神残疾 / mental",
}
WINDOW_MATERIALS = {
    "disability-assessment": "残疾评定材料 / disability assessment",
    "photo": "近期免冠照片 / photo",
}


def _desk(request: web.Request) -> WindowDesk:
    desk = request.app[STATE].window
    if desk is None:
        raise web.HTTPNotFound()
    return desk


def _clerk(request: web.Request) -> tuple[str, ClerkSession] | None:
    state = request.app[STATE]
    key = request.cookies.get(state.clerk_cookie, "")
    session = state.clerk_sessions.get(key)
    return (key, session) if session is not None else None


def _csrf_ok(expected: str, form: Mapping[str, Any]) -> bool:
    given = form.get("csrf")
    return isinstance(given, str) and bool(expected) and secrets.compare_digest(given, expected)


async def _desk_api(
    state: PortalState,
    token: str,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    **kw: Any,
) -> tuple[int, Any]:
    sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
    async with _http(state).request(method, state.gateway + path, headers=sent, **kw) as response:
        return response.status, await response.json(content_type=None)


def _options(items: Mapping[str, str]) -> str:
    return "".join(
        f"<option value='{html.escape(k)}'>{html.escape(v)}</option>" for k, v in items.items()
    )


async def window(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    found = _clerk(request)
    if found is None:
        csrf = secrets.token_urlsafe(24)
        state.clerk_logins.add(csrf)
        response = _page(
            state,
            "<h2>窗口受理 / Window clerk console</h2>"
            "<form method='post' action='/window/login'>"
            f"<input type='hidden' name='csrf' value='{csrf}'>"
            "<label>工号 / Staff id <select id='clerk' name='clerk'>"
            f"{_options(desk.clerks)}</select></label> "
            "<label>密码 / Password <input id='clerk-password' name='password' "
            "type='password'></label> "
            "<button id='clerk-sign-in' type='submit'>登录 / Sign in</button></form>",
        )
        response.set_cookie(state.clerk_login_cookie, csrf, httponly=True, samesite="Strict")
        return response
    _, session = found
    status, answer = await _desk_api(
        state, desk.mint(session.clerk, None), "GET", "/api/v1/cases?queue=window&limit=50"
    )
    if status == 200 and isinstance(answer, dict):
        rows = "".join(
            f"<tr data-case='{html.escape(str(c.get('case_id', '')))}'>"
            f"<td>{html.escape(str(c.get('case_id', '')))}</td>"
            f"<td>{html.escape(str(c.get('service', '')))}</td>"
            f"<td class='queue-status'>{_status_label(c.get('status'))}</td>"
            f"<td>{html.escape(str(c.get('updated_at', '')))}</td></tr>"
            for c in answer.get("cases", [])
        )
        queue = (
            "<table id='queue'><tr><th>办件编号 / Case</th><th>事项 / Service</th>"
            f"<th>状态 / Status</th><th>更新 / Updated</th></tr>{rows}</table>"
        )
    else:
        queue = f"<p id='queue-error'>窗口队列 / Window queue: HTTP {status}</p>"
    citizens = {r.key: f"{r.name} ({r.id_number[:4]}…{r.id_number[-4:]})" for r in desk.citizens}
    materials = "".join(
        f"<label><input type='checkbox' name='material' value='{html.escape(code)}' "
        f"id='material-{html.escape(code)}' checked> {html.escape(label)}</label><br>"
        for code, label in WINDOW_MATERIALS.items()
    )
    clerk_name = desk.clerks.get(session.clerk, session.clerk)
    return _page(
        state,
        "<h2>窗口受理 / Window clerk console</h2>"
        f"<p id='clerk-who'>窗口人员 / Clerk: <strong>{html.escape(clerk_name)}</strong> "
        f"({html.escape(session.clerk)})</p>{session.last_receipt}"
        "<h3>残疾人证异地代收代办 / Disability card, taken in for "
        f"{html.escape(desk.handling_province)}</h3>"
        "<form method='post' action='/window/intake'>"
        f"<input type='hidden' name='csrf' value='{html.escape(session.csrf)}'>"
        # One key per rendered form: a double click or a retried post makes no second case.
        f"<input type='hidden' name='idempotency_key' value='window-{secrets.token_hex(12)}'>"
        f"<label>申请人 / Citizen <select id='citizen' name='citizen'>{_options(citizens)}"
        "</select></label><br>"
        "<label>残疾类别 / Category <select id='category' name='category'>"
        f"{_options(DISABILITY_CATEGORIES)}</select></label><br>"
        "<label>邮寄地址 / Mailing address <input id='address' name='address' size='40' "
        "value='西安市雁塔区示范路1号'></label><br>"
        f"<fieldset><legend>收取材料 / Materials collected</legend>{materials}</fieldset>"
        "<label><input type='checkbox' id='originals' name='originals' value='yes'> "
        "原件已核验 / Originals checked</label><br>"
        "<label>核验说明 / Note <input id='note' name='note' size='30' "
        "value='身份证原件已核验'></label><br>"
        "<button id='intake' type='submit'>受理并转办 / Take in and forward</button></form>"
        f"<h3>窗口队列 / Window queue</h3>{queue}"
        "<p><a id='window-refresh' href='/window'>刷新 / Refresh</a></p>"
        "<form method='post' action='/window/logout'>"
        f"<input type='hidden' name='csrf' value='{html.escape(session.csrf)}'>"
        "<button id='clerk-sign-out' type='submit'>退出 / Sign out</button></form>",
    )


async def window_login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    form = await request.post()
    cookie = request.cookies.get(state.clerk_login_cookie, "")
    if not _csrf_ok(cookie, form) or cookie not in state.clerk_logins:
        return _page(state, "<p>CSRF 校验失败 / CSRF check failed</p>", status=403)
    state.clerk_logins.discard(cookie)
    clerk = str(form.get("clerk", ""))
    if clerk not in desk.clerks or not secrets.compare_digest(
        str(form.get("password", "")), "demo"
    ):
        return _page(
            state,
            "<p id='clerk-error'>工号或密码错误 / Wrong staff id or password</p>"
            "<p><a href='/window'>重试 / Try again</a></p>",
            status=401,
        )
    key = secrets.token_urlsafe(24)
    state.clerk_sessions[key] = ClerkSession(clerk=clerk, csrf=secrets.token_urlsafe(24))
    done = web.HTTPSeeOther("/window")
    done.set_cookie(state.clerk_cookie, key, httponly=True, samesite="Strict")
    done.del_cookie(state.clerk_login_cookie)
    raise done


async def window_logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    found = _clerk(request)
    if found is not None and _csrf_ok(found[1].csrf, form):
        del state.clerk_sessions[found[0]]
    done = web.HTTPSeeOther("/window")
    done.del_cookie(state.clerk_cookie)
    raise done


def _scan_ref(citizen: Resident, code: str) -> dict[str, str]:
    """A scanned material by reference and digest (the demo has no scanner: a stand-in)."""
    ref = f"urn:scan:61:{citizen.key}:{code}"
    return {
        "code": code,
        "ref": ref,
        "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
    }


async def window_intake(request: web.Request) -> web.Response:
    """POST /api/v1/cases for the citizen, with the clerk as actor and the form's key."""
    state = request.app[STATE]
    desk = _desk(request)
    found = _clerk(request)
    if found is None:
        raise web.HTTPSeeOther("/window")
    _, session = found
    form = await request.post()
    if not _csrf_ok(session.csrf, form):
        return _page(state, "<p>CSRF 校验失败 / CSRF check failed</p>", status=403)
    citizen = next((r for r in desk.citizens if r.key == form.get("citizen")), None)
    if citizen is None:
        return _page(state, "<p>未知申请人 / Unknown citizen</p>", status=400)
    codes = [str(c) for c in form.getall("material", []) if str(c) in WINDOW_MATERIALS]
    body = {
        "service": "disability-card",
        "mode": "proxy",
        "receiving_province": desk.receiving_province,
        "handling_province": desk.handling_province,
        "purpose": "残疾人证异地代收代办",
        "data": {
            "id_number": citizen.id_number,
            "name": citizen.name,
            "disability_category": str(form.get("category", "")),
            "mailing_address": str(form.get("address", ""))[:200],
        },
        "materials": [_scan_ref(citizen, code) for code in codes],
        "originals_check": {
            "checked": form.get("originals") == "yes",
            "note": str(form.get("note", ""))[:200],
        },
    }
    key = str(form.get("idempotency_key", ""))
    status, answer = await _desk_api(
        state,
        desk.mint(session.clerk, citizen.id_number),
        "POST",
        "/api/v1/cases",
        json=body,
        headers={"Idempotency-Key": key},
    )
    if status == 202 and isinstance(answer, dict):
        session.last_receipt = (
            "<div id='receipt'><h3>受理回执 / Receipt</h3><p>办件编号 / Case: "
            f"<strong id='receipt-case'>{html.escape(str(answer.get('case_id', '')))}</strong>"
            f"; 状态 / Status: {_status_label(answer.get('status'))}"
            f"; 收件时间 / Received: {html.escape(str(answer.get('received_at', '')))}</p></div>"
        )
        raise web.HTTPSeeOther("/window")
    detail = json.dumps(answer, ensure_ascii=False, indent=1)
    return _page(
        state,
        f"<p>受理失败 / Not taken in: HTTP <span id='status'>{status}</span></p>"
        f"<pre id='answer'>{html.escape(detail)}</pre>"
        "<p><a href='/window'>返回 / Back</a></p>",
        status=400 if 400 <= status < 500 else 502,
    )
