"""Middlewares, outermost first: request context + access log, errors → problem+json, auth.

Order matters: the context middleware must see the final status of every response, problem
rendering included, so it sits outside the error middleware; auth runs inside so its refusals
are rendered like any other error.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
)
from gateway.http.keys import LOG_FIELDS, METRICS, PRINCIPAL, REQUEST_ID, STATE, VERIFIER
from gateway.http.problem import problem_response
from gateway.logs import access_line, bind_request_id, info_enabled
from gateway.principal import Principal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("tongban.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _RandomIds:
    """128 random bits as 32 hex digits (like ``uuid4().hex``), from the operating system's
    generator as ``os.urandom`` gives them, but drawn 256 ids at a time: one system call per
    256 requests instead of one each. A forked child starts a pool of its own."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool: list[str] = []
        os.register_at_fork(after_in_child=self._pool.clear)

    def __call__(self) -> str:
        pool = self._pool
        if not pool:
            text = os.urandom(16 * self._BATCH).hex()
            pool.extend(text[i : i + 32] for i in range(0, len(text), 32))
        return pool.pop()


new_request_id = _RandomIds()
"""A fresh request id."""


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    info = route.resource
    if info is None:
        return "unmatched"
    name = info.canonical
    if len(_route_names) >= 4096:
        _route_names.clear()
    _route_names[route] = name  # a route's resource and its pattern are fixed once it is added
    return name


_route_names: dict[Any, str] = {}
"""The metrics' and access line's route name of each route met (``_route_name``)."""


def open_request(request: web.Request) -> float:
    """A request begins: its id (the client's if well-formed) bound to every log line; the
    moment it began, for ``close_request``."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()
    state = request._state  # request[...] without its frame
    state[REQUEST_ID] = request_id
    state[LOG_FIELDS] = {}
    bind_request_id(request_id)
    return time.perf_counter()


def close_request(request: web.Request, response: web.StreamResponse, started: float) -> None:
    """A request ends with an answer: its id on the answer, metrics, one access line."""
    state = request._state  # request[...] without its frame
    response.headers["X-Request-ID"] = state[REQUEST_ID]
    duration = time.perf_counter() - started
    info = request._match_info  # request.match_info, request.app: the properties' fields
    assert info is not None  # as the properties assert: the request was dispatched
    route = _route_names.get(info._route)
    if route is None:
        route = _route_name(request)
    app = info._current_app
    assert app is not None
    app[METRICS].http_request(route, request._method, response.status, duration)
    if route not in {"/healthz", "/metrics"} and info_enabled():
        access_line(
            log,
            request._method,
            route,
            response.status,
            round(duration * 1000, 2),
            state[LOG_FIELDS],
        )


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of this request and write one access line at the end."""
    started = open_request(request)
    response = await handler(request)
    close_request(request, response, started)
    return response


class _FrameworkRefusal(GatewayError):
    """A 4xx the web framework raised itself (bad header, ...): keep its status."""

    code = "client.invalid_request"
    title = "Invalid request"

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self._status = status

    @property
    def status(self) -> int:
        return self._status


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as problem+json; never a stack trace or a back-end's internals."""
    request_id = request.get(REQUEST_ID, "")
    try:
        return await handler(request)
    except Exception as exc:
        return render_error(request, exc, request_id)


def render_error(request: web.Request, exc: Exception, request_id: str) -> web.Response:
    """The problem+json answer for an error raised while a request was handled; call it from
    the ``except`` block (an unexpected error's traceback is logged). A framework exception
    that is no error (a redirect) is raised again."""
    if isinstance(exc, GatewayError):
        request[LOG_FIELDS]["error_code"] = exc.code
        return problem_response(exc, request_id, request.path)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return problem_response(PayloadTooLarge(), request_id, request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        response = problem_response(MethodNotAllowed(), request_id, request.path)
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    if isinstance(exc, web.HTTPNotFound):
        return problem_response(NotFound("No such resource."), request_id, request.path)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return problem_response(_FrameworkRefusal(exc.status, exc.reason), request_id, request.path)
    error_id = uuid.uuid4().hex
    log.exception("request_failed", error_id=error_id)
    return problem_response(
        InternalError(f"Internal error {error_id}; quote it to the operators."),
        request_id,
        request.path,
    )


def bearer_path(path: str) -> bool:
    """Whether a request to ``path`` must carry a bearer token: /api/*, except the provincial
    systems' callbacks, which carry an HMAC signature instead (gateway/http/cases.py)."""
    return path.startswith("/api/") and not path.startswith("/api/v1/callbacks/")


async def authenticate(request: web.Request) -> None:
    """The request's bearer token verified and its Principal kept, or Unauthenticated."""
    authenticated(request, await request.app[VERIFIER].verify(bearer_token(request)))


def bearer_token(request: web.Request) -> str:
    """The request's bearer token, or Unauthenticated (``authenticate``'s first half: the
    request middleware awaits the verifier itself, one coroutine less per call)."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):  # as sent: the scheme told without lowering it
        token = header[7:].strip()
        if token:
            return token
    else:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer":
            token = token.strip()
            if token:
                return token
    raise Unauthenticated("A bearer token is required.")


def authenticated(request: web.Request, principal: Principal) -> None:
    """The verified token's Principal kept with the request (``authenticate``'s second half)."""
    state = request._state  # request[...] without its frame
    state[PRINCIPAL] = principal
    state[LOG_FIELDS]["client"] = principal.client_id


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens on /api/*: the handler receives a Principal or the request is refused."""
    if bearer_path(request.path):
        await authenticate(request)
    return await handler(request)


IDENTITY_PATHS: tuple[str, ...] = ("/oauth2/", "/login", "/cas/", "/legacy/ticket/")
"""Where the identity core answers: logins, tokens, logouts, tickets."""
SETTLE_WAIT = 2.0
"""Longest wait (seconds) for the identity records of an answer to be committed."""


@web.middleware
async def identity_audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Identity answers leave after their audit records are durable, while the store is healthy.

    The identity core queues its records without awaiting (its authlib hooks are synchronous;
    gateway/audit/sink.py). Here, before a login, token, logout or ticket answer is sent, the
    request waits for the writer's group commit that holds them (``AuditWriter.settle``), so a
    process killed right after the answer does not lose the record of what it handed out.
    When the store is down or slow (more than SETTLE_WAIT) the answer goes anyway and the
    records wait in the buffer, in order, as the buffered contract says.
    """
    response = await handler(request)
    if request.path.startswith(IDENTITY_PATHS):
        writer = request.app[STATE].audit
        if writer is not None:
            settled = False
            try:
                async with asyncio.timeout(SETTLE_WAIT):
                    settled = await writer.settle()
            except TimeoutError:
                pass
            if not settled:
                log.warning("identity_audit_buffered", path=_route_name(request))
    return response
