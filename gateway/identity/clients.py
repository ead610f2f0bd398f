"""Client registrations (portals, window clients, provincial systems) and their checks.

The registration fields follow OpenID Connect Dynamic Client Registration 1.0 §2 and RFC 7591
§2 (redirect_uris, post_logout_redirect_uris, grant_types, token_endpoint_auth_method,
sector_identifier for pairwise subjects, OIDC Core §8.1) although clients are declared in
configuration, never registered at run time. Redirect URIs are compared exactly (RFC 6749
§3.1.2.3, RFC 9700 §4.1.3): no prefix, wildcard or normalisation.

Secrets are written in configuration as ``{env: NAME}`` / ``{file: PATH}`` and resolved by the
settings loader; this module only receives the resolved ``SecretStr`` and never shows it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.ratelimit.config import ClientRateLimits
from gateway.secrets import SecretRef

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
"""RFC 8693 §2.1 grant type: a window client's Counter identification (token_exchange.py)."""
GrantType = Literal[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
]
ClientType = Literal["public", "confidential"]
IdTokenAlgorithm = Literal["ES256", "RS256"]
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _check_uri(uri: str, *, what: str) -> str:
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise ValueError(f"{what} {uri!r} must not have a fragment (RFC 6749 §3.1.2)")
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return uri
    raise ValueError(f"{what} {uri!r} must be https (http only on loopback)")


