"""Calling the gateway's API on behalf of a signed-in person or clerk, refreshing the token.

An access token lives minutes; the session lives as long as its refresh token does. Before a
call, a token about to expire is refreshed (RFC 6749 §6; the gateway rotates the refresh token
each time); a call answered 401 anyway (the gateway's clock, a revocation) is refreshed once
and sent again. When the gateway refuses the refresh, the session is over: ``SessionEnded``,
which the app's middleware turns into a 请重新登录 page, the local session removed.

Must not: retry anything but a 401 (a refused call is an answer), or keep a session whose
refresh was refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from gateway.demo.portals.state import PortalState, Tokens, http_of

REFRESH_MARGIN = 30.0
"""Seconds before expiry at which a token is refreshed (at most a fifth of its lifetime)."""


class SessionEnded(Exception):
    """The gateway no longer honours the session's tokens: the person signs in again."""

    def __init__(self, who: Literal["person", "clerk"]) -> None:
        super().__init__(who)
        self.who = who


async def token_request(
    state: PortalState, auth: Mapping[str, str], form: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST the gateway's token endpoint as the client whose ``auth`` header is given."""
    async with http_of(state).post(
        f"{state.gateway}/oauth2/token", data=dict(form), headers=dict(auth)
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body if isinstance(body, dict) else {}


async def refresh(state: PortalState, tokens: Tokens, auth: Mapping[str, str]) -> bool:
    """Refresh ``tokens`` in place; False when the gateway refuses (the session is over)."""
    if tokens.refresh_token is None:
        return False
    status, answer = await token_request(
        state, auth, {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
    )
    if status != 200 or "access_token" not in answer:
        tokens.refresh_token = None
        return False
    fresh = Tokens.from_answer(answer, state.clock(), id_token=tokens.id_token)
    tokens.access_token, tokens.expires_at = fresh.access_token, fresh.expires_at
    tokens.lifetime = fresh.lifetime
    tokens.refresh_token = fresh.refresh_token or tokens.refresh_token
    return True


async def access_token(
    state: PortalState, tokens: Tokens, auth: Mapping[str, str], who: Literal["person", "clerk"]
) -> str:
    """A token the gateway should still accept, refreshed first when it is about to expire."""
    margin = min(REFRESH_MARGIN, tokens.lifetime / 5)
    if state.clock() >= tokens.expires_at - margin and not await refresh(state, tokens, auth):
        raise SessionEnded(who)
    return tokens.access_token


async def call_api(
    state: PortalState,
    tokens: Tokens,
    auth: Mapping[str, str],
    who: Literal["person", "clerk"],
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
) -> tuple[int, Any]:
    """``method path`` at the gateway with the session's token; (status, JSON body)."""

    async def send(token: str) -> tuple[int, Any]:
        sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
        async with http_of(state).request(
            method, state.gateway + path, headers=sent, json=json
        ) as response:
            return response.status, await response.json(content_type=None)

    status, body = await send(await access_token(state, tokens, auth, who))
    if status == 401:
        if not await refresh(state, tokens, auth):
            raise SessionEnded(who)
        status, body = await send(tokens.access_token)
        if status == 401:
            raise SessionEnded(who)
    return status, body
