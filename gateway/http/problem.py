"""problem+json (RFC 9457) rendering: the one place errors become HTTP responses."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError
from gateway.http.answer import JsonAnswer

PROBLEM_TYPE_BASE = "https://tongban.example/problems/"
CONTENT_TYPE = "application/problem+json"


_STANDARD_MEMBERS = frozenset(
    {"type", "title", "status", "detail", "instance", "code", "request_id"}
)


def problem_response(
    error: GatewayError, request_id: str, instance: str | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": request_id,
    }
    if instance:
        body["instance"] = instance
    # Extension members never replace the standard ones (RFC 9457 §3.1: status is the code).
    body.update((k, v) for k, v in error.extra.items() if k not in _STANDARD_MEMBERS)
    headers = {"X-Request-ID": request_id}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None and error.status in (429, 503):
        headers["Retry-After"] = str(max(int(retry_after + 0.999), 1))
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tongban"'
    return JsonAnswer(orjson.dumps(body), error.status, CONTENT_TYPE, headers)
