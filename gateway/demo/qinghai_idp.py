"""Demo Qinghai (63) identity platform (青海政务服务网统一身份认证), an OpenID Connect OP.

Hand-written on aiohttp and joserfc, deliberately separate from the gateway's own provider so the
federation is tested against an independent implementation: discovery (OIDC Discovery §3), JWKS,
an authorization endpoint with its own login form (code flow, PKCE S256 required, nonce, state,
``acr_values``), and a token endpoint (client_secret_basic) issuing an ES256 ID token.

Its level scale is its own, as real platforms' are (docs/identity-platforms.md, "Levels"):
``auth_level`` 1 account, 2 real name checked, 3 real person (face scan); the gateway's
idps.yaml maps it. A password login reaches at most level 2; ticking the (simulated) face scan
reaches the citizen's maximum. Every citizen is invented (residents.py); the password of all
of them is ``demo``.

Must not: log credentials, codes or personal data (it logs nothing at all).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.demo.residents import DUAN_HAORAN, HAN_XUEMEI, MA_WENHUA, SU_LANXIN, Resident

PASSWORD = "demo"
CLIENT_ID = "tongban-gateway"
LEVEL_SCALE = "qinghai-authlevel"


@dataclass(frozen=True, slots=True)
class IdpCitizen:
    user_id: str
    resident: Resident
    max_level: int
    phone: str
    region: str


CITIZENS: tuple[IdpCitizen, ...] = (
    IdpCitizen("qh-100231", MA_WENHUA, 3, "13897001234", "630104"),
    IdpCitizen("qh-100232", HAN_XUEMEI, 3, "13997005678", "630104"),
    IdpCitizen("qh-100233", SU_LANXIN, 2, "13709712345", "630102"),
    IdpCitizen("qh-100234", DUAN_HAORAN, 1, "18209718765", "632123"),
)


@dataclass
class QinghaiIdpState:
    """The platform's registered client, keys and one-time codes; counters for tests."""

    client_secret: str
    redirect_uris: tuple[str, ...] = ()
    issuer: str = ""
    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", auto_kid=True))
    clock: Callable[[], float] = time.time
    down: bool = False
    """When set, every endpoint answers 503 (the gateway shows the province unavailable)."""
    token_requests: int = 0
    extra_claims: dict[str, Any] = field(default_factory=dict)
    """Added to every ID token: tests make the platform assert what it must not be believed on
    (a citizen platform's ``roles``, gateway/identity/staff.py)."""
    pending: dict[str, dict[str, str]] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def citizen(self, user_id: str) -> IdpCitizen | None:
        return next((c for c in CITIZENS if c.user_id == user_id), None)


STATE = web.AppKey("qinghai_idp_state", QinghaiIdpState)


