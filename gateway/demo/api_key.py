"""What the demo's REST back-ends share: an API key checked on every request, and the JSON error
body they answer with (``{"error": code, "message": text}``), as many deployed systems do."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

API_KEY_HEADER = "X-API-Key"


def json_error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "message": message, **extra}, status=status)


def require_api_key(key_of: Callable[[web.Application], str]) -> Middleware:
    """A middleware refusing (401) every request without the key ``key_of`` gives for the app."""

    @web.middleware
    async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(API_KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, key_of(request.app).encode()):
            return json_error(401, "unauthorized", "missing or wrong API key")
        return await handler(request)

    return api_key_middleware
