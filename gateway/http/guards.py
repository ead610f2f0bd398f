"""Guards in front of what anyone may call without a token: the OpenID endpoints that take
client credentials, the login pages, and the audit records of refused anonymous requests.

``endpoint_limit_middleware`` (budgets in ``rate_limits.endpoints``, counted by the /api
limiter's store, so Redis shares them between instances):
- POST /oauth2/token, /oauth2/introspect, /oauth2/revoke draw on the source's budget and on
  the named client's (a registered ``client_id`` from HTTP Basic or the form); a source whose
  failed client authentications (401 ``invalid_client``) spent ``client_auth_failures`` is
  refused before its secret is even checked. Refusals are RFC 6749-shaped JSON, 429 with
  ``Retry-After``: ``{"error": "slow_down"}`` (the OAuth code for "poll less often", RFC 8628
  §3.5), never problem+json on these endpoints.
- /login and /login/... (the login page, the platform choice, the platforms' callbacks) draw
  on the source's login budget; a refusal is 429 ``client.rate_limited`` problem+json.

``refusal_audit_middleware`` holds the anonymous refusal records a request makes and asks the
same store whether its source may still write them one by one; otherwise they are counted and
summarised (gateway/audit/refusals.py). A request whose budget check cannot be made (store
down) is summarised, never written one by one: failing open here would reopen the channel.

The source: the peer's address, an IPv6 one by its /64 (one host holds a whole /64); behind a
proxy listed in ``trusted_proxies``, the last X-Forwarded-For entry that is not one of them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import ipaddress
import json
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import unquote

import structlog
from aiohttp import web

from gateway.audit.record import AuditEvent
from gateway.audit.refusals import RefusalSummary, collecting
from gateway.errors import AuditUnavailable, RateLimited
from gateway.http.keys import SETTINGS, STATE
from gateway.http.middlewares import Handler
from gateway.http.oidc import OIDC_PROVIDER
from gateway.ratelimit.config import EndpointRateLimits, parse_rate
from gateway.ratelimit.limiter import Budget, Verdict

log = structlog.get_logger("tongban.guards")

TOKEN_PATHS: Final = frozenset({"/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"})
REFUSALS = web.AppKey("refusal_summary", RefusalSummary)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@functools.lru_cache(maxsize=64)
def _budget(scope: str, rate: str) -> Budget:
    return Budget(scope, parse_rate(rate))  # type: ignore[arg-type]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def source_of(request: web.Request, limits: EndpointRateLimits) -> str:
    """The request's source as the budgets count it (see the module docstring)."""
    peer = _address(request.remote or "")
    trusted = _networks(limits.trusted_proxies)
    if peer is not None and trusted and any(peer in n for n in trusted):
        hops = [_address(h) for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed(hops):
            if hop is None:
                break
            peer = hop
            if not any(hop in n for n in trusted):
                break
    if peer is None:
        return "unknown"
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{peer}/64", strict=False))
    return str(peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) else peer)


def _limits(request: web.Request) -> EndpointRateLimits:
    return request.app[SETTINGS].gateway.rate_limits.endpoints


# --- token, introspection, revocation, logins -------------------------------------------------


def _slow_down(verdict: Verdict) -> web.Response:
    body = {
        "error": "slow_down",
        "error_description": f"Too many requests; try again in {verdict.retry_after} seconds.",
    }
    return web.Response(
        status=429,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Retry-After": str(verdict.retry_after), "Cache-Control": "no-store"},
    )