def _page(body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<title>青海政务服务网 统一身份认证</title><style>body{font-family:'WenQuanYi Zen Hei',"
        "sans-serif;max-width:36em;margin:2em auto;background:#f4f8fb}h1{color:#0a5a8a}"
        "</style></head><body>" + body + "</body></html>"
    )
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


@web.middleware
async def _down_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    if request.app[STATE].down:
        return web.Response(status=503, text="maintenance")
    response: web.StreamResponse = await handler(request)
    return response


def build_qinghai_idp_app(state: QinghaiIdpState) -> web.Application:
    app = web.Application(middlewares=[_down_middleware])
    app[STATE] = state
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/authorize", login)
    app.router.add_post("/token", token)
    return app


async def discovery(request: web.Request) -> web.Response:
    issuer = request.app[STATE].issuer
    return web.json_response(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": ["1", "2", "3"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }
    )


async def jwks(request: web.Request) -> web.Response:
    key = request.app[STATE].key
    public = dict(key.as_dict(private=False))
    public.update(alg="ES256", use="sig")
    return web.json_response({"keys": [public]})


def _bad(text: str) -> web.Response:
    return _page(f"<h1>请求无效</h1><p>{html.escape(text)}</p>", status=400)


def accept_authorization_request(
    request: web.Request, state: QinghaiIdpState
) -> tuple[str, list[str]] | web.Response:
    """Check an authorization request (code flow, PKCE S256, state, nonce) and keep it pending:
    its one-time id for the login form and the acr values asked, or the error page."""
    q = request.query
    if q.get("client_id") != CLIENT_ID or q.get("redirect_uri") not in state.redirect_uris:
        return _bad("unknown client or redirect_uri")
    if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
        return _bad("code flow with PKCE S256 only")
    if not q.get("code_challenge") or not q.get("state") or not q.get("nonce"):
        return _bad("code_challenge, state and nonce are required")
    request_id = secrets.token_urlsafe(16)
    wanted = q.get("acr_values", "").split()
    state.pending[request_id] = {
        "redirect_uri": q["redirect_uri"],
        "state": q["state"],
        "nonce": q["nonce"],
        "challenge": q["code_challenge"],
        "acr": wanted[0] if wanted else "",
    }
    return request_id, wanted


async def authorize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    accepted = accept_authorization_request(request, state)
    if isinstance(accepted, web.Response):
        return accepted
    request_id, wanted = accepted
    options = "".join(
        f"<option value='{c.user_id}'>{html.escape(c.resident.name)} "
        f"({c.user_id}, 最高 {c.max_level} 级)</option>"
        for c in CITIZENS
    )
    face_note = (
        "<p><strong>本次业务需要实人认证（3级）。/ This service needs level 3.</strong></p>"
        if "3" in wanted
        else ""
    )
    body = (
        "<h1>青海政务服务网 统一身份认证</h1><p>Qinghai unified identity platform (demo)</p>"
        f"{face_note}<form method='post' action='/authorize'>"
        f"<input type='hidden' name='request_id' value='{request_id}'>"
        f"<p><label>账号 / Account <select name='user' id='user'>{options}</select></label></p>"
        "<p><label>密码 / Password <input type='password' name='password' id='password'>"
        "</label> (demo)</p>"
        "<p><label><input type='checkbox' name='face' value='1' id='face'> "
        "人脸识别（模拟）/ Face scan (simulated)</label></p>"
        "<p><button type='submit' id='sign-in'>登录 / Sign in</button></p></form>"
    )
    return _page(body)


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    pending = state.pending.pop(str(form.get("request_id", "")), None)
    if pending is None:
        return _bad("login request expired")
    citizen = state.citizen(str(form.get("user", "")))
    password = str(form.get("password", ""))
    if citizen is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _bad("wrong account or password")
    level = min(citizen.max_level, 3 if form.get("face") == "1" else 2)
    raise issue_code(state, pending, citizen.user_id, level)


def issue_code(
    state: QinghaiIdpState, pending: dict[str, str], user_id: str, level: int | str
) -> web.HTTPFound:
    """A one-time code (60 s) for ``user_id`` at ``level``: the redirect back to the client."""
    code = secrets.token_urlsafe(24)
    state.codes[code] = {
        **pending,
        "user_id": user_id,
        "level": level,
        "auth_time": int(state.clock()),
        "expires": state.clock() + 60,
    }
    params = urlencode({"code": code, "state": pending["state"]})
    return web.HTTPFound(f"{pending['redirect_uri']}?{params}")


def _client_ok(request: web.Request, state: QinghaiIdpState) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        client_id, _, secret = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return client_id == CLIENT_ID and hmac.compare_digest(
        secret.encode(), state.client_secret.encode()
    )


def _token_error(error: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error}, status=status)


async def redeem_code(
    request: web.Request, state: QinghaiIdpState
) -> dict[str, Any] | web.Response:
    """The token request's client, code, redirect URI and PKCE verifier checked: the code's
    record (used up), or the RFC 6749 §5.2 error answer."""
    state.token_requests += 1
    if not _client_ok(request, state):
        return _token_error("invalid_client", 401)
    form = await request.post()
    record = state.codes.pop(str(form.get("code", "")), None)
    if record is None or record["expires"] < state.clock():
        return _token_error("invalid_grant")
    if form.get("redirect_uri") != record["redirect_uri"]:
        return _token_error("invalid_grant")
    verifier = str(form.get("code_verifier", ""))
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    if not hmac.compare_digest(challenge, record["challenge"]):
        return _token_error("invalid_grant")
    return record


def token_response(state: QinghaiIdpState, claims: dict[str, Any]) -> web.Response:
    """The token endpoint's answer: an ES256 ID token with ``claims`` (and a dummy access token)."""
    header = {"alg": "ES256", "kid": state.key.kid, "typ": "JWT"}
    id_token = jwt.encode(header, claims, state.key, algorithms=["ES256"])
    return web.json_response(
        {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        },
        headers={"Cache-Control": "no-store"},
    )


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    record = await redeem_code(request, state)
    if isinstance(record, web.Response):
        return record
    citizen = state.citizen(record["user_id"])
    assert citizen is not None
    now = int(state.clock())
    claims = {
        "iss": state.issuer,
        "sub": citizen.user_id,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "auth_time": record["auth_time"],
        "nonce": record["nonce"],
        "acr": str(record["level"]),
        "auth_level": str(record["level"]),
        "user_type": "1",
        "name": citizen.resident.name,
        "id_card": citizen.resident.id_number,
        "mobile": citizen.phone,
        "region_code": citizen.region,
        **state.extra_claims,
    }
    return token_response(state, claims)