class ClientRegistration(BaseModel):
    """One client of the provider, as declared in configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = Field(min_length=1, max_length=64)
    """Identifier the client presents; lower-case letters, digits, '-', '_' and '.'."""
    name: str = ""
    """Human-readable name shown on login and logout pages."""
    type: ClientType
    """'public' (no secret: browser or mobile app) or 'confidential' (has a secret)."""
    client_secret: SecretRef | None = None
    """Resolved secret of a confidential client; never set for a public one."""
    redirect_uris: tuple[str, ...] = ()
    """Exact redirect URIs for the authorization code flow."""
    post_logout_redirect_uris: tuple[str, ...] = ()
    """Exact URIs RP-initiated logout may return to; anything else is never redirected to."""
    scopes: tuple[str, ...] = ("openid",)
    """Scopes the client may ask for."""
    allowed_services: tuple[str, ...] = ()
    """Catalogue services this client may call through the API ('*' for all)."""
    grant_types: tuple[GrantType, ...] = ("authorization_code", "refresh_token")
    """Grants the client may use at the token endpoint."""
    sector_identifier: str | None = None
    """Sector for pairwise subjects (OIDC Core §8.1); defaults to the redirect URIs' host."""
    backchannel_logout_uri: str | None = None
    """OIDC Back-Channel Logout 1.0 endpoint of the client, when it has one."""
    id_token_signed_response_alg: IdTokenAlgorithm | None = None
    """Algorithm for this client's ID tokens; the provider default when unset."""
    may_introspect: bool = False
    """Whether this client (a resource server) may introspect tokens issued to other clients."""
    window: bool = False
    """A 跨省通办 window client: its sign-ins accept staff directories only (a citizen session
    never satisfies it) and, with the token-exchange grant, it identifies applicants at the
    counter (gateway/identity/token_exchange.py). Citizen portals never accept staff logins."""
    provinces: tuple[str, ...] = ()
    """GB/T 2260 codes of the provinces this client receives for (收件地): a call or case naming
    another ``receiving_province`` is refused (client.province_not_allowed). Empty: any."""
    acts_as: Literal["institution", "department"] | None = None
    """A client-credentials client admitted to its ``allowed_services`` by this registration:
    an ``institution`` (a bank on a credit platform) reads only public data and what a consent
    grant naming it covers; a ``department`` (a provincial department's system) acts by its
    authority only within an open case handled in one of its ``provinces``."""
    rate_limits: ClientRateLimits = ClientRateLimits()
    """This client's own /api/* rates (``client``, ``person``), where the gateway's
    (gateway.yaml ``rate_limits``) do not fit it."""

    @field_validator("client_id")
    @classmethod
    def _client_id_chars(cls, value: str) -> str:
        if not set(value) <= _ID_CHARS:
            raise ValueError("use lower-case letters, digits, '-', '_' and '.'")
        return value

    @field_validator("redirect_uris", "post_logout_redirect_uris")
    @classmethod
    def _uris(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for uri in values:
            _check_uri(uri, what="URI")
        return values

    @field_validator("backchannel_logout_uri")
    @classmethod
    def _backchannel(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, what="backchannel_logout_uri")

    @model_validator(mode="after")
    def _consistent(self) -> ClientRegistration:
        secret = self.client_secret.get_secret_value() if self.client_secret else ""
        if self.type == "public" and self.client_secret is not None:
            raise ValueError("a public client has no client_secret")
        if self.type == "confidential" and len(secret) < 16:
            raise ValueError("a confidential client needs a client_secret of 16+ characters")
        if "client_credentials" in self.grant_types and self.type != "confidential":
            raise ValueError("client_credentials is for confidential clients only (RFC 6749 §4.4)")
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            raise ValueError("the authorization_code grant needs at least one redirect URI")
        if "refresh_token" in self.grant_types and "authorization_code" not in self.grant_types:
            raise ValueError("refresh_token is only issued with authorization_code")
        for code in self.provinces:
            if len(code) != 2 or not code.isdigit():
                raise ValueError(f"provinces: {code!r} is not a two-digit GB/T 2260 code")
        if self.acts_as is not None and "client_credentials" not in self.grant_types:
            raise ValueError("acts_as is for client-credentials clients (a system, no person)")
        if self.acts_as == "department" and not self.provinces:
            raise ValueError("a department's client names the province(s) it handles for")
        if TOKEN_EXCHANGE in self.grant_types and not (self.window and self.type == "confidential"):
            raise ValueError(
                "token exchange is for confidential window clients only (window: true)"
            )
        if self.sector_identifier is None and len(self._redirect_hosts()) > 1:
            raise ValueError(
                "redirect URIs on several hosts need a sector_identifier (OIDC Core §8.1)"
            )
        return self

    def _redirect_hosts(self) -> set[str]:
        return {urlsplit(uri).hostname or "" for uri in self.redirect_uris}

    @property
    def sector(self) -> str:
        """The pairwise sector: the configured identifier, else the redirect host, else the id."""
        if self.sector_identifier:
            return self.sector_identifier
        hosts = self._redirect_hosts()
        return hosts.pop() if hosts else self.client_id

    @property
    def token_endpoint_auth_method(self) -> str:
        return "none" if self.type == "public" else "client_secret_basic"


class OAuthClient:
    """A registration seen through authlib's ``ClientMixin`` interface (RFC 6749 §2)."""

    __slots__ = ("registration",)

    def __init__(self, registration: ClientRegistration) -> None:
        self.registration = registration

    @property
    def client_id(self) -> str:
        return self.registration.client_id

    @property
    def client_metadata(self) -> dict[str, list[str]]:
        # Read by authlib's RP-initiated logout endpoint.
        return {"post_logout_redirect_uris": list(self.registration.post_logout_redirect_uris)}

    @property
    def id_token_signed_response_alg(self) -> str | None:
        return self.registration.id_token_signed_response_alg

    def get_client_id(self) -> str:
        return self.registration.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OIDC Core §3.1.2.1 makes redirect_uri REQUIRED: never guess one.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.registration.scopes)
        return " ".join(s for s in dict.fromkeys(scope.split()) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.registration.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.registration.client_secret
        if secret is None:
            return False
        return hmac.compare_digest(secret.get_secret_value().encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.registration.type == "public":
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.registration.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.registration.grant_types

    def __repr__(self) -> str:
        return f"<OAuthClient {self.registration.client_id}>"


class ClientRegistry(Mapping[str, OAuthClient]):
    """All registered clients by id; built once from configuration."""

    def __init__(self, registrations: Iterable[ClientRegistration]) -> None:
        self._clients: dict[str, OAuthClient] = {}
        for registration in registrations:
            if registration.client_id in self._clients:
                raise ValueError(f"client {registration.client_id!r} is declared twice")
            self._clients[registration.client_id] = OAuthClient(registration)

    def __getitem__(self, client_id: str) -> OAuthClient:
        return self._clients[client_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def registration(self, client_id: str) -> ClientRegistration | None:
        client = self._clients.get(client_id)
        return client.registration if client is not None else None

    def allows_service(self, client_id: str, service: str) -> bool:
        """May this client call ``service`` through the API? Unknown clients may call nothing."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        allowed = client.registration.allowed_services
        return "*" in allowed or service in allowed
