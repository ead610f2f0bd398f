"""authlib's grants and endpoints, bound to the provider's store, clients and keys.

- ``AuthorizationCodeGrant``: RFC 6749 §4.1 with exact redirect URIs (§3.1.2.3; OIDC Core
  §3.1.2.1 makes ``redirect_uri`` REQUIRED), codes stored by hash, replay revoking the family
  (§4.1.2, §10.5);
- ``S256CodeChallenge``: RFC 7636 with S256 required for every client (RFC 9700 §2.1.1);
- ``OpenIDCodeExtension``: OIDC Core §3.1 nonce handling and the ID token hook;
- ``RotatingRefreshTokenGrant``: RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2);
- ``MachineClientCredentialsGrant``: RFC 6749 §4.4 restricted to the client's own scopes;
- introspection (RFC 7662 §2), revocation (RFC 7009 §2) and end session (RP-Initiated Logout 1.0).

Every callback is synchronous (authlib calls it on the event loop, or in a worker thread when
the store blocks: ``OpenIDProvider.run_with_store``) and reaches state only through the
provider's ``IdentityStore``. Must not: import aiohttp, log a credential.
"""

from __future__ import annotations

import secrets
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import OpenIDCode
from authlib.oidc.core.grants.util import is_openid_scope
from authlib.oidc.rpinitiated import EndSessionEndpoint

from gateway.audit.record import EventType
from gateway.identity.clients import ClientRegistration, OAuthClient
from gateway.identity.requests import IdentityRequest
from gateway.identity.store import CodeRecord, GrantFamily, credential_hash

if TYPE_CHECKING:
    from gateway.identity.provider import OpenIDProvider

log = structlog.get_logger("tongban.identity")


# --- authlib request adapter ---------------------------------------------------------------


class OAuthPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, params: Mapping[str, str]) -> None:
        self._data = dict(params)
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in params.items():
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: IdentityRequest) -> None:
        super().__init__(request.method, request.url, headers=request.headers)
        self.identity = request
        self.payload = OAuthPayload(request.params)

    @property
    def args(self) -> dict[str, str]:
        return dict(self.identity.query)

    @property
    def form(self) -> dict[str, str]:
        return dict(self.identity.form)


# --- token views for introspection and revocation ------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenView:
    """An access or refresh token as authlib's TokenMixin sees it."""

    kind: str  # "access_token" | "refresh_token"
    key: str  # jti or refresh-token hash
    client_id: str
    family_id: str | None
    scope: str
    subject: str
    issued_at: int
    expires_at: int
    revoked: bool
    now: int
    extra: Mapping[str, Any]

    def check_client(self, client: OAuthClient) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(self.expires_at - self.now, 0)

    def is_expired(self) -> bool:
        return self.expires_at <= self.now

    def is_revoked(self) -> bool:
        return self.revoked


