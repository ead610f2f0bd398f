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

``/cases`` shows a signed-in citizen her cases (办件) with status and timeline; the
Shaanxi portal's ``/window`` is a window clerk's console (S10 异地代收代办), a client of its own
(``demo-window-shaanxi``, clients.yaml ``window: true``). The clerk signs in through
the gateway, which offers only the staff directory (code flow + PKCE like the portals' login);
for each intake the console asks the gateway for a Counter token for the applicant by token
exchange (RFC 8693: the ID number the clerk typed from the document as subject token, the
clerk's own access token as actor token) and takes the application in with it (原件核验 ticked,
an Idempotency-Key per form), so the case's principal is the citizen and its actor the clerk.
The clerk's own token reads the window queue. The console's forms carry a CSRF token bound to
the clerk's session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.demo.examples import DEMO_CALLS, DemoCall
from gateway.identity.clients import TOKEN_EXCHANGE
from gateway.identity.identifiers import RESIDENT_ID_CARD
from gateway.identity.token_exchange import ACCESS_TOKEN_TYPE, ID_DOCUMENT_TOKEN_TYPE

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
    """A province's window desk (S10): its window client at the gateway."""

    client_id: str
    """A window client (clients.yaml ``window: true``, allowed the token-exchange grant)."""
    client_secret: str
    receiving_province: str = "61"
    handling_province: str = "63"
    scope: str = "openid profile services:call"
    """What the clerk's own token may do; each Counter token gets ``services:call`` only."""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.client_id, self.client_secret)}


@dataclass
class ClerkSession:
    """A clerk signed in at the console through the gateway (never a password here)."""

    subject: str
    """The clerk's pairwise ``sub`` at the window client: the ``act.sub`` of Counter tokens."""
    staff_id: str
    """工号 (``preferred_username`` at userinfo), shown on the console."""
    name: str
    acr: str
    access_token: str
    refresh_token: str | None
    expires_at: float
    id_token: str
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
    clerk_pending: dict[str, dict[str, str]] = field(default_factory=dict)
    """Clerk sign-ins under way at the gateway, by OAuth ``state``."""

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
    app.router.add_post("/cases/{case_id}/supplements", supply_material)
    app.router.add_get("/window", window)
    app.router.add_get("/window/login", window_login)
    app.router.add_get("/window/callback", window_callback)
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
    session_key, session = found
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
    csrf = _form_csrf(state, session_key, "call")
    forms = "".join(
        f"<form method='post' action='/call'><input type='hidden' name='call' value='{i}'>"
        f"<input type='hidden' name='csrf' value='{csrf}'>"
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


async def _id_token_claims(
    state: PortalState, id_token: object, audience: str, pending: Mapping[str, str]
) -> dict[str, Any] | None:
    """OIDC Core §3.1.3.7 checks of the gateway's ID token for ``audience``; None if it fails."""
    if not isinstance(id_token, str):
        return None
    try:
        decoded = jwt.decode(id_token, await _jwks(state), algorithms=["ES256", "RS256"])
        jwt.JWTClaimsRegistry(
            now=int(state.clock()),
            leeway=30,
            iss={"essential": True, "value": state.gateway},
            aud={"essential": True, "value": audience},
            nonce={"essential": True, "value": pending["nonce"]},
        ).validate(decoded.claims)
    except (JoseError, ValueError, KeyError):
        return None
    return dict(decoded.claims)


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
    claims = await _id_token_claims(state, tokens.get("id_token"), state.client_id, pending)
    if claims is None:
        return _page(state, "<p>ID token invalid</p>", status=502)
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
    session_key, session = found
    form = await request.post()
    if not _csrf_ok(_form_csrf(state, session_key, "call"), form):
        # Another site's form posting here with the citizen's cookie: no call on her behalf.
        return _page(state, "<p id='csrf-refused'>表单已失效 / This form has expired.</p>", 403)
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
    key, session = found
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
        asked = _supplement_form(state, key, case) if got == 200 and isinstance(case, dict) else ""
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
            f"{asked}{timeline}</section>"
        )
    listing = "".join(sections) or "<p id='no-cases'>暂无办件 / No cases yet.</p>"
    return _page(
        state,
        f"<h2>我的办件 / My cases</h2><div id='cases'>{listing}</div>"
        "<p><a id='refresh' href='/cases'>刷新 / Refresh</a> · <a href='/'>返回 / Back</a></p>",
    )


