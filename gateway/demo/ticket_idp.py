"""Demo signed-ticket identity platforms, each showing one way deployed platforms really behave
(docs/identity-platforms.md): Shaanxi (61), Gansu (62) and Ningxia (64).

One aiohttp server per platform:
- Shaanxi (Zhejiang personal-user shape, as specified): ``/sso/login?servicecode=&goto=``, the
  browser sent back to ``goto`` (so the gateway's ``state`` comes back), back-channel over HTTP
  form posts (``/sso/api/ticketValidation``, ``/sso/api/getUserInfo``) **and** SOAP
  (``/sso/soap``, the JSON answer a string in the SOAP body), ``sign = md5(code + secret +
  time)``, ``{"result": "0", ...}``, ``authlevel`` 1/2/3 and Zhejiang ID-type codes;
- Gansu (another vendor): ``/uc/login?appmark=&gotoUrl=``, but the browser goes back to the
  app's *registered* address with the return address nested, unencoded, in ``gotoUrl``; one web
  service per operation, each with its own namespace and its own element names
  (``ticketValidate(appmark, ticket, time, sign)`` at ``/uc/ws/ticket``,
  ``getUserInfo(appmark, token, time, sign)`` at ``/uc/ws/user``, no ``datatype``), SM3
  signatures, ``{"code": "200", "data": {...}}`` and the two-field level ``isauth`` +
  ``authstate``;
- Ningxia (a legacy vendor): ``/nx/cas/login?appid=&redirect=``, the return address ignored: the
  browser goes back to the registered address with the ticket only (no ``state`` at all); HTTP
  form posts with the platform's own names (``validateTicket(appid, ticket, timestamp, sign)``,
  ``getUser(appid, accessToken, timestamp, sign)``) signed by the reversible XOR/Base64 cipher,
  whose time the platform never checks; tickets ``md5(app + key + login name + issue time)``,
  **not** consumed on validation, **not** bound to the app that asked, valid until the end of
  their day; errors are HTTP 200 with ``{"errormsg": ...}`` alone.
Tickets of Shaanxi and Gansu are one-time and live 300 s; tokens 600 s. ``generateST(proxyapp)``
gives a Shaanxi token's holder a one-time proxy ticket (60 s) for a second app registered in
``other_apps``, which only that app can validate; ``soap_signature`` makes the SOAP endpoint
verify another scheme (e.g. HMAC-SHA256 request headers). Switches for tests: ``down`` (503),
``delay`` (slow answers), ``force_result`` (an error code on the next calls) and
``malformed_userinfo``. Every citizen is invented; the password of all of them is ``demo``.

Must not: log anything (it logs nothing at all).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import html
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.demo.residents import (
    DUAN_HAORAN,
    HAN_XUEMEI,
    MA_WENHUA,
    SU_LANXIN,
    ZHAO_YIMING,
    Resident,
    make_resident_id,
)
from gateway.identity.signing import (
    CST,
    NonceCache,
    SignatureError,
    SignatureSettings,
    format_time,
    parameter_scheme,
    verify_request,
)
from gateway.identity.ticket_soap import (
    SoapRequestError,
    answer,
    fault,
    header_signed_fields,
    parse_call,
)

PASSWORD = "demo"
APP_CODE = "tongban-gateway"
Style = Literal["shaanxi", "gansu", "ningxia"]
GANSU_NS = {
    "ticket": "http://uc.gansu.example/ws/ticket",
    "user": "http://uc.gansu.example/ws/user",
}
GANSU_OPERATIONS = {"ticket": "ticketValidate", "user": "getUserInfo"}

# Invented; the check character of this number is deliberately wrong (GB 11643 refusal demo).
BAD_CHECKSUM = Resident(
    "wei-bad", "魏测试", make_resident_id("610103", "19880101", 7)[:17] + "0", "male"
)
if BAD_CHECKSUM.id_number == make_resident_id("610103", "19880101", 7):  # pragma: no cover
    BAD_CHECKSUM = Resident("wei-bad", "魏测试", BAD_CHECKSUM.id_number[:17] + "1", "male")
LI_QIUSHUI = Resident("li-qiushui", "李秋水", make_resident_id("620102", "19950618", 262), "female")
MA_XIAOYAN = Resident("ma-xiaoyan", "马晓燕", make_resident_id("640104", "19930415", 82), "female")


@dataclass(frozen=True, slots=True)
class TicketCitizen:
    user_id: str
    resident: Resident
    phone: str
    level: tuple[str, ...]
    """Shaanxi and Ningxia: (level,); Gansu: (isauth, authstate)."""
    region: str = ""


SHAANXI_CITIZENS: tuple[TicketCitizen, ...] = (
    TicketCitizen("sx-200101", MA_WENHUA, "13891001234", ("3",), "610113"),
    TicketCitizen("sx-200102", ZHAO_YIMING, "13991002345", ("2",), "610402"),
    TicketCitizen("sx-200103", SU_LANXIN, "13709113456", ("1",), "610102"),
    TicketCitizen("sx-200199", BAD_CHECKSUM, "13709119999", ("2",), "610103"),
)
GANSU_CITIZENS: tuple[TicketCitizen, ...] = (
    TicketCitizen("gs-300101", HAN_XUEMEI, "13893101234", ("1", "1")),
    TicketCitizen("gs-300102", DUAN_HAORAN, "13993102345", ("0", "1")),
    TicketCitizen("gs-300103", LI_QIUSHUI, "18893103456", ("0", "2")),
)
NINGXIA_CITIZENS: tuple[TicketCitizen, ...] = (
    TicketCitizen("nx-mxy", MA_XIAOYAN, "13895101234", ("3",), "640104"),
    TicketCitizen("nx-dhr", DUAN_HAORAN, "13995102345", ("2",), "632123"),
)


@dataclass
class TicketPlatformState:
    """One platform: its registered app, its tickets and tokens; switches and counters."""

    style: Style
    secret: str
    return_prefixes: tuple[str, ...] = ()
    """Return addresses it accepts (the gateway's callbacks)."""
    registered: dict[str, str] = field(default_factory=dict)
    """App code → its registered address, where Gansu and Ningxia send the browser back."""
    base_url: str = ""
    clock: Callable[[], float] = time.time
    down: bool = False
    delay: float = 0.0
    force_result: str | None = None
    malformed_userinfo: bool = False
    calls: list[str] = field(default_factory=list)
    received: list[dict[str, str]] = field(default_factory=list)
    """Every back-channel call's parameters or elements, as they arrived."""
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    nonces: NonceCache = field(default_factory=lambda: NonceCache(600))
    other_apps: dict[str, str] = field(default_factory=dict)
    """Second apps registered at the platform (code → secret): proxy-ticket targets; Ningxia
    lets any of them validate any ticket."""
    soap_signature: SignatureSettings | None = None
    """The SOAP endpoint's signature scheme when not the platform's usual one."""

    @property
    def prefix(self) -> str:
        return {"shaanxi": "/sso", "gansu": "/uc", "ningxia": "/nx"}[self.style]

    @property
    def login_path(self) -> str:
        return f"{self.prefix}/cas/login" if self.style == "ningxia" else f"{self.prefix}/login"

    @property
    def citizens(self) -> tuple[TicketCitizen, ...]:
        return {"shaanxi": SHAANXI_CITIZENS, "gansu": GANSU_CITIZENS}.get(
            self.style, NINGXIA_CITIZENS
        )

    @property
    def params(self) -> tuple[str, str]:
        return {
            "shaanxi": ("servicecode", "goto"),
            "gansu": ("appmark", "gotoUrl"),
            "ningxia": ("appid", "redirect"),
        }[self.style]

    @property
    def signature(self) -> SignatureSettings:
        if self.style == "shaanxi":
            return SignatureSettings(scheme="md5", code_param="servicecode")
        if self.style == "gansu":
            return SignatureSettings(scheme="sm3", code_param="appmark")
        return SignatureSettings(
            scheme="xor-base64-md5", code_param="appid", time_param="timestamp"
        )

    @property
    def title(self) -> str:
        return {
            "shaanxi": "陕西政务服务网 统一身份认证",
            "gansu": "甘肃政务服务网 用户中心",
            "ningxia": "宁夏政务服务网 统一认证（旧版）",
        }[self.style]

    def secret_of(self, code: str) -> str | None:
        return self.secret if code == APP_CODE else self.other_apps.get(code)


STATE = web.AppKey("ticket_platform_state", TicketPlatformState)


@web.middleware
async def _switches_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    state = request.app[STATE]
    if state.down:
        return web.Response(status=503, text="maintenance")
    if state.delay:
        await asyncio.sleep(state.delay)
    response: web.StreamResponse = await handler(request)
    return response


def build_ticket_platform_app(state: TicketPlatformState) -> web.Application:
    app = web.Application(middlewares=[_switches_middleware])
    app[STATE] = state
    prefix = state.prefix
    app.router.add_get(state.login_path, login_form)
    app.router.add_post(state.login_path, login)
    if state.style == "shaanxi":
        app.router.add_post(f"{prefix}/soap", soap)
        app.router.add_post(f"{prefix}/api/{{operation}}", http_call)
    elif state.style == "gansu":
        app.router.add_post(f"{prefix}/ws/{{service}}", gansu_soap)
    else:
        app.router.add_post(f"{prefix}/api/{{operation}}", ningxia_call)
    return app


def _page(state: TicketPlatformState, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        f"<title>{state.title}</title><style>body{{font-family:'WenQuanYi Zen Hei',sans-serif;"
        "max-width:36em;margin:2em auto;background:#fbf7f2}h1{color:#8a2a0a}</style></head>"
        f"<body><h1>{state.title}</h1>{body}</body></html>"
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


async def login_form(request: web.Request) -> web.Response:
    state = request.app[STATE]
    app_param, return_param = state.params
    app = request.query.get(app_param, "")
    back = request.query.get(return_param, "")
    known = app in state.registered if state.style == "ningxia" else app == APP_CODE
    # Ningxia ignores the return address altogether; the others check it.
    if not known or (state.style != "ningxia" and not back.startswith(state.return_prefixes)):
        return _page(state, "<p>未登记的应用 / unknown app or return address</p>", 400)
    options = "".join(
        f"<option value='{c.user_id}'>{html.escape(c.resident.name)} ({c.user_id})</option>"
        for c in state.citizens
    )
    body = (
        f"<form method='post' action='{state.login_path}'>"
        f"<input type='hidden' name='app' value='{html.escape(app)}'>"
        f"<input type='hidden' name='back' value='{html.escape(back)}'>"
        f"<p><label>账号 / Account <select name='user' id='user'>{options}</select></label></p>"
        "<p><label>密码 / Password <input type='password' name='password' id='password'>"
        "</label> (demo)</p><p><button type='submit' id='sign-in'>登录 / Sign in</button></p>"
        "</form>"
    )
    return _page(state, body)


def ningxia_ticket(state: TicketPlatformState, app: str, login_name: str, issued: float) -> str:
    """md5(app + key + login name + issue time): the legacy vendor's ticket."""
    raw = f"{app}{state.secret_of(app) or ''}{login_name}{format_time(issued)}"
    return hashlib.md5(raw.encode(), usedforsecurity=False).hexdigest()  # the vendor's scheme


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    back = str(form.get("back", ""))
    app = str(form.get("app", APP_CODE))
    citizen = next((c for c in state.citizens if c.user_id == form.get("user")), None)
    password = str(form.get("password", ""))
    if state.style != "ningxia" and not back.startswith(state.return_prefixes):
        return _page(state, "<p>unknown return address</p>", 400)
    if citizen is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _page(state, "<p>账号或密码错误 / wrong account or password</p>", 400)
    now = state.clock()
    if state.style == "ningxia":
        ticket = ningxia_ticket(state, app, citizen.user_id, now)
        state.tickets[ticket] = {"user": citizen.user_id, "issued": now}
        # Back to the registered address with the ticket alone: no state, no return address.
        raise web.HTTPFound(f"{state.registered[app]}?{urlencode({'ticket': ticket})}")
    ticket = secrets.token_urlsafe(24)
    state.tickets[ticket] = {"user": citizen.user_id, "expires": now + 300}
    if state.style == "gansu":
        # Back to the registered address, the app's own return address nested unencoded.
        raise web.HTTPFound(
            f"{state.registered[APP_CODE]}?{urlencode({'ticket': ticket})}&gotoUrl={back}"
        )
    separator = "&" if "?" in back else "?"
    raise web.HTTPFound(f"{back}{separator}{urlencode({'ticket': ticket})}")


def _error(state: TicketPlatformState, code: str, message: str) -> dict[str, Any]:
    if state.style == "shaanxi":
        return {"result": code, "errmsg": message}
    if state.style == "gansu":
        return {"code": code, "msg": message, "data": None}
    return {"errormsg": message}  # no code at all, and HTTP 200


def _ok(state: TicketPlatformState, data: dict[str, Any]) -> dict[str, Any]:
    if state.style == "shaanxi":
        return {"result": "0", "errmsg": "", **data}
    if state.style == "gansu":
        return {"code": "200", "msg": "ok", "data": data}
    return {"success": True, "data": data}


def _attributes(state: TicketPlatformState, citizen: TicketCitizen) -> dict[str, Any]:
    person = citizen.resident
    if state.style == "shaanxi":
        return {
            "userid": citizen.user_id,
            "loginname": citizen.user_id,
            "username": person.name,
            "sex": "1" if person.gender == "male" else "2",
            "idtype": "1",
            "idnum": person.id_number,
            "mobile": citizen.phone,
            "regioncode": citizen.region,
            "authlevel": citizen.level[0],
            "authtype": "face" if citizen.level[0] == "3" else "password",
        }
    if state.style == "gansu":
        return {
            "userId": citizen.user_id,
            "userName": person.name,
            "certType": "01",
            "certNo": person.id_number,
            "phone": citizen.phone,
            "isauth": int(citizen.level[0]),
            "authstate": int(citizen.level[1]),
        }
    return {
        "userId": citizen.user_id,
        "loginName": citizen.user_id,
        "realName": person.name,
        "idCardNo": person.id_number,
        "mobile": citizen.phone,
        "regionCode": citizen.region,
        "realNameLevel": citizen.level[0],
    }


def _same_day(state: TicketPlatformState, issued: float) -> bool:
    """Expiry compared in whole days, as the legacy vendor does."""
    day = dt.datetime.fromtimestamp(issued, CST).date()
    return day == dt.datetime.fromtimestamp(state.clock(), CST).date()


def operate(
    state: TicketPlatformState,
    operation: str,
    fields: Mapping[str, str],
    argument: str,
    app: str = APP_CODE,
) -> dict[str, Any]:
    """ticketValidation / getUserInfo / generateST after the signature check of ``app``; the
    platform's JSON answer (Gansu's and Ningxia's operations go by their own names)."""
    state.calls.append(operation)
    if state.force_result is not None:
        return _error(state, state.force_result, "平台内部错误")
    if operation in ("ticketValidation", "ticketValidate", "validateTicket"):
        return _validate(state, argument, app)
    if operation in ("getUserInfo", "getUser"):
        found = state.tokens.get(argument)
        if found is None or found["expires"] < state.clock():
            return _error(state, "6501", "令牌无效")
        if state.malformed_userinfo:
            return _ok(state, {"user": "not-an-object"} if state.style == "shaanxi" else {})
        citizen = next(c for c in state.citizens if c.user_id == found["user"])
        attributes = _attributes(state, citizen)
        return _ok(state, {"user": attributes} if state.style == "shaanxi" else attributes)
    if operation == "generateST":
        found = state.tokens.get(argument)
        if found is None or found["expires"] < state.clock() or found.get("app") != app:
            return _error(state, "6501", "令牌无效")
        target = fields.get("proxyapp", "")
        if target not in state.other_apps:
            return _error(state, "9002", "未登记的代理应用")
        ticket = secrets.token_urlsafe(24)
        state.tickets[ticket] = {
            "user": found["user"],
            "expires": state.clock() + 60,
            "app": target,
        }
        return _ok(state, {"ticket": ticket})
    return _error(state, "9001", "未知操作")


def _validate(state: TicketPlatformState, ticket: str, app: str) -> dict[str, Any]:
    if state.style == "ningxia":
        # Not consumed, not bound to the app that asked, expiry by the day.
        record = state.tickets.get(ticket)
        if record is None:
            return _error(state, "", "票据无效")
        if not _same_day(state, record["issued"]):
            return _error(state, "", "票据已过期")
        token = secrets.token_urlsafe(24)
        state.tokens[token] = {"user": record["user"], "expires": state.clock() + 600, "app": app}
        data = {
            "token": token,
            "userId": record["user"],
            "createTime": format_time(record["issued"]),
        }
        return _ok(state, data)
    record = state.tickets.pop(ticket, None)
    if record is None:
        return _error(state, "6001", "票据不存在或已使用")
    if record["expires"] < state.clock():
        return _error(state, "6002", "票据已过期")
    if record.get("app", APP_CODE) != app:
        return _error(state, "6003", "票据不属于该应用")
    token = secrets.token_urlsafe(24)
    state.tokens[token] = {"user": record["user"], "expires": state.clock() + 600, "app": app}
    key = "userid" if state.style == "shaanxi" else "userId"
    return _ok(state, {"token": token, key: record["user"]})


def _check(
    state: TicketPlatformState,
    request: web.Request,
    params: Mapping[str, str],
    operation: str,
    argument: str,
    settings: SignatureSettings,
) -> tuple[dict[str, Any] | None, str]:
    """(the refusal, or None; the calling app's code)."""
    try:
        app = verify_request(
            settings,
            state.secret_of,
            method="POST",
            path=request.path,
            params=params,
            headers=request.headers,
            now=state.clock(),
            nonces=state.nonces,
            operation=operation,
            argument=argument,
        )
    except SignatureError as exc:
        return _error(state, "1001", exc.reason), ""
    return None, app


async def http_call(request: web.Request) -> web.Response:
    state = request.app[STATE]
    operation = request.match_info["operation"]
    params = {k: str(v) for k, v in (await request.post()).items()}
    state.received.append(params)
    argument = params.get("st" if operation == "ticketValidation" else "token", "")
    refused, app = _check(state, request, params, operation, argument, state.signature)
    body = refused or operate(state, operation, params, argument, app)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def ningxia_call(request: web.Request) -> web.Response:
    """The legacy vendor's form posts: the sign is checked against the time given, however old
    (the vendor never checks it for freshness), and refusals are ``{"errormsg"}`` with 200."""
    state = request.app[STATE]
    operation = request.match_info["operation"]
    params = {k: str(v) for k, v in (await request.post()).items()}
    state.received.append(params)
    app, when, given = params.get("appid", ""), params.get("timestamp", ""), params.get("sign", "")
    secret = state.secret_of(app)
    expected = parameter_scheme("xor-base64-md5").sign(app, secret or "", when)
    if secret is None or not when or not hmac.compare_digest(expected, given):
        body = _error(state, "", "签名错误")
    else:
        argument = params.get("ticket" if operation == "validateTicket" else "accessToken", "")
        body = operate(state, operation, params, argument, app)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def soap(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        operation, fields = parse_call(await request.read())
    except SoapRequestError as exc:
        return web.Response(status=500, body=fault("Client", str(exc)), content_type="text/xml")
    state.received.append(fields)
    settings = (state.soap_signature or state.signature).model_copy(
        update={"code_param": "app", "time_param": "time", "sign_param": "sign"}
    )
    argument = fields.get("arg", "")
    signed = header_signed_fields(operation, fields) if settings.scheme == "hmac-sha256" else fields
    refused, app = _check(state, request, signed, operation, argument, settings)
    body = refused or operate(state, operation, fields, argument, app)
    # The answer is a JSON *string* inside the SOAP body, as these platforms send it.
    text = orjson.dumps(body).decode()
    return web.Response(body=answer(operation, text), content_type="text/xml")


async def gansu_soap(request: web.Request) -> web.Response:
    """Gansu's two web services, each in its own namespace and with its own element names."""
    state = request.app[STATE]
    service = request.match_info["service"]
    namespace = GANSU_NS.get(service)
    if namespace is None:
        raise web.HTTPNotFound()
    try:
        operation, fields = parse_call(
            await request.read(),
            namespaces=(namespace,),
            operations=(GANSU_OPERATIONS[service],),
            fields=None,
        )
    except SoapRequestError as exc:
        return web.Response(status=500, body=fault("Client", str(exc)), content_type="text/xml")
    state.received.append(fields)
    settings = state.signature.model_copy(update={"code_param": "appmark"})
    argument = fields.get("ticket" if service == "ticket" else "token", "")
    refused, app = _check(state, request, fields, operation, argument, settings)
    body = refused or operate(state, operation, fields, argument, app)
    text = orjson.dumps(body).decode()
    return web.Response(body=answer(operation, text, namespace), content_type="text/xml")
