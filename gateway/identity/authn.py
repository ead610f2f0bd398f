"""Who is signed in: the seam between the provider and the SSO session / upstream federation.

The authorization endpoint (OIDC Core §3.1.2) validates the request first and only then asks an
``Authenticator`` for the end-user. The answer is the authenticated user, a response that starts
an interactive login (the login page or a redirect to a provincial IdP), or None when nobody is
signed in. The SSO-session and federation step plugs in here; ``FakeAuthenticator`` serves tests.

Must not: issue codes or tokens (the provider does), import aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.identity.requests import IdentityRequest, IdentityResponse


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The internal identity behind a session; ``local_id`` never leaves the gateway."""

    local_id: str
    """Internal user id; only its pairwise form (OIDC Core §8.1) appears in tokens."""
    acr: str
    """Gateway identity level reached in this session: L1, L2, L3, LP or Counter."""
    auth_time: int
    """When the user last authenticated (seconds since the epoch; OIDC Core §2)."""
    amr: tuple[str, ...] = ()
    """Authentication methods (RFC 8176 values, e.g. 'pwd', 'face', 'sc')."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """Standard claims for userinfo (OIDC Core §5.1), released per granted scope."""
    actor: str | None = None
    """Who acts, when not the user: a clerk's staff id or an agent's identifier."""
    actor_role: str | None = None
    """'clerk' or 'agent' when ``actor`` or ``actor_local_id`` is set."""
    actor_local_id: str | None = None
    """Who acts, as an internal id (a legal person's operator: ``person:<link key>``): tokens
    carry its pairwise form for the client, like ``sub``. ``actor`` wins when both are set."""
    roles: frozenset[str] = frozenset()
    """Staff roles (clerk, operator, auditor)."""
    session_id: str | None = None
    """The SSO session (``sid``, OIDC Back-Channel Logout §2.1), when there is one."""
    acr_until: int | None = None
    """When ``acr`` is a stepped-up level: when it ends (tokens then carry ``base_acr``)."""
    base_acr: str | None = None
    """The level the session falls back to after ``acr_until``."""

    def acr_at(self, now: float) -> str:
        """The level valid at ``now`` (an elevated level expires)."""
        if self.acr_until is not None and now >= self.acr_until and self.base_acr:
            return self.base_acr
        return self.acr


@dataclass(frozen=True, slots=True)
class AuthorizationContext:
    """What the authenticator may need to decide: the validated authorization request."""

    request: IdentityRequest
    client_id: str
    scope: str
    prompt: frozenset[str]
    """OIDC Core §3.1.2.1 prompt values; 'login' asks for fresh authentication."""
    max_age: int | None
    acr_values: tuple[str, ...]
    """Requested levels, most preferred first (voluntary; services enforce their minimum)."""
    login_hint: str | None
    resume_url: str
    """The authorization request's own URL: where a login page sends the browser back to."""


class Authenticator(Protocol):
    """Finds the signed-in user of an authorization request, or starts a login."""

    async def authenticate(
        self, context: AuthorizationContext
    ) -> AuthenticatedUser | IdentityResponse | None:
        """The user; or a response starting an interactive login; or None (not signed in)."""
        ...

    async def browser_session(self, request: IdentityRequest) -> str | None:
        """The ``sid`` of the SSO session this browser holds (its cookie), or None."""
        ...

    async def logout_token(self, request: IdentityRequest) -> str | None:
        """The CSRF token of the logout confirmation form, bound to the session this browser
        holds (None without one). Stable across instances: no server-side state."""
        ...

    async def sign_out(self, request: IdentityRequest) -> tuple[tuple[str, str], ...]:
        """End the SSO session this browser holds (RP-initiated logout), never another one;
        the headers to add to the answer (the cleared session cookie)."""
        ...


class FakeAuthenticator:
    """Test double: whoever ``user`` names is signed in (``None``: nobody)."""

    def __init__(
        self,
        user: AuthenticatedUser | None = None,
        *,
        login: Callable[[AuthorizationContext], IdentityResponse] | None = None,
    ) -> None:
        self.user = user
        self.login = login
        self.contexts: list[AuthorizationContext] = []
        self.signed_out: list[str | None] = []

    async def authenticate(
        self, context: AuthorizationContext
    ) -> AuthenticatedUser | IdentityResponse | None:
        self.contexts.append(context)
        if self.user is not None and "login" not in context.prompt:
            return self.user
        if self.login is not None:
            return self.login(context)
        return None

    async def browser_session(self, request: IdentityRequest) -> str | None:
        return self.user.session_id if self.user is not None else None

    async def logout_token(self, request: IdentityRequest) -> str | None:
        sid = await self.browser_session(request)
        return f"confirm-{sid}" if sid else None

    async def sign_out(self, request: IdentityRequest) -> tuple[tuple[str, str], ...]:
        self.signed_out.append(await self.browser_session(request))
        self.user = None
        return ()


class NobodySignedIn:
    """The authenticator until a login method is configured: every authorization request ends
    in ``login_required`` (OIDC Core §3.1.2.6), never in a silent sign-in."""

    async def authenticate(
        self, context: AuthorizationContext
    ) -> AuthenticatedUser | IdentityResponse | None:
        return None

    async def browser_session(self, request: IdentityRequest) -> str | None:
        return None

    async def logout_token(self, request: IdentityRequest) -> str | None:
        return None

    async def sign_out(self, request: IdentityRequest) -> tuple[tuple[str, str], ...]:
        return ()