# --- 补齐补正: the citizen supplies what the handling province asked for ----------------------


def _form_csrf(state: PortalState, session_key: str, purpose: str) -> str:
    """A signed-in page's CSRF token for the forms of ``purpose``: bound to the session cookie,
    which a forging page cannot read (an HMAC under the portal's secret, so nothing more is
    kept per session)."""
    message = f"{purpose}:{session_key}".encode()
    return hmac.new(state.client_secret.encode(), message, "sha256").hexdigest()


def _supplement_csrf(state: PortalState, session_key: str) -> str:
    return _form_csrf(state, session_key, "supplement")


def _supplement_form(state: PortalState, session_key: str, case: Mapping[str, Any]) -> str:
    """What is missing, and (while the part waits) a form to supply it."""
    blocks = []
    case_id = html.escape(str(case.get("case_id", "")))
    for part in case.get("parts", ()):
        if not isinstance(part, dict) or part.get("status") != "supplement_requested":
            continue
        asked = part.get("supplement_request")
        if not isinstance(asked, dict):
            continue
        codes = [str(c) for c in asked.get("materials", ())]
        listed = "".join(
            f"<li class='missing' data-code='{html.escape(c)}'>{html.escape(c)}</li>" for c in codes
        )
        boxes = "".join(
            f"<label><input type='checkbox' name='material' value='{html.escape(c)}' checked> "
            f"{html.escape(c)}</label><br>"
            for c in codes
        )
        blocks.append(
            f"<div class='supplement' data-part='{int(part.get('part', 0))}'>"
            "<p>需补齐补正 / Material is missing: "
            f"<span class='supplement-message'>{html.escape(str(asked.get('message') or ''))}"
            "</span>"
            + (
                f" (期限 / by <span class='supplement-deadline'>"
                f"{html.escape(str(asked['deadline']))}</span>)"
                if asked.get("deadline")
                else ""
            )
            + f"</p><ul>{listed}</ul>"
            + (
                f"<form method='post' action='/cases/{case_id}/supplements'>"
                f"<input type='hidden' name='csrf' value='{_supplement_csrf(state, session_key)}'>"
                # One key per rendered form: a double click or a retried post sends it once.
                "<input type='hidden' name='idempotency_key' "
                f"value='portal-{secrets.token_hex(12)}'>"
                f"<input type='hidden' name='part' value='{int(part.get('part', 0))}'>"
                f"{boxes}<label>说明 / Note <input name='note' size='30'></label> "
                "<button type='submit' class='supply'>提交补正材料 / Supply</button></form>"
                if codes
                else ""
            )
            + "</div>"
        )
    return "".join(blocks)


def _upload_ref(state: PortalState, case_id: str, code: str) -> dict[str, str]:
    """An uploaded material by reference and digest (the demo has no upload: a stand-in)."""
    ref = f"urn:upload:{state.client_id}:{case_id}:{code}"
    return {
        "code": code,
        "ref": ref,
        "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
    }


