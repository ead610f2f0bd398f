"""Everything a request crosses between admission and its handler, in one middleware.

The layers, outermost first, each what its own middleware does (they stay, for apps and tests
that want one layer alone):

    request context + access line   gateway/http/middlewares.py   request_context_middleware
    anonymous refusal records       gateway/http/guards.py        refusal_audit_middleware
    errors → problem+json           gateway/http/middlewares.py   problem_middleware
    request body, client aborts     gateway/http/client_io.py     client_io_middleware
    token and login budgets         gateway/http/guards.py        endpoint_limit_middleware
    bearer token                    gateway/http/middlewares.py   auth_middleware
    /api rate limits                gateway/http/ratelimit.py     rate_limit_middleware
    /admin audit records            gateway/http/audit.py         admin_audit_middleware
    identity answers settled        gateway/http/middlewares.py   identity_audit_middleware

Why one function: each aiohttp middleware is a coroutine frame a request enters, and every
time the request's task wakes (the audit commit, the back-end's answer, ...) it is resumed
through every frame on its stack. A routed call crossed ten of them. Here the four outer
layers run inline in one frame, and a bearer call (/api/*, the hot path) runs its token check
and rate limit inline too: the token, login, admin and identity layers have nothing to do on
/api/* paths. Every other path goes through those five layers' own middlewares, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable

from aiohttp import web

from gateway.audit.record import AuditEvent
from gateway.audit.refusals import collecting
from gateway.http.admission import Admission
from gateway.http.audit import admin_audit_middleware
from gateway.http.client_io import (
    aborted_or_raise,
    client_aborted,
    read_body,
    read_whole_body,
)
from gateway.http.guards import endpoint_limit_middleware, settle_refusals
from gateway.http.keys import REQUEST_ID, STATE, VERIFIER
from gateway.http.middlewares import (
    Handler,
    auth_middleware,
    authenticated,
    bearer_path,
    bearer_token,
    close_request,
    identity_audit_middleware,
    open_request,
    render_error,
)
from gateway.http.ratelimit import judge, rate_limit_fields, rate_limit_middleware


@web.middleware
async def request_middleware(
    request: web.Request, handler: Handler, admission: Admission | None = None
) -> web.StreamResponse:
    """The layers of the module docstring, in their order; listed last in ``create_app`` (so
    ``handler`` is the route's own). Given ``admission`` (the direct dispatch of the call
    path, a bounded path: gateway/app.py), ``admission_middleware``'s work is done here
    first, in this frame: its refusals leave as they leave that middleware, before the
    request's id, log context or metrics, and the request is in flight until this returns."""
    reserved = 0
    if admission is not None:
        if admission.is_late(request._protocol):
            # Accepted beyond the connection bound: one answer, then the connection closes.
            late = admission.refusal("connections", counted=True)
            late.force_close()
            return late
        taken = admission.take(request)
        if not isinstance(taken, int):
            return taken
        reserved = taken
    try:
        started = open_request(request)
        state = request._state  # the request's own dict: request[...] without its frame
        response: web.StreamResponse
        held: list[AuditEvent] = []
        try:
            with collecting() as held:
                request_id = state[REQUEST_ID]  # open_request has set it
                try:
                    early: web.StreamResponse | None = None
                    if request.body_exists:
                        if request.content.is_eof():
                            # read_body's first case in this coroutine: the whole body is in
                            try:
                                read_whole_body(request)
                            except ConnectionResetError:
                                early = client_aborted(request)
                        else:
                            early = await read_body(request)
                    if early is not None:
                        response = early
                    else:
                        try:
                            if bearer_path(request.path):
                                # authenticate and count_call, their awaits in this coroutine
                                app = request.app
                                token = bearer_token(request)
                                principal = await app[VERIFIER].verify(token)
                                authenticated(request, principal)
                                limiter = app[STATE].rate_limiter
                                if limiter is not None:
                                    judge(request, principal, await limiter.check(principal))
                                response = await handler(request)
                            else:
                                response = await _other_paths(request, handler)
                        except ConnectionResetError as exc:
                            response = aborted_or_raise(request, exc)
                except Exception as exc:
                    try:
                        response = render_error(request, exc, request_id)
                    except web.HTTPException as passed:  # a redirect: aiohttp answers with it
                        rate_limit_fields(request, passed)
                        raise
        finally:
            if held:
                await settle_refusals(request, held)
        close_request(request, response, started)
        rate_limit_fields(request, response)
        return response
    finally:
        if admission is not None:
            admission.release(reserved)


def _other_paths(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    inner: Handler = handler
    for layer in _INNER_LAYERS:
        inner = functools.partial(layer, handler=inner)
    return inner(request)


_INNER_LAYERS = (
    # Innermost first.
    identity_audit_middleware,
    admin_audit_middleware,
    rate_limit_middleware,
    auth_middleware,
    endpoint_limit_middleware,
)
