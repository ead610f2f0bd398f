"""Signing a person in and out at the portal, through the gateway.

The portal is a confidential OpenID Connect client of the gateway (config/clients.yaml): code
flow with ``state``, ``nonce`` and PKCE S256 (OIDC Core §3.1.2, RFC 7636), client_secret_basic
at the token endpoint, the ID token checked against the gateway's JWKS (§3.1.3.7). Persons and
enterprises have separate entries: a person goes to the portal's own province's platform, an
enterprise's operator to the legal-person platform (``idp_hint``); ``?acr=L2|L3`` asks for a
step-up. Sign-out is RP-initiated (RP-Initiated Logout 1.0); ``/backchannel-logout`` validates
logout tokens (Back-Channel Logout 1.0 §2.6) and ends the local sessions of that ``sid``.

Must not: keep a password, or a session whose ID token failed a check.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import PortalPage
from gateway.demo.portals.state import (
    KEPT_LOGOUTS,
    PENDING_LIFETIME,
    SESSION_LIFETIME,
    STATE,
    PortalSession,
    PortalState,
    Tokens,
    forget_older,
    http_of,
)
from gateway.demo.portals.tokens import token_request
from gateway.demo.portals.words import e

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def session_of(request: web.Request) -> tuple[str, PortalSession] | None:
    state = request.app[STATE]
    key = request.cookies.get(state.cookie, "")
    session = state.sessions.get(key)
    return (key, session) if session is not None else None


def signed_in(request: web.Request) -> tuple[str, PortalSession]:
    """The page's person (session key, session); nobody signed in goes to the front page."""
    found = session_of(request)
    if found is None:
        raise web.HTTPSeeOther("/")
    return found


def refused(
    request: web.Request, message: str, detail: str = "", status: int = 400
) -> web.Response:
    """A sign-in that could not finish: what happened, and the way back."""
    return render(
        request,
        "登录未完成",
        f"<p class='warning' id='sign-in-failed'>{e(message)}</p>"
        + (f"<p class='en'>{e(detail)}</p>" if detail else "")
        + "<p><a class='button' href='/login'>重新登录</a> <a href='/'>返回首页</a></p>",
        status=status,
        heading_en="Sign-in failed",
    )


def authorization_redirect(
    state: PortalState,
    pending: dict[str, dict[str, str]],
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    login_cookie: str,
    extra: Mapping[str, str] | None = None,
) -> web.HTTPFound:
    """Send the browser to the gateway's authorization endpoint (code flow, PKCE S256, state
    bound to a cookie, nonce); what the callback needs is kept in ``pending`` by state."""
    verifier, challenge = pkce()
    oauth_state = secrets.token_urlsafe(24)
    nonce = secrets.token_urlsafe(24)
    now = state.clock()
    forget_older(pending, now - PENDING_LIFETIME, lambda waiting: float(waiting.get("at", "inf")))
    pending[oauth_state] = {"verifier": verifier, "nonce": nonce, "at": repr(now)}
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": oauth_state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **(extra or {}),
    }
    response = web.HTTPFound(f"{state.gateway}/oauth2/authorize?{urlencode(params)}")
    response.set_cookie(login_cookie, oauth_state, httponly=True, samesite="Lax")
    return response


class SignInFailed(Exception):
    """The callback could not complete the sign-in: what to tell the person."""

    def __init__(self, message: str, detail: str, status: int) -> None:
        super().__init__(message)
        self.message, self.detail, self.status = message, detail, status


class GatewayBusy(SignInFailed):
    """The gateway answered 503 (it sheds load when overloaded): the portal says so with a
    503 of its own rather than a 502, which would blame a broken gateway (or a bad ID token,
    when it was the key set's fetch that was shed)."""

    def __init__(self) -> None:
        super().__init__("统一身份认证暂时繁忙，请稍后重试。", "gateway busy (503)", 503)


@dataclass(frozen=True, slots=True)
class SignedIn:
    tokens: Tokens
    claims: dict[str, Any]
    profile: dict[str, Any]


async def complete_sign_in(
    request: web.Request,
    pending: dict[str, dict[str, str]],
    *,
    client_id: str,
    auth: Mapping[str, str],
    redirect_uri: str,
    login_cookie: str,
) -> SignedIn:
    """At the redirect URI: the state against the browser's cookie, the code for tokens, the ID
    token checked (§3.1.3.7), the profile from userinfo; ``SignInFailed`` otherwise."""
    state = request.app[STATE]
    oauth_state = request.query.get("state", "")
    if request.cookies.get(login_cookie) != oauth_state:
        raise SignInFailed("登录请求已失效，请重新登录。", "state mismatch", 400)
    waiting = pending.pop(oauth_state, None)
    if waiting is None or "error" in request.query:
        raise SignInFailed("登录未完成，请重新登录。", request.query.get("error", "state"), 400)
    status, answer = await token_request(
        state,
        auth,
        {
            "grant_type": "authorization_code",
            "code": request.query.get("code", ""),
            "redirect_uri": redirect_uri,
            "code_verifier": waiting["verifier"],
        },
    )
    if status == 503:  # the gateway shed the request (overloaded): busy, not broken
        raise GatewayBusy()
    if status != 200:
        raise SignInFailed("统一身份认证未能签发令牌。", str(answer.get("error")), 502)
    claims = await id_token_claims(state, answer.get("id_token"), client_id, waiting)
    if claims is None:
        raise SignInFailed("身份令牌校验失败。", "ID token invalid", 502)
    tokens = Tokens.from_answer(answer, state.clock())
    return SignedIn(tokens, claims, await userinfo(state, tokens.access_token))


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    extra = {}
    acr = request.query.get("acr")
    if acr in ("L2", "L3"):
        extra["acr_values"] = acr
    hint = state.enterprise_hint if request.query.get("as") == "enterprise" else state.province_hint
    if hint:
        extra["idp_hint"] = hint
    raise authorization_redirect(
        state,
        state.pending,
        client_id=state.client_id,
        redirect_uri=f"{state.base_url}/callback",
        scope=state.scope,
        login_cookie=state.login_cookie,
        extra=extra,
    )


