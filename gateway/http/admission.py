"""Admission: the outermost middleware, a per-worker bound on what is in flight.

A worker takes in at most ``admission.max_in_flight`` requests and
``admission.max_body_bytes_in_flight`` body bytes at a time. A request beyond either bound is
answered at once with 503 problem+json ``gateway.overloaded`` and ``Retry-After``: no body is
read, no token checked, no identity store, audit record or back-end touched, no access line
written (under overload that would be work per refused request; a counter and one warning per
``_WARN_EVERY`` seconds say it instead). Without the bound, an overloaded worker queues calls
until they time out, and the queue becomes memory that stays after the burst.

A request reserves its Content-Length (at most ``server.max_body_bytes``, the most the body
reader accepts), or ``server.max_body_bytes`` when it streams a body of unknown length; the
reservation is released when the handler has returned (the body is read by then).
``/healthz``, ``/readyz`` and ``/metrics`` are neither bounded nor counted: an orchestrator
must still see an overloaded worker alive.

Requests only reach this middleware once the event loop has read them; under overload they wait
in front of it, one per open connection, and each open connection holds memory. So a worker
also bounds its connections (``admission.max_connections``, ``limit_connections``): a
connection beyond the bound is closed as soon as it is accepted, before anything is read from
it (the client sees the connection closed and may try again, as after a 503), which keeps both
the memory and the wait in front of the middleware bounded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from gateway.errors import Overloaded
from gateway.http.problem import problem_response
from gateway.settings import AdmissionSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("tongban.http")

UNBOUNDED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_WARN_EVERY = 10.0


class Admission:
    """The counters of one worker (one event loop: no lock needed)."""

    __slots__ = (
        "_last_warning",
        "_on_refused",
        "_refused_since_warning",
        "body_bytes",
        "in_flight",
        "max_body_bytes",
        "settings",
    )

    def __init__(
        self,
        settings: AdmissionSettings,
        max_body_bytes: int,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self.body_bytes = 0
        self._on_refused = on_refused
        self._refused_since_warning = 0
        self._last_warning = -_WARN_EVERY

    def reservation(self, request: web.Request) -> int:
        """Body bytes this request may hold while in flight."""
        length = request.content_length
        if length is None:
            return self.max_body_bytes if request.body_exists else 0
        return min(length, self.max_body_bytes)

    def refusal(self, reason: str) -> web.Response:
        if self._on_refused is not None:
            self._on_refused(reason)
        self._refused_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            log.warning(
                "gateway_overloaded",
                reason=reason,
                refused=self._refused_since_warning,
                in_flight=self.in_flight,
                body_bytes=self.body_bytes,
            )
            self._last_warning = now
            self._refused_since_warning = 0
        error = Overloaded(self.settings.retry_after)
        return problem_response(error, os.urandom(16).hex())


ADMISSION = web.AppKey("admission", Admission)


def limit_connections(server: web.Server, limit: int, on_refused: Callable[[], None]) -> None:
    """Close every connection accepted while ``server`` already holds ``limit`` of them."""
    register = server.connection_made

    def connection_made(handler: Any, transport: asyncio.Transport) -> None:
        if len(server.connections) >= limit:
            on_refused()
            transport.abort()  # the handler sees the connection lost before it reads anything
        register(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse at once what this worker cannot take in now; count what it takes in."""
    if request.path in UNBOUNDED_PATHS:
        return await handler(request)
    admission = request.app[ADMISSION]
    if admission.in_flight >= admission.settings.max_in_flight:
        return admission.refusal("requests")
    reserved = admission.reservation(request)
    if reserved and admission.body_bytes + reserved > admission.settings.max_body_bytes_in_flight:
        return admission.refusal("body_bytes")
    admission.in_flight += 1
    admission.body_bytes += reserved
    try:
        return await handler(request)
    finally:
        admission.in_flight -= 1
        admission.body_bytes -= reserved
