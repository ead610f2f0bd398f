"""A provincial platform POSTing its answer (a legal-person assertion) to the callback.

The browser arrives by a cross-site top-level POST, which carries no ``SameSite=Lax`` cookie,
so the login could not be bound to the browser. The post is parked under a random one-time id
and the browser is sent on by 303 to the GET callback, which does carry the cookies; there the
parked fields rejoin the callback's parameters (``take_posted``).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from aiohttp import web

from gateway.identity.sso import SessionAuthenticator

POSTED_PARAM = "tb_posted"
_MAX_POST = 32 * 1024
_FIELDS = ("assertion", "state")
_TTL = 120


async def park_post(request: web.Request, authenticator: SessionAuthenticator) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        raise web.HTTPUnsupportedMediaType()
    if (request.content_length or 0) > _MAX_POST:
        raise web.HTTPRequestEntityTooLarge(
            max_size=_MAX_POST, actual_size=request.content_length or 0
        )
    form = await request.post()
    fields = {k: str(form[k]) for k in _FIELDS if k in form and len(str(form[k])) <= _MAX_POST}
    posted = secrets.token_urlsafe(24)
    await authenticator.store.put_pending(f"posted:{posted}", fields, _TTL)
    query = urlencode({"state": fields.get("state", ""), POSTED_PARAM: posted})
    raise web.HTTPSeeOther(f"{request.path}?{query}", headers={"Cache-Control": "no-store"})


async def take_posted(
    params: dict[str, str], authenticator: SessionAuthenticator
) -> dict[str, str]:
    """The callback's parameters with a parked post's fields added (one-time)."""
    posted = params.pop(POSTED_PARAM, "")
    if not posted or len(posted) > 64:
        return params
    fields = await authenticator.store.take_pending(f"posted:{posted}")
    if fields is None:
        return params
    # The state of the GET must be the parked one: the post cannot be moved to another login.
    if fields.get("state") != params.get("state"):
        return params
    return {**params, **fields}
