"""Counter identification by OAuth 2.0 Token Exchange (RFC 8693) at the token endpoint.

A window clerk, signed in through a staff directory (gateway/identity/staff.py) at a window
client, checks the applicant's identity document at the counter. The window terminal then asks
the gateway for a token *for the applicant*, with the clerk as actor: the clerk acting for a
citizen is represented as both, never as the citizen alone.

Request, RFC 8693 §2.1, from an authenticated confidential window client allowed the grant:
- ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``;
- ``actor_token`` (``actor_token_type=urn:ietf:params:oauth:token-type:access_token``): the
  clerk's own access token from this gateway: valid signature, not expired (no leeway), not
  revoked, issued to this same client, its grant holding the staff role ``clerk``, and not itself
  an acting-for token (no delegation chains);
- ``subject_token`` (``subject_token_type=urn:tongban:params:oauth:token-type:id-document``):
  the document as the terminal read it, ``<national ID type>:<number>`` (``111:6101…``); a
  resident ID card must pass GB 11643 (gateway/identity/identifiers.py);
- optional ``scope`` (never wider than the clerk token's), ``resource`` / ``audience`` (only
  this gateway's API, §2.1) and ``requested_token_type`` (access tokens only).

The person is resolved exactly as federation links persons across provinces: the link key of
ID type + number gives the local id ``person:<link key>`` (citizen.py), so the token's subject
is the same person who signs in at any provincial platform, under the window client's pairwise
``sub`` (OIDC Core §8.1).

Answer, §2.2.1: ``access_token`` (RFC 9068 JWT) with ``acr`` Counter and
``act: {sub: <clerk's sub>, role: clerk}`` (§4.1), ``issued_token_type`` access_token,
``token_type`` Bearer, a short ``expires_in`` (never past the clerk's token) and no refresh
token. It is minted by the provider's one token generator in a one-token grant family bound to
the clerk's SSO session, so introspection, revocation and the clerk's logout cover it; the trail
records a ``token_issued`` event with the clerk as actor and operation ``token_exchange``.

Errors, §2.2.2 and RFC 6749 §5.2, always before anything is stored: a missing, malformed,
invalid or unacceptable subject or actor token is ``invalid_request`` (§2.2.2: "MUST be the
invalid_request error code"); a client that cannot authenticate (a public one) is
``invalid_client``; one not allowed the grant ``unauthorized_client``; a wider scope
``invalid_scope``; another resource or audience ``invalid_target``.

Must not: import aiohttp; log, store or echo the ID number (error descriptions never quote it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError, InvalidScopeError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin

from gateway.identity.authn import AuthenticatedUser
from gateway.identity.citizen import natural_person_id
from gateway.identity.clients import TOKEN_EXCHANGE, OAuthClient
from gateway.identity.config import ProviderSettings
from gateway.identity.identifiers import ID_TYPES, RESIDENT_ID_CARD, link_keyer, valid_resident_id
from gateway.identity.store import GrantFamily
from gateway.identity.verifier import InvalidToken, decode_access_token

if TYPE_CHECKING:
    from gateway.identity.provider import OpenIDProvider

log = structlog.get_logger("tongban.identity")

ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
"""RFC 8693 §3 token type of an OAuth access token (the actor token and the issued token)."""
ID_DOCUMENT_TOKEN_TYPE: Final = "urn:tongban:params:oauth:token-type:id-document"
"""The project's token type (RFC 8693 §3 allows any URI) of an identity document read at a
window terminal: ``<national ID type>:<number>``."""
COUNTER_LEVEL: Final = "Counter"
CLERK_ROLE: Final = "clerk"
COUNTER_TOKEN_TTL: Final = 300
"""Longest life of a Counter token (seconds): one intake at the window, not a session."""
OPERATION: Final = "token_exchange"
"""The audit trail's ``operation`` for an exchanged token."""

