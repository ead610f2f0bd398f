"""Demo legacy Shaanxi business system (不动产登记查询, and a CAS-protected department system).

Built the way provincial systems were built against signed-ticket platforms
(docs/identity-platforms.md, "Legacy business systems"), unchanged, but pointed at the gateway's
province-shaped face:
- ``/sso/login`` → gateway ``/legacy/ticket/login?servicecode=SX_BDC_QUERY&goto=…/sso/callback``;
  the callback calls ``ticketValidation`` then ``getUserInfo`` with ``md5(code+secret+time)``
  signatures and binds the (pairwise) platform user id to a local session;
- ``/cas/login`` → gateway ``/cas/login?service=…/cas/callback``; the callback validates at
  ``/cas/p3/serviceValidate`` and reads the CAS 3.0 attributes.
The pages show exactly what the gateway released (entitled attributes, masked).

Must not: log anything (it logs nothing at all).
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]

from gateway.identity.signing import SignatureSettings, sign_request

APP_CODE = "SX_BDC_QUERY"
CAS_NS = "http://www.yale.edu/tp/cas"


@dataclass
class LegacySystemState:
    gateway: str
    secret: str
    base_url: str = ""
    clock: Callable[[], float] = time.time
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Local sessions: face ('ticket' / 'cas'), user id and the released attributes."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None

    @property
    def callback(self) -> str:
        return f"{self.base_url}/sso/callback"

    @property
    def cas_service(self) -> str:
        return f"{self.base_url}/cas/callback"


STATE = web.AppKey("legacy_system_state", LegacySystemState)
COOKIE = "legacy_sx_bdc"


def build_legacy_system_app(state: LegacySystemState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.cleanup_ctx.append(_client)
    app.router.add_get("/", home)
    app.router.add_get("/sso/login", ticket_login)
    app.router.add_get("/sso/callback", ticket_callback)
    app.router.add_get("/cas/login", cas_login)
    app.router.add_get("/cas/callback", cas_callback)
    return app


async def _client(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.http = aiohttp.ClientSession()
    yield
    await state.http.close()


def _page(body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<title>陕西不动产登记查询（示范）</title></head><body>"
        f"<h1>陕西不动产登记查询（示范）Shaanxi real-estate registry</h1>{body}</body></html>"
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


async def home(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.sessions.get(request.cookies.get(COOKIE, ""))
    if session is None:
        return _page(
            "<p>您尚未登录。</p><p><a id='sign-in' href='/sso/login'>统一身份认证登录</a> · "
            "<a id='sign-in-cas' href='/cas/login'>CAS 登录</a></p>"
        )
    rows = "".join(
        f"<li><code>{html.escape(k)}</code>: <span id='attr-{html.escape(k)}'>"
        f"{html.escape(str(v))}</span></li>"
        for k, v in sorted(session["attributes"].items())
    )
    return _page(
        f"<p id='who'>已登录（{html.escape(session['face'])}）/ Signed in</p><ul>{rows}</ul>"
    )


async def ticket_login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    query = urlencode({"servicecode": APP_CODE, "goto": state.callback})
    raise web.HTTPFound(f"{state.gateway}/legacy/ticket/login?{query}")


async def _signed_post(
    state: LegacySystemState, operation: str, params: dict[str, str]
) -> dict[str, Any]:
    assert state.http is not None
    url = f"{state.gateway}/legacy/ticket/{operation}"
    signed, headers = sign_request(
        SignatureSettings(scheme="md5", code_param="servicecode"),
        APP_CODE,
        state.secret,
        method="POST",
        path=urlsplit(url).path,
        params=params,
        now=state.clock(),
    )
    async with state.http.post(url, data={**params, **signed}, headers=headers) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        return body


def _login(state: LegacySystemState, face: str, attributes: dict[str, Any]) -> web.Response:
    key = secrets.token_urlsafe(24)
    state.sessions[key] = {"face": face, "attributes": attributes}
    done = web.HTTPFound("/")
    done.set_cookie(COOKIE, key, httponly=True, samesite="Lax")
    raise done


async def ticket_callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ticket = request.query.get("ticket", "")
    validated = await _signed_post(state, "ticketValidation", {"st": ticket, "datatype": "json"})
    if validated.get("result") != "0":
        state.errors.append(validated)
        return _page(f"<p id='error'>{html.escape(str(validated.get('result')))}</p>", 400)
    info = await _signed_post(
        state, "getUserInfo", {"token": str(validated["token"]), "datatype": "json"}
    )
    if info.get("result") != "0":
        state.errors.append(info)
        return _page(f"<p id='error'>{html.escape(str(info.get('result')))}</p>", 400)
    return _login(state, "ticket", dict(info["user"]))


async def cas_login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raise web.HTTPFound(f"{state.gateway}/cas/login?{urlencode({'service': state.cas_service})}")


async def cas_callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.http is not None
    query = urlencode({"service": state.cas_service, "ticket": request.query.get("ticket", "")})
    async with state.http.get(f"{state.gateway}/cas/p3/serviceValidate?{query}") as response:
        xml = await response.read()
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    success = root.find(f"{{{CAS_NS}}}authenticationSuccess")
    if success is None:
        failure = root.find(f"{{{CAS_NS}}}authenticationFailure")
        code = failure.get("code") if failure is not None else "?"
        state.errors.append({"cas": code})
        return _page(f"<p id='error'>{html.escape(str(code))}</p>", 400)
    attributes: dict[str, Any] = {"userid": success.findtext(f"{{{CAS_NS}}}user")}
    found = success.find(f"{{{CAS_NS}}}attributes")
    for child in found if found is not None else []:
        attributes[etree.QName(child).localname] = child.text or ""
    return _login(state, "cas", attributes)