async def _claimed_client(request: web.Request) -> str | None:
    """The client_id a token-endpoint request names (not yet authenticated)."""
    scheme, _, blob = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            text = base64.b64decode(blob.strip(), validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote(text.partition(":")[0]) or None
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()  # cached: the endpoint reads the same body
        value = form.get("client_id")
        return value if isinstance(value, str) and value else None
    return None


def _registered(request: web.Request, client_id: str | None) -> bool:
    provider = request.app.get(OIDC_PROVIDER)
    return (
        client_id is not None
        and provider is not None
        and provider.clients.get(client_id) is not None
    )


@web.middleware
async def endpoint_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Budgets of the token, introspection, revocation and login endpoints (module docstring)."""
    path = request.path
    token = request.method == "POST" and path in TOKEN_PATHS
    login = path == "/login" or path.startswith("/login/")
    limiter = request.app[STATE].rate_limiter
    if not (token or login) or limiter is None:
        return await handler(request)
    limits = _limits(request)
    source = source_of(request, limits)
    if login:
        if limits.login_per_source is not None:
            verdict = await limiter.hit(
                [(_budget("source", limits.login_per_source), f"login|{source}")]
            )
            if not verdict.allowed:
                log.info("login_rate_limited", retry_after=verdict.retry_after)
                raise RateLimited("source", verdict.retry_after)
        return await handler(request)
    failures = limits.client_auth_failures
    failure_draw = (
        [(_budget("client_auth_failures", failures), f"oauth-fail|{source}")] if failures else []
    )
    if failure_draw:
        spent = await limiter.hit(failure_draw, peek=True)
        if not spent.allowed:
            log.info("client_auth_failures_limited", retry_after=spent.retry_after)
            return _slow_down(spent)
    draws: list[tuple[Budget, str]] = []
    if limits.token_per_source is not None:
        draws.append((_budget("source", limits.token_per_source), f"oauth|{source}"))
    client_id = await _claimed_client(request)
    if limits.token_per_client is not None and _registered(request, client_id):
        draws.append((_budget("client", limits.token_per_client), f"oauth-client|{client_id}"))
    verdict = await limiter.hit(draws)
    if not verdict.allowed:
        log.info("oauth_endpoint_rate_limited", retry_after=verdict.retry_after)
        return _slow_down(verdict)
    response = await handler(request)
    if response.status == 401 and failure_draw:
        await limiter.hit(failure_draw)
    return response


# --- anonymous refusals in the audit trail ----------------------------------------------------


@web.middleware
async def refusal_audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hold the request's anonymous refusal records; write or count them when it is done."""
    held: list[AuditEvent] = []
    try:
        with collecting() as held:
            return await handler(request)
    finally:
        if held:
            await settle_refusals(request, held)


async def settle_refusals(request: web.Request, events: list[AuditEvent]) -> None:
    state = request.app[STATE]
    writer, limiter = state.audit, state.rate_limiter
    if writer is None:
        return
    limits = _limits(request)
    source = source_of(request, limits)
    draws: list[tuple[Budget, str]] = []
    if limits.refusal_records_per_source is not None:
        rate = limits.refusal_records_per_source
        draws.append((_budget("refusal_records", rate), f"refusals|{source}"))
    if limits.refusal_records_total is not None:
        rate = limits.refusal_records_total
        draws.append((_budget("refusal_records", rate), "refusals|*"))
    one_by_one = True
    if draws and limiter is not None:
        try:
            verdict = await limiter.hit(draws)
        except BaseException:
            request.app[REFUSALS].count(events, source)  # cancelled: counted, not lost
            raise
        one_by_one = verdict.allowed and verdict.checked
    elif draws:
        one_by_one = False
    if not one_by_one:
        request.app[REFUSALS].count(events, source)
        return
    for event in events:
        try:
            writer.append_nowait(event)
        except AuditUnavailable:
            log.warning("refusal_unaudited", type=event.type.value)


async def _summaries(app: web.Application) -> AsyncIterator[None]:
    summary = app[REFUSALS]
    interval = app[SETTINGS].gateway.rate_limits.endpoints.refusal_summary_interval

    def write() -> None:
        writer = app[STATE].audit
        if writer is None or not summary.pending:
            return
        for event in summary.drain(interval):
            try:
                writer.append_nowait(event)
            except AuditUnavailable:
                log.warning("refusal_summary_unaudited", type=event.type.value)

    async def every_interval() -> None:
        while True:
            await asyncio.sleep(interval)
            write()

    task = asyncio.create_task(every_interval(), name="refusal-summaries")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        write()  # before the audit writer closes (it was opened first, so closes last)


def add_guards(app: web.Application) -> None:
    """The refusal summaries' timer; the two middlewares run in gateway/http/chain.py."""
    app[REFUSALS] = RefusalSummary()
    app.cleanup_ctx.append(_summaries)
