"""Demo Guangdong (44) identity platform: OAuth2 with the quirks of docs/identity-platforms.md.

Authorization code flow, but the token request is a GET with ``client_secret`` in the query and
``service=initService`` required; ``/oauth2/tokeninfo`` answers ``{"data": …, "signdata": …}``
where ``data`` is base64(IV ‖ AES-CBC) of ``{"userobj": {uid, cn, idcardnumber,
telephonenumber, extproperties: ["k=v", …]}}`` and ``signdata`` is HMAC-SHA256 hex of ``data``
with the client secret. ``trustlevel`` is on Guangdong's L2–L5 可信等级 scale. Every citizen is
invented; the password of all of them is ``demo``.

Must not: log anything (it logs nothing at all).
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.demo.residents import HAN_XUEMEI, ZHAO_YIMING, Resident
from gateway.identity.upstream_oauth2_quirks import aes_encrypt, body_signature

PASSWORD = "demo"
CLIENT_ID = "tongban-gateway"


@dataclass(frozen=True, slots=True)
class GdCitizen:
    uid: str
    resident: Resident
    phone: str
    trust_level: str


CITIZENS = (
    GdCitizen("gd-400101", ZHAO_YIMING, "13690001234", "L4"),
    GdCitizen("gd-400102", HAN_XUEMEI, "13790002345", "L3"),
)


@dataclass
class GuangdongIdpState:
    client_secret: str
    aes_key: str
    redirect_uris: tuple[str, ...] = ()
    base_url: str = ""
    clock: Callable[[], float] = time.time
    down: bool = False
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)


STATE = web.AppKey("guangdong_idp_state", GuangdongIdpState)


def build_guangdong_idp_app(state: GuangdongIdpState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/oauth2/authorize", authorize)
    app.router.add_post("/oauth2/authorize", login)
    app.router.add_get("/oauth2/access_token", access_token)
    app.router.add_get("/oauth2/tokeninfo", tokeninfo)
    return app


def _page(body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<title>广东政务服务网 统一身份认证</title></head><body>"
        f"<h1>广东政务服务网 统一身份认证</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")


async def authorize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.down:
        return web.Response(status=503, text="maintenance")
    q = request.query
    if q.get("client_id") != CLIENT_ID or q.get("redirect_uri") not in state.redirect_uris:
        return _page("<p>unknown client</p>", 400)
    options = "".join(
        f"<option value='{c.uid}'>{html.escape(c.resident.name)} ({c.uid})</option>"
        for c in CITIZENS
    )
    return _page(
        "<form method='post' action='/oauth2/authorize'>"
        f"<input type='hidden' name='redirect_uri' value='{html.escape(q['redirect_uri'])}'>"
        f"<input type='hidden' name='state' value='{html.escape(q.get('state', ''))}'>"
        f"<select name='user' id='user'>{options}</select>"
        "<input type='password' name='password' id='password'>"
        "<button type='submit' id='sign-in'>登录</button></form>"
    )


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    citizen = next((c for c in CITIZENS if c.uid == form.get("user")), None)
    redirect_uri = str(form.get("redirect_uri", ""))
    password = str(form.get("password", ""))
    if redirect_uri not in state.redirect_uris:
        return _page("<p>unknown redirect</p>", 400)
    if citizen is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _page("<p>wrong account or password</p>", 400)
    code = secrets.token_urlsafe(24)
    state.codes[code] = {"uid": citizen.uid, "redirect_uri": redirect_uri}
    params = urlencode({"code": code, "state": str(form.get("state", ""))})
    raise web.HTTPFound(f"{redirect_uri}?{params}")


async def access_token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    q = request.query
    state.token_requests.append({k: ("***" if k == "client_secret" else v) for k, v in q.items()})
    secret_ok = hmac.compare_digest(
        q.get("client_secret", "").encode(), state.client_secret.encode()
    )
    if q.get("service") != "initService" or q.get("client_id") != CLIENT_ID or not secret_ok:
        return web.json_response({"error": "invalid_client"}, status=400)
    record = state.codes.pop(q.get("code", ""), None)
    if record is None or record["redirect_uri"] != q.get("redirect_uri"):
        return web.json_response({"error": "invalid_grant"}, status=400)
    token = secrets.token_urlsafe(24)
    state.tokens[token] = record["uid"]
    return web.json_response({"access_token": token, "expires_in": 600})


async def tokeninfo(request: web.Request) -> web.Response:
    state = request.app[STATE]
    uid = state.tokens.get(request.query.get("access_token", ""))
    if uid is None:
        return web.json_response({"error": "invalid_token"}, status=400)
    citizen = next(c for c in CITIZENS if c.uid == uid)
    userobj = {
        "uid": citizen.uid,
        "cn": citizen.resident.name,
        "idcardnumber": citizen.resident.id_number,
        "telephonenumber": citizen.phone,
        "extproperties": [f"trustlevel={citizen.trust_level}", "regioncode=440106"],
    }
    data = aes_encrypt(state.aes_key, orjson.dumps({"userobj": userobj}), os.urandom(16))
    return web.json_response(
        {"data": data, "signdata": body_signature("hmac-sha256", state.client_secret, data)}
    )
