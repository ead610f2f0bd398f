"""CSRF tokens of the portal's forms.

A signed-in page's forms carry a token bound to the session cookie, which a forging page cannot
read: an HMAC under the portal's secret, so nothing more is kept per session. The console's
forms carry the clerk session's own random token.

Must not: accept a form whose token is missing or another session's.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.demo.portals.layout import render
from gateway.demo.portals.state import PortalState


def form_csrf(state: PortalState, session_key: str, purpose: str) -> str:
    """The CSRF token of the forms of ``purpose`` on the pages of session ``session_key``."""
    message = f"{purpose}:{session_key}".encode()
    return hmac.new(state.client_secret.encode(), message, "sha256").hexdigest()


def csrf_ok(expected: str, form: Mapping[str, Any]) -> bool:
    given = form.get("csrf")
    return isinstance(given, str) and bool(expected) and secrets.compare_digest(given, expected)


def form_expired(request: web.Request) -> web.Response:
    """A post whose CSRF token is wrong: nothing was done on the person's behalf."""
    return render(
        request,
        "表单已失效",
        "<p class='warning' id='csrf-refused'>表单已失效，请返回后重试。</p>"
        "<p><a href='/'>返回首页</a></p>",
        status=403,
        heading_en="This form has expired",
    )