async def supply_material(request: web.Request) -> web.Response:
    """POST /api/v1/cases/{id}/supplements with the citizen's token and the form's key."""
    state = request.app[STATE]
    found = _session(request)
    if found is None:
        raise web.HTTPSeeOther("/")
    key, session = found
    form = await request.post()
    if not _csrf_ok(_supplement_csrf(state, key), form):
        return _page(state, "<p>CSRF 校验失败 / CSRF check failed</p>", status=403)
    case_id = request.match_info["case_id"]
    body: dict[str, Any] = {
        "materials": [_upload_ref(state, case_id, str(c)) for c in form.getall("material", [])],
    }
    if str(form.get("part", "")).isdigit():
        body["part"] = int(str(form["part"]))
    if form.get("note"):
        body["note"] = str(form["note"])[:500]
    async with _http(state).post(
        f"{state.gateway}/api/v1/cases/{quote(case_id, safe='')}/supplements",
        json=body,
        headers={
            "Authorization": f"Bearer {session.access_token}",
            "Idempotency-Key": str(form.get("idempotency_key", "")),
        },
    ) as response:
        status, answer = response.status, await response.json(content_type=None)
    if status == 202:
        raise web.HTTPSeeOther("/cases")
    detail = json.dumps(answer, ensure_ascii=False, indent=1)
    return _page(
        state,
        f"<p>补正未提交 / Not supplied: HTTP <span id='status'>{status}</span></p>"
        f"<pre id='answer'>{html.escape(detail)}</pre><p><a href='/cases'>返回 / Back</a></p>",
        status=400 if 400 <= status < 500 else 502,
    )


# --- 窗口受理: the window clerk console (S10 异地代收代办) ----------------------------------------

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
COUNTER_SCOPE = "services:call"
"""All a Counter token needs: taking the application in (never the clerk's profile)."""
_REFRESH_MARGIN = 30.0


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


