"""Provider options (validated once at start-up by the settings loader) and pairwise subjects.

Pairwise subject identifiers follow OpenID Connect Core 1.0 §8.1: the same person gets a
different, stable ``sub`` in each sector (portal), so portals cannot correlate users by it.
Here ``sub = base64url(HMAC-SHA256(pairwise_secret, sector + "|" + local_user_id))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.identity.identifiers import LinkAlgorithm
from gateway.identity.keys import Algorithm
from gateway.secrets import SecretRef


class SessionSettings(BaseModel):
    """The SSO session at the gateway (GovSSO-style short idle timeout, longer absolute cap).

    A session ends at its deadline, the earlier of ``idle_timeout`` after its last use and
    ``absolute_timeout`` after its login, exactly as at a logout: its grant families are
    revoked, an OIDC Back-Channel Logout 1.0 token is queued for each portal of the session and
    a ``logout`` record per portal names the reason (``idle_timeout`` / ``absolute_timeout``).
    Whether the browser comes back or not: a sweeper ends expired sessions every
    ``sweep_interval`` seconds, each on exactly one gateway instance. The default ``store``
    keeps sessions in the data directory, so a restart neither signs citizens out nor loses
    the logout of a session that expired while the gateway was down.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cookie_name: str = Field("tongban_sso", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    """Name of the cookie holding the random session handle (nothing else is in it)."""
    idle_timeout: int = Field(900, ge=60, le=24 * 3600)
    """Seconds without use after which the session ends (GovSSO: 15 minutes); the portals are
    told by back-channel logout within ``sweep_interval``, with no browser request needed."""
    absolute_timeout: int = Field(12 * 3600, ge=300)
    """Seconds after login after which the session ends however active it is (then ended like
    an idle one)."""
    sweep_interval: float = Field(15.0, gt=0, le=300)
    """Seconds between two runs of the sweeper that ends expired sessions: the longest a portal
    waits to hear of a timeout (plus the back-channel delivery)."""
    expiry_grace: int = Field(3600, ge=60, le=7 * 24 * 3600)
    """Seconds a session's data is kept after its deadline so the sweeper can still end it
    properly; a session that no instance sweeps within this (every instance down) is lost
    without a logout."""
    elevated_level_ttl: int = Field(600, ge=60)
    """Seconds a stepped-up level lasts before the session falls back to its base level."""
    login_timeout: int = Field(600, ge=60, le=3600)
    """Seconds a started login (login page, upstream round trip) may take."""
    upstream_timeout: float = Field(3.0, gt=0, le=30)
    """Seconds to wait for a provincial IdP (availability probe, token request)."""
    store: Literal["memory", "sqlite", "redis"] = "memory"
    """'memory' (the default: in-process, one instance; a restart signs everyone out, without
    a back-channel logout); 'sqlite', ``sessions.sqlite`` in the data directory (one instance
    whose sessions must survive a restart: those that expired meanwhile still get their
    logout; each login then costs about a millisecond more CPU for its ~10 committed writes,
    docs/performance.md); 'redis' when several instances share sessions."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis server when ``store`` is 'redis'."""
    redis_prefix: str = "tongban:sso:"
    """Key prefix in Redis (one per deployment)."""


class BackchannelSettings(BaseModel):
    """Durable delivery of OIDC Back-Channel Logout 1.0 logout tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(8, ge=1, le=50)
    """Deliveries tried per client before the entry is recorded as failed."""
    initial_backoff: float = Field(1.0, gt=0)
    """Seconds before the first retry; doubled after each failure."""
    max_backoff: float = Field(300.0, gt=0)
    """Longest wait between two attempts."""
    timeout: float = Field(5.0, gt=0, le=60)
    """Seconds one delivery may take (§2.5: the RP answers quickly)."""
    logout_token_ttl: int = Field(120, ge=30, le=3600)
    """Lifetime of a logout token; each attempt signs a fresh one."""


class ProviderSettings(BaseModel):
    """The OpenID provider's options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str
    """Issuer identifier (OIDC Discovery §3): https URL without query or fragment."""
    pairwise_secret: SecretRef
    """Key of the pairwise subject HMAC (32+ characters); changing it changes every sub."""
    api_audience: str | None = None
    """``aud`` of access tokens (RFC 9068 §3); defaults to the issuer followed by '/api'."""
    algorithms: tuple[Algorithm, ...] = ("ES256",)
    """Signing algorithms; the first is the default, all are accepted when verifying."""
    authorization_code_ttl: int = Field(60, ge=10, le=600)
    """Seconds a code is valid (RFC 6749 §4.1.2 recommends at most 10 minutes)."""
    access_token_ttl: int = Field(300, ge=30, le=3600)
    """Seconds an access token is valid."""
    id_token_ttl: int = Field(300, ge=30, le=3600)
    """Seconds an ID token is valid."""
    refresh_token_ttl: int = Field(8 * 3600, ge=60)
    """Seconds one refresh token is valid; each rotation issues a fresh one."""
    grant_max_age: int = Field(12 * 3600, ge=60)
    """No token of a grant family outlives this, however often it is refreshed."""
    leeway: int = Field(30, ge=0, le=120)
    """Clock skew tolerated when checking exp / iat."""
    session: SessionSettings = SessionSettings()
    """The SSO session cookie, its timeouts and its store."""
    token_store: Literal["sqlite", "memory", "redis"] = "sqlite"
    """Where authorization codes, grant families, access-token ids and refresh tokens live:
    'sqlite', ``identity.sqlite`` in the data directory (one instance; survives a restart);
    'memory' (tests; forgotten at exit); 'redis' when several instances run, at
    ``session.redis_url`` (choose it together with ``session.store: redis``)."""
    token_redis_prefix: str = "tongban:oidc:"
    """Key prefix in Redis when ``token_store`` is 'redis' (one per deployment; not the
    sessions' prefix)."""
    backchannel: BackchannelSettings = BackchannelSettings()
    """Back-channel logout delivery (queue in the data directory)."""
    assertion_ttl: int = Field(60, ge=10, le=600)
    """Seconds an identity assertion sent to a back-end is valid."""
    link_secret: SecretRef | None = None
    """Key of the cross-province link key (keyed hash of ID type + number): one person
    signing in through two provinces is one local user. Absent: users are per platform."""
    link_algorithm: LinkAlgorithm = "hmac-sha256"
    """hmac-sha256, or hmac-sm3 (GB/T 32905)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        parts = urlsplit(self.issuer)
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not (parts.scheme == "https" or loopback) or parts.query or parts.fragment:
            raise ValueError("issuer must be an https URL without query or fragment")
        if self.issuer.endswith("/"):
            raise ValueError("issuer must not end with '/'")
        if len(self.pairwise_secret.get_secret_value()) < 32:
            raise ValueError("pairwise_secret needs 32+ characters")
        if self.link_secret is not None and len(self.link_secret.get_secret_value()) < 32:
            raise ValueError("link_secret needs 32+ characters")
        if not self.algorithms:
            raise ValueError("configure at least one signing algorithm")
        if self.token_store == "redis" and self.token_redis_prefix == self.session.redis_prefix:
            raise ValueError("token_redis_prefix must differ from session.redis_prefix")
        return self

    @property
    def audience(self) -> str:
        return self.api_audience or f"{self.issuer}/api"

    def endpoint(self, path: str) -> str:
        return f"{self.issuer}{path}"


def pairwise_subject(secret: SecretStr, sector: str, local_id: str) -> str:
    """OIDC Core §8.1 pairwise ``sub`` for ``local_id`` in ``sector``."""
    mac = hmac.new(
        secret.get_secret_value().encode(), f"{sector}|{local_id}".encode(), hashlib.sha256
    )
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