async def _jwks(state: PortalState) -> KeySet:
    async with http_of(state).get(f"{state.gateway}/oauth2/jwks") as response:
        if response.status == 503:
            raise GatewayBusy()
        return KeySet.import_key_set(await response.json())


async def id_token_claims(
    state: PortalState, id_token: object, audience: str, pending: Mapping[str, str]
) -> dict[str, Any] | None:
    """OIDC Core §3.1.3.7 checks of the gateway's ID token for ``audience``; None if it fails."""
    if not isinstance(id_token, str):
        return None
    try:
        decoded = jwt.decode(id_token, await _jwks(state), algorithms=["ES256", "RS256"])
        jwt.JWTClaimsRegistry(
            now=int(state.clock()),
            leeway=30,
            iss={"essential": True, "value": state.gateway},
            aud={"essential": True, "value": audience},
            nonce={"essential": True, "value": pending["nonce"]},
        ).validate(decoded.claims)
    except (JoseError, ValueError, KeyError):
        return None
    return dict(decoded.claims)


async def userinfo(state: PortalState, access_token: str) -> dict[str, Any]:
    async with http_of(state).get(
        f"{state.gateway}/oauth2/userinfo", headers={"Authorization": f"Bearer {access_token}"}
    ) as response:
        answer = await response.json(content_type=None) if response.status == 200 else {}
        return answer if isinstance(answer, dict) else {}


async def callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        done = await complete_sign_in(
            request,
            state.pending,
            client_id=state.client_id,
            auth=state.auth,
            redirect_uri=f"{state.base_url}/callback",
            login_cookie=state.login_cookie,
        )
    except SignInFailed as failed:
        return refused(request, failed.message, failed.detail, failed.status)
    # A step-up replaces the browser's local session rather than adding a second one.
    state.sessions.pop(request.cookies.get(state.cookie, ""), None)
    now = state.clock()
    forget_older(state.sessions, now - SESSION_LIFETIME, lambda session: session.signed_in_at)
    key = secrets.token_urlsafe(24)
    state.sessions[key] = PortalSession(
        sid=done.claims.get("sid"),
        subject=str(done.claims["sub"]),
        acr=str(done.claims.get("acr", "")),
        tokens=done.tokens,
        name=done.profile.get("name"),
        signed_in_at=now,
    )
    home = web.HTTPFound("/")
    home.set_cookie(state.cookie, key, httponly=True, samesite="Lax")
    home.del_cookie(state.login_cookie)
    raise home


async def logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found = session_of(request)
    target = f"{state.base_url}/"
    if found is None:
        raise web.HTTPFound(target)
    key, session = found
    del state.sessions[key]
    params = urlencode({"id_token_hint": session.id_token, "post_logout_redirect_uri": target})
    response = web.HTTPFound(f"{state.gateway}/oauth2/logout?{params}")
    response.del_cookie(state.cookie)
    raise response


async def backchannel_logout(request: web.Request) -> web.Response:
    """Back-Channel Logout 1.0 §2.6 validation, then end every local session of the sid."""
    state = request.app[STATE]
    form = await request.post()
    token = str(form.get("logout_token", ""))
    try:
        decoded = jwt.decode(token, await _jwks(state), algorithms=["ES256", "RS256"])
        jwt.JWTClaimsRegistry(
            now=int(state.clock()),
            leeway=30,
            iss={"essential": True, "value": state.gateway},
            aud={"essential": True, "value": state.client_id},
            iat={"essential": True},
            jti={"essential": True},
        ).validate(decoded.claims)
    except GatewayBusy:  # the key set could not be read now: the gateway delivers again later
        return web.json_response({"error": "temporarily_unavailable"}, status=503)
    except (JoseError, ValueError):
        return web.json_response({"error": "invalid_request"}, status=400)
    claims = dict(decoded.claims)
    events = claims.get("events")
    if (
        decoded.header.get("typ") != "logout+jwt"
        or not isinstance(events, dict)
        or LOGOUT_EVENT not in events
        or "nonce" in claims
        or not (claims.get("sid") or claims.get("sub"))
    ):
        return web.json_response({"error": "invalid_request"}, status=400)
    ended = [
        key
        for key, s in state.sessions.items()
        if (claims.get("sid") and s.sid == claims["sid"])
        or (not claims.get("sid") and s.subject == claims.get("sub"))
    ]
    for key in ended:
        del state.sessions[key]
    state.backchannel_logouts.append(claims)
    del state.backchannel_logouts[:-KEPT_LOGOUTS]
    return web.Response(status=200, headers={"Cache-Control": "no-store"})


PAGES = (
    PortalPage("GET", "/login", login),
    PortalPage("GET", "/callback", callback),
    PortalPage("GET", "/logout", logout),
    PortalPage("POST", "/backchannel-logout", backchannel_logout),
)