async def _desk_token_request(
    state: PortalState, desk: WindowDesk, form: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST /oauth2/token as the window client (client_secret_basic)."""
    async with _http(state).post(
        f"{state.gateway}/oauth2/token", data=dict(form), headers=desk.auth
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


async def _clerk_token(state: PortalState, desk: WindowDesk, session: ClerkSession) -> str | None:
    """The clerk's own access token, refreshed (RFC 6749 §6) shortly before it expires; None
    when it cannot be (the clerk signs in again)."""
    if state.clock() < session.expires_at - _REFRESH_MARGIN:
        return session.access_token
    if session.refresh_token is None:
        return None
    status, tokens = await _desk_token_request(
        state, desk, {"grant_type": "refresh_token", "refresh_token": session.refresh_token}
    )
    if status != 200:
        return None
    session.access_token = str(tokens["access_token"])
    session.refresh_token = tokens.get("refresh_token") or None
    session.expires_at = state.clock() + int(tokens.get("expires_in", 0))
    return session.access_token


def _options(items: Mapping[str, str]) -> str:
    return "".join(
        f"<option value='{html.escape(k)}'>{html.escape(v)}</option>" for k, v in items.items()
    )


async def window(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    found = _clerk(request)
    if found is None:
        return _page(
            state,
            "<h2>窗口受理 / Window clerk console</h2>"
            "<p>窗口工作人员通过统一身份认证登录（仅限工作人员账号）。/ Clerks sign in through "
            "the gateway, with a staff account only.</p>"
            "<p><a id='clerk-sign-in' href='/window/login'>工作人员登录 / Staff sign-in</a></p>",
        )
    key, session = found
    token = await _clerk_token(state, desk, session)
    if token is None:
        del state.clerk_sessions[key]
        raise web.HTTPSeeOther("/window/login")
    status, answer = await _desk_api(state, token, "GET", "/api/v1/cases?queue=window&limit=50")
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
    materials = "".join(
        f"<label><input type='checkbox' name='material' value='{html.escape(code)}' "
        f"id='material-{html.escape(code)}' checked> {html.escape(label)}</label><br>"
        for code, label in WINDOW_MATERIALS.items()
    )
    return _page(
        state,
        "<h2>窗口受理 / Window clerk console</h2>"
        f"<p id='clerk-who'>窗口人员 / Clerk: <strong>{html.escape(session.name)}</strong> "
        f"({html.escape(session.staff_id)}), level {html.escape(session.acr)}; "
        f"act.sub <code id='clerk-sub'>{html.escape(session.subject)}</code></p>"
        f"{session.last_receipt}"
        "<h3>残疾人证异地代收代办 / Disability card, taken in for "
        f"{html.escape(desk.handling_province)}</h3>"
        "<form method='post' action='/window/intake'>"
        f"<input type='hidden' name='csrf' value='{html.escape(session.csrf)}'>"
        # One key per rendered form: a double click or a retried post makes no second case.
        f"<input type='hidden' name='idempotency_key' value='window-{secrets.token_hex(12)}'>"
        "<fieldset><legend>申请人身份证件（读卡）/ Applicant's ID document (as read)</legend>"
        "<label>居民身份证号码 / Resident ID number <input id='id-number' name='id_number' "
        "size='20' maxlength='18' autocomplete='off'></label><br>"
        "<label>姓名 / Name <input id='applicant-name' name='applicant_name' size='10'>"
        "</label></fieldset>"
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
    """Start the clerk's sign-in at the gateway as the window client (code flow + PKCE)."""
    state = request.app[STATE]
    desk = _desk(request)
    verifier, challenge = _pkce()
    oauth_state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    state.clerk_pending[oauth_state] = {"verifier": verifier, "nonce": nonce}
    params = {
        "response_type": "code",
        "client_id": desk.client_id,
        "redirect_uri": f"{state.base_url}/window/callback",
        "scope": desk.scope,
        "state": oauth_state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    response = web.HTTPFound(f"{state.gateway}/oauth2/authorize?{urlencode(params)}")
    response.set_cookie(state.clerk_login_cookie, oauth_state, httponly=True, samesite="Lax")
    raise response


async def window_callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    oauth_state = request.query.get("state", "")
    if request.cookies.get(state.clerk_login_cookie) != oauth_state:
        return _page(state, "<p>state mismatch</p>", status=400)
    pending = state.clerk_pending.pop(oauth_state, None)
    if pending is None or "error" in request.query:
        error = html.escape(request.query.get("error", "state"))
        return _page(
            state, f"<p id='clerk-error'>登录失败 / Sign-in failed: {error}</p>", status=400
        )
    status, tokens = await _desk_token_request(
        state,
        desk,
        {
            "grant_type": "authorization_code",
            "code": request.query.get("code", ""),
            "redirect_uri": f"{state.base_url}/window/callback",
            "code_verifier": pending["verifier"],
        },
    )
    if status != 200:
        return _page(state, f"<p>token: {html.escape(str(tokens))}</p>", status=502)
    claims = await _id_token_claims(state, tokens.get("id_token"), desk.client_id, pending)
    if claims is None:
        return _page(state, "<p>ID token invalid</p>", status=502)
    async with _http(state).get(
        f"{state.gateway}/oauth2/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as response:
        profile = await response.json() if response.status == 200 else {}
    state.clerk_sessions.pop(request.cookies.get(state.clerk_cookie, ""), None)
    key = secrets.token_urlsafe(24)
    state.clerk_sessions[key] = ClerkSession(
        subject=str(claims["sub"]),
        staff_id=str(profile.get("preferred_username", "")),
        name=str(profile.get("name", "")),
        acr=str(claims.get("acr", "")),
        access_token=str(tokens["access_token"]),
        refresh_token=tokens.get("refresh_token") or None,
        expires_at=state.clock() + int(tokens.get("expires_in", 0)),
        id_token=str(tokens["id_token"]),
        csrf=secrets.token_urlsafe(24),
    )
    done = web.HTTPSeeOther("/window")
    done.set_cookie(state.clerk_cookie, key, httponly=True, samesite="Strict")
    done.del_cookie(state.clerk_login_cookie)
    raise done


async def window_logout(request: web.Request) -> web.Response:
    """End the console session, then the clerk's SSO session at the gateway (RP-initiated
    logout), which revokes the clerk's tokens and every Counter token taken with them."""
    state = request.app[STATE]
    form = await request.post()
    found = _clerk(request)
    target = f"{state.base_url}/window"
    if found is None or not _csrf_ok(found[1].csrf, form):
        raise web.HTTPSeeOther("/window")
    key, session = found
    del state.clerk_sessions[key]
    params = urlencode({"id_token_hint": session.id_token, "post_logout_redirect_uri": target})
    done = web.HTTPSeeOther(f"{state.gateway}/oauth2/logout?{params}")
    done.del_cookie(state.clerk_cookie)
    raise done


def _scan_ref(form_key: str, code: str) -> dict[str, str]:
    """A scanned material by reference and digest (the demo has no scanner: a stand-in, the
    same for a re-posted form so its retry is the same application)."""
    ref = f"urn:scan:61:{form_key}:{code}"
    return {
        "code": code,
        "ref": ref,
        "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
    }


async def _counter_token(
    state: PortalState, desk: WindowDesk, clerk_token: str, id_number: str
) -> tuple[int, dict[str, Any]]:
    """RFC 8693 token exchange: the applicant's document (subject) and the clerk (actor) → a
    short-lived Counter token for the applicant with the clerk as ``act``."""
    return await _desk_token_request(
        state,
        desk,
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": f"{RESIDENT_ID_CARD}:{id_number}",
            "subject_token_type": ID_DOCUMENT_TOKEN_TYPE,
            "actor_token": clerk_token,
            "actor_token_type": ACCESS_TOKEN_TYPE,
            "scope": COUNTER_SCOPE,
        },
    )


def _refused(state: PortalState, status: int, answer: Any, what: str) -> web.Response:
    detail = json.dumps(answer, ensure_ascii=False, indent=1)
    return _page(
        state,
        f"<p>{what}: HTTP <span id='status'>{status}</span></p>"
        f"<pre id='answer'>{html.escape(detail)}</pre>"
        "<p><a href='/window'>返回 / Back</a></p>",
        status=400 if 400 <= status < 500 else 502,
    )


async def window_intake(request: web.Request) -> web.Response:
    """Identify the applicant by token exchange, then POST /api/v1/cases with that token."""
    state = request.app[STATE]
    desk = _desk(request)
    found = _clerk(request)
    if found is None:
        raise web.HTTPSeeOther("/window")
    _, session = found
    form = await request.post()
    if not _csrf_ok(session.csrf, form):
        return _page(state, "<p>CSRF 校验失败 / CSRF check failed</p>", status=403)
    clerk_token = await _clerk_token(state, desk, session)
    if clerk_token is None:
        raise web.HTTPSeeOther("/window/login")
    id_number = str(form.get("id_number", "")).strip().upper()[:32]
    status, counter = await _counter_token(state, desk, clerk_token, id_number)
    if status != 200:
        return _refused(state, status, counter, "申请人身份识别失败 / Applicant not identified")
    key = str(form.get("idempotency_key", ""))
    codes = [str(c) for c in form.getall("material", []) if str(c) in WINDOW_MATERIALS]
    body = {
        "service": "disability-card",
        "mode": "proxy",
        "receiving_province": desk.receiving_province,
        "handling_province": desk.handling_province,
        "purpose": "残疾人证异地代收代办",
        "data": {
            "id_number": id_number,
            "name": str(form.get("applicant_name", "")).strip()[:50],
            "disability_category": str(form.get("category", "")),
            "mailing_address": str(form.get("address", ""))[:200],
        },
        "materials": [_scan_ref(key, code) for code in codes],
        "originals_check": {
            "checked": form.get("originals") == "yes",
            "note": str(form.get("note", ""))[:200],
        },
    }
    status, answer = await _desk_api(
        state,
        str(counter["access_token"]),
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
    return _refused(state, status, answer, "受理失败 / Not taken in")
