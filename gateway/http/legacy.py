"""The web side of the legacy faces (gateway/identity/legacy_face.py): ticket face and CAS.

Ticket face (province-shaped, docs/identity-platforms.md, "Legacy business systems"):
- ``GET /legacy/ticket/login?servicecode=APP&goto=CALLBACK`` (``appmark`` / ``gotoUrl`` too): the
  SSO session (or a login) → ``CALLBACK?ticket=…``;
- ``POST /legacy/ticket/ticketValidation`` and ``/legacy/ticket/getUserInfo``: signed form
  calls (``datatype=json``), errors as result codes with HTTP 200 like the platforms;
- ``POST /legacy/ticket/generateST`` (``token``, ``proxyapp``): a one-time proxy ticket for an
  app the caller may proxy to, which that app validates with its own ``ticketValidation``;
- ``POST /legacy/ticket/soap`` (document/literal, the answer a JSON string), WSDL at
  ``GET /legacy/ticket/soap?wsdl``.
CAS (CAS Protocol 3.0): ``GET /cas/login?service=``, ``/cas/serviceValidate`` (2.0, no
attributes), ``/cas/p3/serviceValidate`` (3.0, attributes).

Only converts requests and responses; every decision is in the core.
"""

from __future__ import annotations

from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.http.keys import SETTINGS
from gateway.identity.authn import AuthenticatedUser, AuthorizationContext
from gateway.identity.legacy_face import FaceError, LegacyFace, failure_body
from gateway.identity.provider import OpenIDProvider
from gateway.identity.requests import Headers, IdentityRequest, IdentityResponse
from gateway.identity.sso import SessionAuthenticator
from gateway.identity.ticket_soap import SoapRequestError, answer, fault, parse_call
from gateway.packaged import TICKET_FACE_WSDL

LEGACY_FACE = web.AppKey("legacy_face", LegacyFace)
LEGACY_AUTHENTICATOR = web.AppKey("legacy_authenticator", SessionAuthenticator)
LEGACY_ISSUER = web.AppKey("legacy_issuer", str)
WSDL_FILE = TICKET_FACE_WSDL
WSDL_PLACEHOLDER = "http://127.0.0.1/identity/ticket/soap"
_MAX_FORM = 16 * 1024
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}


def add_legacy_routes(
    app: web.Application, provider: OpenIDProvider, authenticator: SessionAuthenticator
) -> None:
    """Mount the faces when legacy-apps.yaml registers apps."""
    apps = app[SETTINGS].legacy_apps
    if not apps:
        return
    face = LegacyFace(
        apps, authenticator.store, provider.settings.pairwise_secret, clock=authenticator.clock
    )
    app[LEGACY_FACE] = face
    app[LEGACY_AUTHENTICATOR] = authenticator
    app[LEGACY_ISSUER] = provider.settings.issuer
    app.router.add_get("/legacy/ticket/login", ticket_login)
    app.router.add_post("/legacy/ticket/ticketValidation", ticket_validation)
    app.router.add_post("/legacy/ticket/getUserInfo", get_user_info)
    app.router.add_post("/legacy/ticket/generateST", generate_st)
    app.router.add_get("/legacy/ticket/soap", wsdl)
    app.router.add_post("/legacy/ticket/soap", soap)
    app.router.add_get("/cas/login", cas_login)
    app.router.add_get("/cas/serviceValidate", cas_validate_v2)
    app.router.add_get("/cas/p3/serviceValidate", cas_validate_v3)


def _page(text: str, status: int) -> web.Response:
    return web.Response(
        status=status,
        text=f"<!doctype html><meta charset='utf-8'><title>{text}</title><p>{text}</p>",
        content_type="text/html",
        headers=_NO_STORE,
    )


async def _signed_in(request: web.Request, client: str) -> AuthenticatedUser | web.Response:
    """The SSO session's user, or the response starting a login that comes back here."""
    authenticator = request.app[LEGACY_AUTHENTICATOR]
    issuer = request.app[LEGACY_ISSUER]
    identity_request = IdentityRequest(
        method="GET",
        url=issuer + request.raw_path,
        headers=Headers(dict(request.headers)),
        query=dict(request.query),
    )
    context = AuthorizationContext(
        request=identity_request,
        client_id=client,
        scope="",
        prompt=frozenset(),
        max_age=None,
        acr_values=(),
        login_hint=request.query.get("idp_hint"),
        resume_url=issuer + request.raw_path,
    )
    result = await authenticator.authenticate(context)
    if isinstance(result, AuthenticatedUser):
        return result
    if isinstance(result, IdentityResponse):
        response = web.Response(status=result.status, body=result.body)
        for name, value in result.headers:
            response.headers.add(name, value)
        return response
    return _page("未登录 / Not signed in", 401)


