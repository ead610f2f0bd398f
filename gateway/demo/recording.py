"""Records what each demo back-end received (context, never payloads) and injects trouble.

Tests and the demo read a back-end's ``Recorder`` to show that every call carried the case id,
the purpose and the authorisation reference, and that a retried submission reached the back-end
with the same idempotency key. ``Trouble`` lets them make a back-end slow or unavailable for the
next few requests, to show bounded retries and dead letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

# REST context headers the gateway sends → the names recorded here.
CONTEXT_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "X-Request-ID": "request_id",
        "X-Tongban-Purpose": "purpose",
        "X-Tongban-Service": "service",
        "X-Tongban-Case-Id": "case_id",
        "X-Tongban-Authorisation": "authorisation_ref",
        "X-Tongban-Principal": "principal",
        "X-Tongban-Actor": "actor",
        "X-Tongban-Level": "level",
        "X-Tongban-Assertion": "identity_assertion",
        "X-Tongban-Subjects": "subjects",
        "X-Tongban-Source-Province": "source_province",
        "X-Tongban-Client": "client",
        "Idempotency-Key": "idempotency_key",
    }
)

# Children of the SOAP header {urn:tongban:context:v1}CallContext → the names recorded here.
SOAP_CONTEXT_ELEMENTS: Mapping[str, str] = MappingProxyType(
    {
        "RequestId": "request_id",
        "Purpose": "purpose",
        "Service": "service",
        "CaseId": "case_id",
        "AuthorisationRef": "authorisation_ref",
        "IdempotencyKey": "idempotency_key",
        "Principal": "principal",
        "Actor": "actor",
        "Level": "level",
        "Assertion": "identity_assertion",
        "Subjects": "subjects",
        "SourceProvince": "source_province",
        "Client": "client",
    }
)

# SOAP handlers put the operation name and the parsed context under these request keys; REST
# operations are named by their route name.
OPERATION = web.RequestKey("operation", str)
CONTEXT = web.RequestKey[Mapping[str, str]]("context")


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the back-end saw it: no body, no personal data beyond the pairwise ids."""

    method: str
    path: str
    operation: str
    status: int
    context: Mapping[str, str]

    @property
    def idempotency_key(self) -> str | None:
        return self.context.get("idempotency_key")


@dataclass
class Trouble:
    """Misbehaviour to inject: the next ``fail_next`` requests get 503, each waits ``delay`` s."""

    fail_next: int = 0
    delay: float = 0.0
    retry_after: int | None = 1


RECORDED_REQUESTS = 1000
"""Requests a back-end keeps (the latest): a demo that runs for days must not grow with them."""


@dataclass
class Recorder:
    """The requests one back-end received, oldest first (the latest RECORDED_REQUESTS), and the
    trouble it is told to make."""

    requests: list[ReceivedRequest] = field(default_factory=list)
    trouble: Trouble = field(default_factory=Trouble)
    limit: int = RECORDED_REQUESTS

    @property
    def count(self) -> int:
        return len(self.requests)

    def for_operation(self, operation: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.operation == operation]

    def idempotency_keys(self, operation: str | None = None) -> list[str]:
        """Keys received, in order, repeats included (a retry shows up twice)."""
        return [
            key
            for r in self.requests
            if (operation is None or r.operation == operation)
            and (key := r.idempotency_key) is not None
        ]

    def clear(self) -> None:
        self.requests.clear()


def header_context(request: web.Request) -> dict[str, str]:
    """The gateway's context headers on a REST request, by recorded name. Values that are not
    ASCII (a Chinese purpose, say) arrive percent-encoded and are recorded decoded."""
    return {
        name: unquote(request.headers[h]) if "%" in request.headers[h] else request.headers[h]
        for h, name in CONTEXT_HEADERS.items()
        if h in request.headers
    }


def _record(recorder: Recorder, request: web.Request, status: int) -> None:
    context = request.get(CONTEXT)
    if len(recorder.requests) >= recorder.limit:
        del recorder.requests[: recorder.limit // 10]  # in chunks: amortised O(1) per request
    recorder.requests.append(
        ReceivedRequest(
            method=request.method,
            path=request.path,
            operation=str(request.get(OPERATION) or request.match_info.route.name or ""),
            status=status,
            context=dict(context) if context is not None else header_context(request),
        )
    )


def recording_middleware(recorder: Recorder) -> Middleware:
    """Record every request after it is answered; apply injected trouble before handling it."""

    @web.middleware
    async def record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        trouble = recorder.trouble
        if trouble.delay > 0:
            await asyncio.sleep(trouble.delay)
        if trouble.fail_next > 0:
            trouble.fail_next -= 1
            headers = {"Retry-After": str(trouble.retry_after)} if trouble.retry_after else {}
            response = web.Response(status=503, text="service unavailable", headers=headers)
            _record(recorder, request, response.status)
            return response
        try:
            answer = await handler(request)
        except web.HTTPException as exc:
            _record(recorder, request, exc.status)
            raise
        except Exception:
            _record(recorder, request, 500)
            raise
        _record(recorder, request, answer.status)
        return answer

    return record_middleware
