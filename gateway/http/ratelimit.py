"""Rate limits on /api/*: the middleware after authentication, the RateLimit header fields.

A call the limiter refuses stops here with 429 ``client.rate_limited`` (problem+json,
``Retry-After``): the handler never runs, so no back-end is called, no case is taken and no
call record is written. Only authenticated /api/* calls are counted; /healthz, /readyz,
/metrics, /openapi.json, the OpenID endpoints, logins, the ticket faces, provincial callbacks
(HMAC-signed, no principal) and /admin are not (admin may get a budget of its own later).

Header fields (draft-ietf-httpapi-ratelimit-headers-11, ``rate_limit_fields``): every counted
answer, allowed or refused, carries ``RateLimit-Policy`` with the budgets it drew on
(``"person";q=300;w=60, "client";q=6000;w=60``: known from configuration, free to send). A
refusal also carries ``RateLimit`` for the refusing budget (``"person";r=0;t=42``, ``t`` equal
to ``Retry-After``). Allowed answers do not: the remaining count costs one more Redis round
trip per budget (~160 µs of CPU, measured), and §6.2 lets a server send it only near
exhaustion. No partition key is sent: the person's would be an identifier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.errors import RateLimited
from gateway.http.keys import METRICS, PRINCIPAL, SETTINGS, STATE
from gateway.http.middlewares import Handler
from gateway.principal import Principal
from gateway.ratelimit.limiter import ApiRateLimiter, Verdict

VERDICT = web.RequestKey("rate_limit_verdict", Verdict)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count an authenticated /api/* call against its budgets; refuse it with 429 when spent.
    The header fields go on the answer where it is made (``rate_limit_fields``): the request
    middleware (gateway/http/chain.py) puts them on every answer of a counted call."""
    await count_call(request)
    response = await handler(request)
    rate_limit_fields(request, response)
    return response


async def count_call(request: web.Request) -> None:
    """Count the call against its budgets, or RateLimited when one is spent."""
    principal = request.get(PRINCIPAL)
    limiter = request.app[STATE].rate_limiter
    # The principal is set by the token check, just before, for /api/* only (admin routes set
    # it later, in their handlers): checking the path too keeps this from ever counting them.
    if principal is None or limiter is None or not request.path.startswith("/api/"):
        return
    judge(request, principal, await limiter.check(principal))


def judge(request: web.Request, principal: Principal, verdict: Verdict) -> None:
    """``count_call``'s end: the verdict kept for the header fields, counted in the metrics,
    RateLimited when a budget is spent. (The request middleware awaits the limiter itself, one
    coroutine less per call.)"""
    request._state[VERDICT] = verdict  # request[...] without its frame
    if not verdict.checked:
        request.app[METRICS].rate_limit_unchecked.inc()
    refused = verdict.refused_by
    if refused is not None:
        request.app[METRICS].refused_by_rate_limit(principal.client_id, refused.scope)
        raise RateLimited(refused.scope, verdict.retry_after)


def rate_limit_fields(request: web.Request, response: web.StreamResponse) -> None:
    """Add the RateLimit header fields to an answer of a counted call, errors included (nothing
    for a call that was not counted). Called where the answer leaves the request middleware
    rather than from ``on_response_prepare``: the signal costs every answer a coroutine of
    aiohttp's and one of ours."""
    verdict = request._state.get(VERDICT)  # request.get: Mapping.get and request[...]
    if verdict is None:
        return
    budgets = verdict.budgets
    if not budgets:
        return
    response.headers["RateLimit-Policy"] = ", ".join([b.policy for b in budgets])
    if verdict.refused_by is not None:
        response.headers["RateLimit"] = f'"{verdict.refused_by.scope}";r=0;t={verdict.retry_after}'


async def _rate_limiter_context(app: web.Application) -> AsyncIterator[None]:
    settings, state = app[SETTINGS], app[STATE]
    limiter = ApiRateLimiter.from_settings(
        settings.gateway.rate_limits,
        settings.clients.values(),
        redis_url=settings.gateway.rate_limit_redis_url,
        data_dir=settings.data_dir(),
    )
    state.rate_limiter = limiter

    async def readiness() -> dict[str, Any]:
        # Informative only: calls go through unchecked while the store is down (fail open),
        # so a failing store never makes the instance unready.
        return {
            "ready": True,
            "store": limiter.store_kind,
            "state": "ok" if limiter.healthy else "unchecked",
        }

    state.readiness["rate_limits"] = readiness
    try:
        yield
    finally:
        state.rate_limiter = None
        await limiter.aclose()


def add_rate_limits(app: web.Application) -> None:
    """Open the limiter with the app; the count runs right after the token check and the
    header fields go on the answer as it leaves (gateway/http/chain.py)."""
    app.cleanup_ctx.append(_rate_limiter_context)
