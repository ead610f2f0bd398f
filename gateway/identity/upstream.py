"""Federation to provincial identity platforms: the protocol-neutral ``UpstreamIdP``, its settings.

One ``UpstreamIdP`` per platform (config/idps.yaml). The gateway keeps the login transaction
(state, nonce, PKCE verifier, requested level) itself; a platform only turns it into a redirect
URL and turns the callback back into claims. Signed-ticket, quirky-OAuth2 and legal-person kinds
(docs/identity-platforms.md) implement the same two calls; a platform kind that has no nonce or
PKCE simply ignores them.

Must not: import aiohttp (the web layer hands in an ``httpx.AsyncClient``); log a code, a ticket,
a token or a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.identity.citizen import ClaimMapping, FederatedIdentity, Level
from gateway.identity.staff import StaffDirectory
from gateway.secrets import SecretRef

AVAILABILITY_TTL = 5.0
"""Seconds a platform's availability probe is trusted."""


class UpstreamError(Exception):
    """The platform refused or failed the login; ``reason`` is a safe snake_case word."""

    def __init__(self, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unavailable = unavailable


class AvailabilityCache:
    """A platform's last availability probe, remembered for ``ttl`` seconds: the login page asks
    on every view, and a province must not be probed once per citizen."""

    __slots__ = ("_clock", "_last", "_probe", "_ttl")

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        clock: Callable[[], float],
        ttl: float = AVAILABILITY_TTL,
    ) -> None:
        self._probe = probe
        self._clock = clock
        self._ttl = ttl
        self._last: tuple[float, bool] | None = None

    async def __call__(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last[0] < self._ttl:
            return self._last[1]
        ok = await self._probe()
        self._last = (now, ok)
        return ok


@dataclass(frozen=True, slots=True)
class UpstreamLogin:
    """What the gateway remembers of one started upstream login (never sent anywhere but the
    platform, and the verifier not even there until the token request)."""

    state: str
    nonce: str
    code_verifier: str
    code_challenge: str
    acr: Level | None
    redirect_uri: str
    started_at: float = 0.0
    """When the gateway sent the browser to the platform (0: unknown)."""


class UpstreamIdP(Protocol):
    """One provincial identity platform, whatever protocol it speaks."""

    platform: str
    """Id in config/idps.yaml."""
    province: str
    """GB/T 2260 code of its province."""
    display_name: tuple[str, str]
    """(Chinese, English) name for the login page."""
    for_enterprises: bool
    """A legal-person platform: the login page lists it under 法人 (enterprises), not with the
    persons' home provinces."""

    async def available(self) -> bool:
        """Whether it answers now (bounded by the configured timeout; cached briefly)."""
        ...

    async def start_login(self, login: UpstreamLogin) -> str:
        """The URL to send the browser to."""
        ...

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        """The callback's parameters → the identity; raises ``UpstreamError``."""
        ...


# --- settings (config/idps.yaml) ------------------------------------------------------------

_UNSAFE_ALGS = ("HS", "NONE")


class IdpName(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class OidcIdpSettings(BaseModel):
    """A platform that speaks OpenID Connect (code flow, PKCE S256, nonce, signed ID token)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["oidc"]
    province: str = Field(pattern=r"^[0-9]{2}$")
    """GB/T 2260 province code (checked against the list by the settings loader)."""
    name: IdpName
    """Shown on the login page."""
    issuer: str
    """The platform's issuer; its discovery document names the endpoints."""
    client_id: str = Field(min_length=1)
    """The gateway's client id at the platform."""
    client_secret: SecretRef
    """The gateway's secret at the platform ({env} or {file})."""
    scopes: tuple[str, ...] = ("openid", "profile")
    """Scopes asked for; must include openid."""
    algorithms: tuple[str, ...] = ("ES256", "RS256")
    """ID-token algorithms accepted (pinned: never HS*, never none)."""
    acr_values: dict[Level, str] = Field(default_factory=dict)
    """Gateway level → the platform's acr value to ask for it (step-up)."""
    keep_id_number: bool = False
    """Keep the full ID number (a downstream use needs it); otherwise it is masked at once."""
    claims: ClaimMapping
    """How the platform's claims become the internal identity."""
    staff: StaffDirectory | None = None
    """Set on a staff directory (window clerks' sign-in, gateway/identity/staff.py): its roles
    claim is read and only window clients accept its logins. Absent: a citizen platform,
    whose roles claims are never read."""

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not (parts.scheme == "https" or loopback) or parts.query or parts.fragment:
            raise ValueError("issuer must be an https URL (http only on loopback)")
        return value.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("scopes must include openid")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(a.upper().startswith(_UNSAFE_ALGS) for a in value):
            raise ValueError("pin asymmetric algorithms only (no HS*, no none)")
        return value


IdpSettings = OidcIdpSettings
"""The platform kinds; the next issue makes this a union discriminated by ``kind`` (ticket,
oauth2-quirks, legal-person)."""


def describe(settings: OidcIdpSettings) -> dict[str, Any]:
    """What the login page shows about a platform."""
    return {"province": settings.province, "zh": settings.name.zh, "en": settings.name.en}