def _append(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


async def ticket_login(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    q = request.query
    app_id = q.get("servicecode") or q.get("appmark") or ""
    return_to = q.get("goto") or q.get("gotoUrl") or ""
    if face.ticket_app(app_id, return_to) is None:
        # Never redirect to an address the app did not register (open redirect).
        return _page("未登记的应用或回调地址 / Unknown app or callback", 400)
    found = await _signed_in(request, f"legacy:{app_id}")
    if not isinstance(found, AuthenticatedUser):
        return found
    assert found.session_id is not None
    ticket = await face.issue_ticket(app_id, found.session_id)
    raise web.HTTPFound(_append(return_to, ticket=ticket), headers=_NO_STORE)


async def _form(request: web.Request) -> dict[str, str]:
    if (request.content_length or 0) > _MAX_FORM:
        raise FaceError("6100", "request_too_large")
    data = await request.post()
    return {k: str(v) for k, v in data.items()}


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type=_JSON, headers=_NO_STORE)


async def ticket_validation(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    try:
        params = await _form(request)
        ticket = params.get("st") or params.get("ticket") or ""
        app_id = face.verify(
            method="POST",
            path=request.path,
            params=params,
            headers=request.headers,
            operation="ticketValidation",
            argument=ticket,
        )
        return _json(await face.ticket_validation(app_id, ticket))
    except FaceError as exc:
        return web.Response(body=failure_body(exc), content_type=_JSON, headers=_NO_STORE)


async def get_user_info(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    try:
        params = await _form(request)
        token = params.get("token", "")
        app_id = face.verify(
            method="POST",
            path=request.path,
            params=params,
            headers=request.headers,
            operation="getUserInfo",
            argument=token,
        )
        wanted = tuple(a for a in params.get("attrs", "").split(",") if a)
        return _json(await face.get_user_info(app_id, token, wanted))
    except FaceError as exc:
        return web.Response(body=failure_body(exc), content_type=_JSON, headers=_NO_STORE)


async def generate_st(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    try:
        params = await _form(request)
        token = params.get("token", "")
        app_id = face.verify(
            method="POST",
            path=request.path,
            params=params,
            headers=request.headers,
            operation="generateST",
            argument=token,
        )
        return _json(await face.proxy_ticket(app_id, token, params.get("proxyapp", "")))
    except FaceError as exc:
        return web.Response(body=failure_body(exc), content_type=_JSON, headers=_NO_STORE)


async def wsdl(request: web.Request) -> web.Response:
    if "wsdl" not in request.query:
        return _page("WSDL: ?wsdl", 400)
    text = WSDL_FILE.read_text(encoding="utf-8")
    address = request.app[LEGACY_ISSUER] + "/legacy/ticket/soap"
    return web.Response(text=text.replace(WSDL_PLACEHOLDER, address), content_type="text/xml")


async def soap(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    body = await request.read()
    try:
        operation, fields = parse_call(body)
    except SoapRequestError as exc:
        return web.Response(status=500, body=fault("Client", str(exc)), content_type="text/xml")
    argument = fields.get("arg", "")
    try:
        app_id = face.verify(
            method="POST",
            path=request.path,
            params=fields,
            headers=request.headers,
            operation=operation,
            argument=argument,
            soap=True,
        )
        if operation == "ticketValidation":
            result: dict[str, object] = dict(await face.ticket_validation(app_id, argument))
        elif operation == "generateST":
            target = fields.get("proxyapp", "")
            result = dict(await face.proxy_ticket(app_id, argument, target))
        else:
            wanted = tuple(a for a in fields.get("attrs", "").split(",") if a)
            result = await face.get_user_info(app_id, argument, wanted)
        text = orjson.dumps(result).decode()
    except FaceError as exc:
        text = failure_body(exc).decode()
    return web.Response(body=answer(operation, text), content_type="text/xml", headers=_NO_STORE)


async def cas_login(request: web.Request) -> web.Response:
    face = request.app[LEGACY_FACE]
    service = request.query.get("service", "")
    app_id = face.cas_app(service) if service else None
    if app_id is None:
        return _page("未登记的服务 / Unknown service", 400)
    found = await _signed_in(request, f"legacy:{app_id}")
    if not isinstance(found, AuthenticatedUser):
        return found
    assert found.session_id is not None
    ticket = await face.issue_ticket(app_id, found.session_id, service=service)
    raise web.HTTPFound(_append(service, ticket=ticket), headers=_NO_STORE)


async def _cas_validate(request: web.Request, *, attributes: bool) -> web.Response:
    face = request.app[LEGACY_FACE]
    body = await face.cas_validate(
        request.query.get("service", ""), request.query.get("ticket", ""), attributes=attributes
    )
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


async def cas_validate_v2(request: web.Request) -> web.Response:
    return await _cas_validate(request, attributes=False)


async def cas_validate_v3(request: web.Request) -> web.Response:
    return await _cas_validate(request, attributes=True)
