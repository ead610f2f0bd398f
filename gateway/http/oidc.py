"""Thin aiohttp layer of the OpenID provider: read the request, call the core, send its answer.

Endpoints (OpenID Connect Discovery 1.0 §3 names them all): discovery, JWKS (RFC 7517 §5),
authorize (OIDC Core §3.1.2, GET and POST), token (RFC 6749 §3.2), userinfo (OIDC Core §5.3),
introspection (RFC 7662), revocation (RFC 7009), end session (RP-Initiated Logout 1.0).

These handlers return responses instead of raising: OAuth endpoints answer in the RFC 6749 §5.2
error format (or redirect, or an error page), never problem+json. Bodies are read here,
asynchronously, before the synchronous core sees the request; the core's synchronous calls go
through ``OpenIDProvider.run_with_store`` (a worker thread when the identity store is Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import structlog
from aiohttp import web

from gateway.errors import Forbidden, ProvinceNotAllowed
from gateway.http.login import add_login_routes
from gateway.identity.assertion import issue_assertion
from gateway.identity.clients import ClientRegistration
from gateway.identity.provider import OpenIDProvider
from gateway.identity.requests import IdentityRequest, IdentityResponse, ParameterError
from gateway.identity.verifier import MACHINE_LEVEL
from gateway.principal import Principal

OIDC_PROVIDER = web.AppKey("oidc_provider", OpenIDProvider)
MAX_BODY_BYTES = 64 * 1024
PURGE_INTERVAL = 60.0
log = structlog.get_logger("tongban.identity")

_COMMON_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Frame-Options": "DENY",
}


def add_oidc_routes(app: web.Application, provider: OpenIDProvider) -> None:
    """Mount the provider's endpoints on ``app`` and purge expired records while it runs."""
    app[OIDC_PROVIDER] = provider
    app.cleanup_ctx.append(_housekeeping)
    router = app.router
    router.add_get("/.well-known/openid-configuration", discovery)
    router.add_get("/oauth2/jwks", jwks)
    router.add_get("/oauth2/authorize", authorize)
    router.add_post("/oauth2/authorize", authorize)
    router.add_post("/oauth2/token", token)
    router.add_get("/oauth2/userinfo", userinfo)
    router.add_post("/oauth2/userinfo", userinfo)
    router.add_post("/oauth2/introspect", introspect)
    router.add_post("/oauth2/revoke", revoke)
    router.add_get("/oauth2/logout", logout)
    router.add_post("/oauth2/logout", logout)
    # The SSO session's login page and platform callbacks, when that is the authenticator.
    add_login_routes(app, provider)


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    provider = app[OIDC_PROVIDER]

    async def purge_forever() -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            gone = await provider.run_with_store(provider.purge_expired)
            if gone:
                log.debug("identity_records_purged", count=gone)

    task = asyncio.create_task(purge_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await provider.aclose()  # the identity store, opened with the provider


def _to_web(response: IdentityResponse) -> web.Response:
    out = web.Response(status=response.status, body=response.body)
    for name, value in response.headers:
        if name.lower() == "set-cookie":
            out.headers.add(name, value)  # several cookies: never collapse them
        else:
            out.headers[name] = value
    out.headers.update(_COMMON_HEADERS)
    if out.headers.get("Content-Type", "").startswith("text/html"):
        out.headers.update(_PAGE_HEADERS)
    return out


def _json(data: object, *, cache: str) -> web.Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(
        body=body,
        content_type="application/json",
        headers={"Cache-Control": cache, "Access-Control-Allow-Origin": "*", **_COMMON_HEADERS},
    )


async def _read(request: web.Request, provider: OpenIDProvider) -> IdentityRequest:
    """The request as the core wants it; raises ParameterError when it cannot be accepted."""
    body = b""
    if request.method == "POST":
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise ParameterError("The request body is too large.")
        body = await request.read()
        if len(body) > MAX_BODY_BYTES:
            raise ParameterError("The request body is too large.")
    return IdentityRequest.build(
        request.method,
        # Built from the issuer, not the Host header: the URL authlib checks for https and the
        # resume URL a login page returns to must not be attacker-chosen.
        provider.settings.issuer + request.raw_path,
        headers=dict(request.headers),
        query_string=request.rel_url.raw_query_string,
        body=body,
        content_type=request.content_type,
    )


def _endpoint(
    name: str, call: Callable[[OpenIDProvider, IdentityRequest], Awaitable[IdentityResponse]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        provider = request.app[OIDC_PROVIDER]
        try:
            identity_request = await _read(request, provider)
        except ParameterError as exc:
            return _to_web(provider.parameter_error(name, str(exc)))
        return _to_web(await call(provider, identity_request))

    handler.__name__ = name
    return handler


async def _authorize(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    return await provider.authorize(request)


async def _token(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    return await provider.run_with_store(provider.token, request)


async def _userinfo(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    return await provider.run_with_store(provider.userinfo, request)


async def _introspect(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    return await provider.run_with_store(provider.introspect, request)


async def _revoke(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    return await provider.run_with_store(provider.revoke, request)


async def _logout(provider: OpenIDProvider, request: IdentityRequest) -> IdentityResponse:
    # The authenticator clears the session cookie with the session, and only then.
    return await provider.end_session(request)


authorize = _endpoint("authorize", _authorize)
token = _endpoint("token", _token)
userinfo = _endpoint("userinfo", _userinfo)
introspect = _endpoint("introspect", _introspect)
revoke = _endpoint("revoke", _revoke)
logout = _endpoint("logout", _logout)


# --- what /api handlers ask of the provider ----------------------------------------------------

CALL_SCOPE = "services:call"
"""Scope a token needs to call catalogue services."""


def client_allows(app: web.Application, principal: Principal, service: str) -> bool:
    """Does the token's client's registration allow ``service``? (True without a provider.)"""
    provider = app.get(OIDC_PROVIDER)
    return provider is None or provider.clients.allows_service(principal.client_id, service)


def check_client_may_call(app: web.Application, principal: Principal, service: str) -> None:
    """The token's client may call ``service``: its registration allows the service and the
    token carries the call scope. Without a provider (bare test apps) nothing is checked."""
    if app.get(OIDC_PROVIDER) is None:
        return
    if not client_allows(app, principal, service):
        raise Forbidden(f"This client may not call the service {service!r}.")
    if CALL_SCOPE not in principal.scopes:
        raise Forbidden(f"The token lacks the scope {CALL_SCOPE!r}.")


def client_registration(app: web.Application, principal: Principal) -> ClientRegistration | None:
    """The registration of the token's client (None without a provider, or for a dev token's
    made-up client)."""
    provider = app.get(OIDC_PROVIDER)
    return provider.clients.registration(principal.client_id) if provider is not None else None


def check_receiving_province(
    registration: ClientRegistration | None, principal: Principal, receiving: str
) -> None:
    """A client registered for some provinces receives for those only (收件地)."""
    if registration is None or not registration.provinces:
        return
    if receiving not in registration.provinces:
        raise ProvinceNotAllowed(
            f"Client {principal.client_id!r} receives for {list(registration.provinces)}, not"
            f" {receiving}.",
            receiving_province=receiving,
        )


def machine_admitted(registration: ClientRegistration | None, principal: Principal) -> bool:
    """A client-credentials token of a client admitted by configuration (``acts_as``): its
    services are its registration's, and no person's identity level applies to it."""
    return (
        registration is not None
        and registration.acts_as is not None
        and principal.level == MACHINE_LEVEL
        and principal.person is None
    )


def identity_assertion(
    app: web.Application,
    principal: Principal,
    *,
    audience: str,
    purpose: str,
    service: str,
    case_id: str | None,
    grant: str | None,
    source_province: str | None = None,
    data_subjects: Sequence[Mapping[str, str]] = (),
) -> str | None:
    """Short-lived signed assertion for the back-end, when a provider signs one."""
    provider = app.get(OIDC_PROVIDER)
    if provider is None:
        return None
    settings = provider.settings
    return issue_assertion(
        provider.keys,
        issuer=settings.issuer,
        algorithm=settings.algorithms[0],
        audience=audience,
        subject=principal.subject,
        actor=principal.actor,
        actor_role=principal.actor_role,
        level=principal.level,
        purpose=purpose,
        service=service,
        case_id=case_id,
        grant=grant,
        source_province=source_province,
        data_subjects=data_subjects,
        client_id=principal.client_id,
        now=provider.clock(),
        ttl=settings.assertion_ttl,
    )


async def discovery(request: web.Request) -> web.Response:
    return _json(request.app[OIDC_PROVIDER].discovery(), cache="public, max-age=3600")


async def jwks(request: web.Request) -> web.Response:
    return _json(request.app[OIDC_PROVIDER].jwks(), cache="public, max-age=300")