_OTHER_DOCUMENT = re.compile(r"^[A-Z0-9]{5,24}$")
_NOT_ACCEPTED_TYPES = frozenset({"990"})  # 其他: no document the window can check


@dataclass(frozen=True, slots=True, repr=False)
class IdDocument:
    """An identity document read at the counter; ``repr`` never shows the number."""

    id_type: str
    """National certificate code (111 resident ID card, 414 passport, ...)."""
    number: str

    def __repr__(self) -> str:
        return f"IdDocument(id_type={self.id_type!r})"


class ExchangeRefused(InvalidRequestError):  # type: ignore[misc]
    """RFC 8693 §2.2.2 invalid_request with a safe snake_case ``reason`` for the log."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason


def parse_id_document(value: str) -> IdDocument:
    """``<ID type>:<number>`` → the document; ``ExchangeRefused`` naming what is wrong."""
    id_type, sep, number = value.strip().partition(":")
    number = number.strip().upper()
    if not sep or id_type not in ID_TYPES or id_type in _NOT_ACCEPTED_TYPES:
        raise ExchangeRefused(
            "id_document_type_unknown",
            "subject_token must be '<national ID type>:<number>' with a known ID type.",
        )
    if id_type == RESIDENT_ID_CARD:
        if not valid_resident_id(number):
            raise ExchangeRefused(
                "id_document_check_failed",
                "The resident ID number fails its GB 11643 check character.",
            )
    elif not _OTHER_DOCUMENT.match(number):
        raise ExchangeRefused("id_document_malformed", "The document number is malformed.")
    return IdDocument(id_type, number)


def _one(data: Mapping[str, str], name: str) -> str | None:
    value = data.get(name)
    return value if value else None


@dataclass(frozen=True, slots=True)
class _Clerk:
    """What the exchange takes from a valid actor token."""

    subject: str
    """The clerk's pairwise ``sub`` at the window client: the issued token's ``act.sub``."""
    scope: frozenset[str]
    expires_at: int
    session_id: str | None
    """The clerk's SSO session: its logout revokes the Counter tokens too."""


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A validated exchange, waiting to be issued."""

    person: AuthenticatedUser
    scope: str
    expires_at: int


class TokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693 token exchange, restricted to Counter identification by a window clerk."""

    GRANT_TYPE = TOKEN_EXCHANGE
    # A public client cannot authenticate, so it never reaches the grant (invalid_client).
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    server: OpenIDProvider
    exchange: _Exchange

    def validate_token_request(self) -> None:
        client: OAuthClient = self.authenticate_token_endpoint_client()
        registration = client.registration
        if not client.check_grant_type(self.GRANT_TYPE) or not registration.window:
            log.info("token_exchange_refused", client=client.client_id, reason="grant_not_allowed")
            raise UnauthorizedClientError(
                "The client is not allowed the token-exchange grant (window clients only)."
            )
        self.request.client = client
        try:
            self.exchange = self._validate(client, self.request.payload.data)
        except ExchangeRefused as error:
            log.info("token_exchange_refused", client=client.client_id, reason=error.reason)
            raise
        except OAuth2Error as error:
            log.info("token_exchange_refused", client=client.client_id, reason=error.error)
            raise

    def _validate(self, client: OAuthClient, data: Mapping[str, str]) -> _Exchange:
        provider = self.server
        settings = provider.settings
        requested_type = _one(data, "requested_token_type")
        if requested_type not in (None, ACCESS_TOKEN_TYPE):
            raise ExchangeRefused(
                "requested_token_type_unsupported", "Only access tokens are issued."
            )
        for name in ("resource", "audience"):
            target = _one(data, name)
            if target is not None and target != settings.audience:
                # §2.2.2: the server is unwilling to issue a token for that target.
                raise OAuth2Error(
                    error="invalid_target",
                    description=f"Tokens are issued for {settings.audience} only.",
                    status_code=400,
                )
        subject_token = _one(data, "subject_token")
        if subject_token is None or data.get("subject_token_type") != ID_DOCUMENT_TOKEN_TYPE:
            raise ExchangeRefused(
                "subject_token_missing",
                f"Send the applicant's document as subject_token of type {ID_DOCUMENT_TOKEN_TYPE}.",
            )
        actor_token = _one(data, "actor_token")
        if actor_token is None or data.get("actor_token_type") != ACCESS_TOKEN_TYPE:
            raise ExchangeRefused(
                "actor_token_missing",
                f"Send the clerk's access token as actor_token of type {ACCESS_TOKEN_TYPE}.",
            )
        clerk = self._clerk(client, actor_token)
        person_id = _person_id(settings, parse_id_document(subject_token))

        requested = (self.request.payload.scope or "").split()
        granted = requested or sorted(clerk.scope - {"openid", "offline_access"})
        if not set(granted) <= clerk.scope:
            raise InvalidScopeError("The scope may not be wider than the clerk token's.")

        now = int(provider.clock())
        person = AuthenticatedUser(
            local_id=person_id,
            acr=COUNTER_LEVEL,
            auth_time=now,
            actor=clerk.subject,
            actor_role=CLERK_ROLE,
            session_id=clerk.session_id,
        )
        ttl = min(settings.access_token_ttl, COUNTER_TOKEN_TTL)
        return _Exchange(person, " ".join(dict.fromkeys(granted)), min(now + ttl, clerk.expires_at))

    def _clerk(self, client: OAuthClient, token: str) -> _Clerk:
        """The clerk behind a valid actor token, or a refusal."""
        provider = self.server
        settings = provider.settings
        try:
            _, claims = decode_access_token(
                token,
                keys=provider.keys,
                issuer=settings.issuer,
                audience=settings.audience,
                algorithms=settings.algorithms,
                now=provider.clock(),
                leeway=0,
            )
        except InvalidToken:
            raise ExchangeRefused("actor_token_invalid", "The actor token is not valid.") from None
        jti = str(claims["jti"])
        record = provider.store.get_access_token(jti)
        family = provider.store.get_family(record.family_id) if record is not None else None
        if record is None or family is None or provider.store.is_revoked(jti):
            raise ExchangeRefused("actor_token_revoked", "The actor token is not valid.")
        if claims.get("client_id") != client.client_id or record.client_id != client.client_id:
            raise ExchangeRefused(
                "actor_token_other_client", "The actor token was issued to another client."
            )
        clerk = family.user
        if clerk is None or CLERK_ROLE not in clerk.roles or clerk.actor is not None:
            raise ExchangeRefused(
                "actor_not_clerk", "The actor token is not a window clerk's own token."
            )
        return _Clerk(
            subject=str(claims["sub"]),
            scope=frozenset(str(claims.get("scope", "")).split()),
            expires_at=int(claims["exp"]),
            session_id=clerk.session_id,
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        exchange: _Exchange = self.exchange
        client: OAuthClient = self.request.client
        now = int(self.server.clock())
        family = GrantFamily(
            family_id=uuid.uuid4().hex,
            client_id=client.client_id,
            user=exchange.person,
            scope=exchange.scope,
            created_at=now,
            expires_at=exchange.expires_at,
        )
        self.server.store.put_family(family)
        token: dict[str, Any] = self.generate_token(
            user=family, scope=exchange.scope, include_refresh_token=False
        )
        self.save_token(token)
        token["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _person_id(settings: ProviderSettings, document: IdDocument) -> str:
    """The local id federation gives the holder of ``document`` (citizen.py, identifiers.py)."""
    if settings.link_secret is None:
        # Without the link key the document names nobody the gateway knows.
        raise UnauthorizedClientError("Counter identification needs the cross-province link key.")
    keyer = link_keyer(settings.link_secret.get_secret_value(), settings.link_algorithm)
    return natural_person_id(keyer(document.id_type, document.number))