# --- grants and extensions ----------------------------------------------------------------


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 for every client (authlib's ``required=True`` covers public ones only)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib's class attribute

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256).")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class OpenIDCodeExtension(OpenIDCode):  # type: ignore[misc]
    """OIDC Core §3.1 on the code grant; the provider builds the ID token and handles prompt."""

    def __init__(self, provider: OpenIDProvider) -> None:
        super().__init__(require_nonce=False)
        self._provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self._provider.store.nonce_seen(request.payload.client_id, nonce)

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.process_token)
        if is_openid_scope(grant.request.payload.scope):
            grant.register_hook(
                "after_validate_authorization_request_payload",
                self.validate_openid_authorization_request,
            )
        # prompt (§3.1.2.1) is decided by the provider with the Authenticator, not here.

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        return self._provider.id_token(
            token, request.client, request.user, request.authorization_code
        )


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    server: OpenIDProvider

    def generate_authorization_code(self) -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: OAuthClient) -> str:
        # OIDC Core §3.1.2.1: redirect_uri is REQUIRED and must match exactly. Raised without
        # redirect_uri, so the error is shown to the user, never sent to an unknown address.
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri or not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError("The redirect_uri is missing or not registered.")
        return str(redirect_uri)

    def save_authorization_code(self, code: str, request: Any) -> None:
        provider = self.server
        now = provider.clock()
        data = request.payload.data
        provider.store.put_code(
            credential_hash(code),
            CodeRecord(
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                user=request.user,
                nonce=data.get("nonce") or None,
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                issued_at=now,
                expires_at=now + provider.settings.authorization_code_ttl,
            ),
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeRecord | None:
        provider = self.server
        record = provider.store.get_code(credential_hash(code))
        if record is None or record.client_id != client.client_id:
            return None
        if record.family_id is not None:
            # RFC 6749 §4.1.2 / §10.5: a replayed code revokes what it issued.
            provider.store.revoke_family(record.family_id)
            log.warning("authorization_code_replayed", client=client.client_id)
            provider.audit_event(
                EventType.TOKEN_REVOKED,
                client_id=client.client_id,
                subject=provider.subject_for(client, record.user),
                operation="code_replay_detected",
                outcome="revoked",
                error_code="authorization_code_replayed",
                extra={"family": record.family_id},
            )
            return None
        if record.expires_at <= provider.clock():
            return None
        return record

    def authenticate_user(self, record: CodeRecord) -> GrantFamily | None:
        provider = self.server
        now = provider.clock()
        expires_at = record.user.auth_time + provider.settings.grant_max_age
        if expires_at <= now:
            return None
        family = GrantFamily(
            family_id=uuid.uuid4().hex,
            client_id=record.client_id,
            user=record.user,
            scope=record.scope,
            created_at=now,
            expires_at=expires_at,
        )
        provider.store.put_family(family)
        return family

    def delete_authorization_code(self, record: CodeRecord) -> None:
        provider = self.server
        family: GrantFamily = self.request.user
        code_hash = credential_hash(self.request.form["code"])
        if not provider.store.redeem_code(code_hash, family.family_id):
            # Redeemed at the same moment by another thread or instance, which won the
            # compare-and-set: a replay all the same (RFC 6749 §4.1.2), so the winner's tokens
            # are revoked with the ones just minted here, which never leave.
            provider.store.revoke_family(family.family_id)
            winner = provider.store.get_code(code_hash)
            if winner is not None and winner.family_id:
                provider.store.revoke_family(winner.family_id)
            log.warning("authorization_code_replayed", client=family.client_id)
            provider.audit_event(
                EventType.TOKEN_REVOKED,
                client_id=family.client_id,
                subject=provider.family_subject(family),
                operation="code_replay_detected",
                outcome="revoked",
                error_code="authorization_code_replayed",
                extra={"family": winner.family_id if winner else family.family_id},
            )
            raise InvalidGrantError("The code was already used.")


class RotatingRefreshTokenGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    INCLUDE_NEW_REFRESH_TOKEN = True

    server: OpenIDProvider
    _family: GrantFamily | None = None
    """The family read by authenticate_refresh_token (authlib makes one grant per request)."""

    def authenticate_refresh_token(self, refresh_token: str) -> TokenView | None:
        provider = self.server
        found = provider.store.get_refresh_grant(credential_hash(refresh_token))
        # Another client's token is refused without side effects: only the owning client can
        # trigger reuse detection (a public client's id is no secret, so that is no shield).
        if found is None or found[0].client_id != self.request.client.client_id:
            return None
        record, family = found
        if family is None or family.revoked or record.revoked:
            return None
        if record.rotated:
            # RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the whole family.
            provider.store.revoke_family(record.family_id)
            log.warning("refresh_token_reused", client=record.client_id)
            provider.audit_event(
                EventType.TOKEN_REVOKED,
                client_id=record.client_id,
                subject=provider.family_subject(family),
                operation="refresh_reuse_detected",
                outcome="revoked",
                error_code="refresh_token_reused",
                extra={"family": record.family_id},
            )
            return None
        if record.expires_at <= provider.clock():
            return None
        self._family = family
        return provider.refresh_view(record, family)

    def authenticate_user(self, token: TokenView) -> GrantFamily | None:
        # Read a moment ago in this request: one store round trip less per refresh. A family
        # revoked since then still revokes what is minted now (is_revoked checks the family),
        # and a concurrent reuse loses the compare-and-set in revoke_old_credential.
        family = self._family
        if family is None or family.family_id != token.family_id:
            family = self.server.store.get_family(token.family_id or "")
        if family is None or family.revoked or family.expires_at <= self.server.clock():
            return None
        return family

    def revoke_old_credential(self, token: TokenView) -> None:
        provider = self.server
        if not provider.store.rotate_refresh_token(token.key):
            # Rotated at the same moment by another thread or instance: reuse all the same
            # (RFC 9700 §4.14.2); the family goes, with the tokens just minted here.
            provider.store.revoke_family(token.family_id or "")
            log.warning("refresh_token_reused", client=token.client_id)
            provider.audit_event(
                EventType.TOKEN_REVOKED,
                client_id=token.client_id,
                subject=token.subject,
                operation="refresh_reuse_detected",
                outcome="revoked",
                error_code="refresh_token_reused",
                extra={"family": token.family_id or ""},
            )
            raise InvalidGrantError("The refresh token was already used.")


class MachineClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def validate_token_request(self) -> None:
        super().validate_token_request()
        registration: ClientRegistration = self.request.client.registration
        allowed = set(registration.scopes) - {"openid", "offline_access"}
        requested = (self.request.payload.scope or "").split()
        if not requested:
            requested = sorted(allowed)
        if not set(requested) <= allowed:
            raise InvalidScopeError()
        self.request.scope = " ".join(dict.fromkeys(requested))

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        token = self.generate_token(scope=self.request.scope, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def check_token_params(request: Any) -> None:
    """RFC 7009 §2.2.1 / RFC 7662 §2.1 parameters; errors are 400 per RFC 6749 §5.2."""
    if "token" not in request.form:
        raise InvalidRequestError("Missing 'token'.")
    hint = request.form.get("token_type_hint")
    if hint and hint not in ("access_token", "refresh_token"):
        # Not authlib's UnsupportedTokenTypeError: it answers 401, which RFC 6749 §5.2
        # keeps for invalid_client.
        raise OAuth2Error(error="unsupported_token_type", status_code=400)


class TokenIntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    server: OpenIDProvider

    def check_params(self, request: Any, client: OAuthClient) -> None:
        check_token_params(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return self.server.find_token(token_string, token_type_hint)

    def check_permission(self, token: TokenView, client: OAuthClient, request: Any) -> bool:
        return token.client_id == client.client_id or client.registration.may_introspect

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        return {
            "active": True,
            "token_type": token.kind,
            "client_id": token.client_id,
            "scope": token.scope,
            "sub": token.subject,
            "iss": self.server.settings.issuer,
            "exp": token.expires_at,
            "iat": token.issued_at,
            **token.extra,
        }


class TokenRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012

    server: OpenIDProvider

    def check_params(self, request: Any, client: OAuthClient) -> None:
        check_token_params(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return self.server.find_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenView, request: Any) -> None:
        store = self.server.store
        if token.kind == "refresh_token":
            # RFC 7009 §2.1: revoking a refresh token also invalidates its access tokens.
            store.revoke_family(token.family_id or "")
        else:
            store.revoke_access_token(token.key)
        log.info("token_revoked", client=token.client_id, token_type=token.kind)
        detail = {"token_type": token.kind}
        if token.kind == "refresh_token":
            detail["family"] = token.family_id or ""
        else:
            detail["jti"] = token.key  # an access token's id, not the token
        self.server.audit_event(
            EventType.TOKEN_REVOKED,
            client_id=token.client_id,
            subject=token.subject,
            operation="revocation",
            extra=detail,
        )


class LogoutEndpoint(EndSessionEndpoint):  # type: ignore[misc]
    server: OpenIDProvider

    def get_server_jwks(self) -> Any:
        return self.server.keys.public_key_set()

    def get_algorithms(self) -> list[str]:
        return list(self.server.settings.algorithms)

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        # RP-Initiated Logout §2: the OP MUST validate it issued the ID token; expiry is
        # tolerated. Access tokens (same keys) are refused by their typ.
        claims = self.server.decode_id_token_hint(id_token_hint)
        if claims is None:
            raise InvalidRequestError("The id_token_hint is not valid.")
        return claims

    def end_session(self, end_session_request: Any) -> None:
        # The provider ends the SSO session asynchronously with its Authenticator.
        return None
