"""The OpenID Connect provider core, on authlib's framework-free ``AuthorizationServer``.

Implements:
- OAuth 2.0 authorization code grant, RFC 6749 §4.1, with exact redirect URI matching (§3.1.2.3)
  and code replay answered by revoking every token issued from that code (§4.1.2, §10.5);
- PKCE, RFC 7636, with ``S256`` REQUIRED for every client, public or confidential (RFC 9700
  §2.1.1); ``plain`` and missing challenges are refused with ``invalid_request`` (§4.4.1);
- OpenID Connect Core 1.0: authentication request (§3.1.2), ID token (§2, §3.1.3.6 ``at_hash``,
  ``nonce``, ``acr``, ``auth_time``), pairwise subjects (§8.1), userinfo (§5.3, written by
  hand: authlib's endpoint is Flask-shaped);
- refresh tokens, RFC 6749 §6, rotated on every use, with reuse detection that revokes the
  whole grant family (RFC 9700 §4.14.2);
- client credentials, RFC 6749 §4.4, for machine clients;
- token exchange, RFC 8693, for Counter identification by a window clerk (token_exchange.py);
- JWT access tokens, RFC 9068 (``typ`` at+jwt; iss, sub, aud, exp, iat, jti, client_id, scope,
  acr, auth_time, ``act`` per RFC 8693 §4.1 when a clerk or agent acts, and the private claim
  ``tb_pk``, the sealed person key, when a person is signed in: gateway/identity/person_key.py);
- token introspection, RFC 7662, and revocation, RFC 7009;
- RP-initiated logout, OpenID Connect RP-Initiated Logout 1.0 (only registered
  ``post_logout_redirect_uris``; no redirect without a valid ``id_token_hint``);
- discovery metadata, OpenID Connect Discovery 1.0 §3 and RFC 8414 §2.

authlib's callbacks are synchronous and reach state through a synchronous ``IdentityStore``
(gateway/identity/store.py); only the ``Authenticator`` is awaited, and only between two
validations of the authorization request. Every piece of synchronous work that touches the store
goes through ``run_with_store``: on the event loop when the store answers in microseconds
(memory, SQLite), in a worker thread when it waits on the network (Redis). In a thread, audit
events are collected and handed to the sink on the loop when the work returns, before its
answer does: the sink is not thread-safe, and a token still never leaves unrecorded.

Must not: import aiohttp; log or store a usable code, token or secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import functools
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Request,
)
from authlib.oidc.core.errors import LoginRequiredError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, Key

from gateway.audit.record import AuditEvent, EventType
from gateway.audit.sink import AuditSink, WriterAuditSink
from gateway.errors import AuditUnavailable
from gateway.identity.authn import AuthenticatedUser, Authenticator, AuthorizationContext
from gateway.identity.clients import ClientRegistration, ClientRegistry, OAuthClient
from gateway.identity.config import ProviderSettings, pairwise_subject
from gateway.identity.grants import (
    CodeGrant,
    LogoutEndpoint,
    MachineClientCredentialsGrant,
    OAuthRequest,
    OpenIDCodeExtension,
    RotatingRefreshTokenGrant,
    S256CodeChallenge,
    TokenIntrospectionEndpoint,
    TokenRevocationEndpoint,
    TokenView,
)
from gateway.identity.keys import SigningKeys
from gateway.identity.person_key import ENTERPRISE_AAD, PERSON_CLAIM, PersonKeys
from gateway.identity.requests import IdentityRequest, IdentityResponse
from gateway.identity.store import (
    AccessTokenRecord,
    CodeRecord,
    GrantFamily,
    IdentityStore,
    MemoryIdentityStore,
    RefreshTokenRecord,
    credential_hash,
)
from gateway.identity.store_redis import RedisIdentityStore, RedisRevocationList
from gateway.identity.store_sqlite import SqliteIdentityStore
from gateway.identity.subject_keys import ENTERPRISE_CLAIM, EnterpriseKeys, enterprise_of_local_id
from gateway.identity.token_exchange import OPERATION as TOKEN_EXCHANGE_OPERATION
from gateway.identity.token_exchange import TokenExchangeGrant
from gateway.identity.verifier import (
    InvalidToken,
    JwtAccessTokenVerifier,
    RevocationList,
    StoreRevocationList,
    decode_access_token,
    principal_from_claims,
)

log = structlog.get_logger("tongban.identity")

KEY_FILE_NAME = "oidc-signing-keys.json"
LOGOUT_CONFIRM_FIELD = "confirm"
"""The logout confirmation form's CSRF field (its value is bound to the session cookie)."""
LOGOUT_PARAMS = (
    "id_token_hint",
    "client_id",
    "post_logout_redirect_uri",
    "state",
    "ui_locales",
    "logout_hint",
)
"""RP-Initiated Logout 1.0 §2 parameters the confirmation form carries over."""
LEVELS = ("L1", "L2", "L3", "LP", "Counter")
JSON_HEADERS = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
)
# OIDC Core §5.4: which standard claims each scope releases at userinfo.
SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "profile": (
        "name",
        "family_name",
        "given_name",
        "nickname",
        "preferred_username",
        "gender",
        "birthdate",
        "locale",
        "updated_at",
    ),
    "email": ("email", "email_verified"),
    "phone": ("phone_number", "phone_number_verified"),
    "address": ("address",),
}
P = ParamSpec("P")
T = TypeVar("T")
_DEFERRED_AUDIT: contextvars.ContextVar[list[AuditEvent] | None] = contextvars.ContextVar(
    "tongban_deferred_audit", default=None
)
"""Set in a worker thread's context by ``run_with_store``: audit events wait there for the loop."""
_ERROR_TEXT = {
    "invalid_client": "未知的客户端 / Unknown client.",
    "invalid_request": "请求无效 / The request is invalid.",
    "unsupported_response_type": "不支持的响应类型 / Unsupported response type.",
    "unauthorized_client": "客户端无权使用此流程 / The client may not use this flow.",
}


def open_identity_store(settings: ProviderSettings, data_dir: Path) -> IdentityStore:
    """The store ``settings.token_store`` names (blocking I/O: call it off the loop)."""
    if settings.token_store == "memory":
        return MemoryIdentityStore()
    if settings.token_store == "redis":
        return RedisIdentityStore.from_url(settings.session.redis_url, settings.token_redis_prefix)
    return SqliteIdentityStore.in_data_dir(data_dir)


def _now_int(clock: Callable[[], float]) -> int:
    return int(clock())


def _half_hash(value: str, alg: str) -> str:
    """OIDC Core §3.1.3.6 at_hash: left half of the hash matching the alg, base64url."""
    digest = hashlib.new(f"sha{alg[2:]}", value.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


# --- the provider ---------------------------------------------------------------------------


class OpenIDProvider(AuthorizationServer):  # type: ignore[misc]
    """The gateway's OpenID provider; the web layer calls ``authorize``, ``token``, ..."""

    def __init__(
        self,
        settings: ProviderSettings,
        clients: ClientRegistry,
        keys: SigningKeys,
        store: IdentityStore,
        authenticator: Authenticator,
        *,
        clock: Callable[[], float] = time.time,
        revocations: RevocationList | None = None,
    ) -> None:
        scopes = {"openid"}
        for client in clients.values():
            scopes.update(client.registration.scopes)
            alg = client.registration.id_token_signed_response_alg
            if alg is not None and alg not in settings.algorithms:
                raise ValueError(f"client {client.client_id}: {alg} is not a configured algorithm")
        for alg in settings.algorithms:
            keys.active_kid(alg)  # KeyError early when the key set lacks an algorithm
        super().__init__(scopes_supported=sorted(scopes))
        # authlib logs whole token responses at DEBUG ("Issue token %r to %r"): keep its
        # loggers above DEBUG whatever level the gateway runs at, so no token reaches a log.
        logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger("authlib").level))
        self.settings = settings
        self.clients = clients
        self.keys = keys
        self.store = store
        self.revocations = revocations if revocations is not None else StoreRevocationList(store)
        """What the access-token verifier asks on every /api request (the store by default)."""
        self.authenticator = authenticator
        self.clock = clock
        self.person_keys = PersonKeys(settings.pairwise_secret)
        self.enterprise_keys = EnterpriseKeys(settings.pairwise_secret)
        """Enterprise keys, sealed into a legal person's tokens (subject_keys.py)."""
        """Person keys (the same person at every portal) and their sealed claim."""
        self.backchannel_logout = False
        """True once a back-channel logout queue is wired (OIDC Back-Channel Logout 1.0 §2.1)."""
        self.audit: AuditSink = WriterAuditSink()
        """Where logins, tokens and logouts are recorded (gateway/audit/sink.py); the gateway
        binds it to its audit writer at start-up."""
        self.register_token_generator("default", self._generate_token)
        self.register_grant(CodeGrant, [S256CodeChallenge(), OpenIDCodeExtension(self)])
        self.register_grant(RotatingRefreshTokenGrant)
        self.register_grant(MachineClientCredentialsGrant)
        self.register_grant(TokenExchangeGrant)
        self.register_endpoint(TokenIntrospectionEndpoint(self))
        self.register_endpoint(TokenRevocationEndpoint(self))
        self.register_endpoint(LogoutEndpoint(self))

    @classmethod
    def from_config(
        cls,
        settings: ProviderSettings,
        clients: Iterable[ClientRegistration],
        *,
        data_dir: Path,
        authenticator: Authenticator,
        store: IdentityStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> OpenIDProvider:
        """Build at start-up: loads (or creates, 0600) ``data_dir/oidc-signing-keys.json`` and
        opens the identity store of ``settings.token_store`` (unless ``store`` is given).

        Synchronous and cheap after the first start (RS256 key generation takes ~0.1 s once);
        call it off the loop and hand the result to ``gateway.http.oidc.add_oidc_routes``, whose
        cleanup closes the store (``aclose``).
        """
        keys = SigningKeys.load_or_create(data_dir / KEY_FILE_NAME, settings.algorithms)
        revocations: RevocationList | None = None
        if store is None:
            store = open_identity_store(settings, data_dir)
            if isinstance(store, RedisIdentityStore):
                # Asked on every /api request, from the loop: Redis's asyncio client, no thread.
                revocations = RedisRevocationList.from_url(
                    settings.session.redis_url, settings.token_redis_prefix
                )
        return cls(
            settings,
            ClientRegistry(clients),
            keys,
            store,
            authenticator,
            clock=clock,
            revocations=revocations,
        )

    async def run_with_store(self, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run synchronous ``work`` that touches the store where the store wants it run.

        A non-blocking store (memory, SQLite): called right here, on the loop. A blocking one
        (Redis): in a worker thread, so the loop serves other requests meanwhile; the store's
        compare-and-set operations keep concurrent work correct. Audit events reported by the
        work in the thread are collected and recorded here, on the loop, in their order, before
        the result is returned: "recorded before the token leaves" holds, and a sink that
        cannot take them raises here, so the answer is never sent. If the caller is cancelled
        (the client went away), the thread still finishes and its events are recorded then.
        """
        if not self.store.blocking:
            return work(*args, **kwargs)
        events: list[AuditEvent] = []
        context = contextvars.copy_context()  # request id and log context go along
        context.run(_DEFERRED_AUDIT.set, events)
        call = functools.partial(context.run, work, *args, **kwargs)
        future = asyncio.get_running_loop().run_in_executor(None, call)
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._record_all(events)
            else:
                future.add_done_callback(lambda _: self._record_all(events, late=True))

    def _record_all(self, events: list[AuditEvent], *, late: bool = False) -> None:
        for event in events:
            if not late:
                self.audit.record(event)
                continue
            try:
                self.audit.record(event)
            except AuditUnavailable:
                log.error("audit_event_lost", type=event.type.value)

    def purge_expired(self) -> int:
        """Drop expired codes, tokens and families (run periodically, through
        ``run_with_store``)."""
        return self.store.purge(self.clock() - self.settings.leeway)

    async def aclose(self) -> None:
        """Close the identity store (the application's cleanup calls it)."""
        await self.run_with_store(self.store.close)
        if isinstance(self.revocations, RedisRevocationList):
            await self.revocations.aclose()

    def parameter_error(self, endpoint: str, description: str) -> IdentityResponse:
        """The answer to a request whose parameters could not be accepted at all."""
        error = InvalidRequestError(description)
        if endpoint in ("authorize", "logout"):
            return self._error_page(error)
        if endpoint == "userinfo":
            return self._bearer_error(400, "invalid_request")
        response: IdentityResponse = self.handle_error_response(None, error)
        return response

    def access_token_verifier(self, *, cache_size: int = 4096) -> JwtAccessTokenVerifier:
        """The ``TokenVerifier`` for /api/* that trusts this provider's access tokens."""
        return JwtAccessTokenVerifier(
            keys=self.keys,
            issuer=self.settings.issuer,
            audience=self.settings.audience,
            algorithms=self.settings.algorithms,
            revocations=self.revocations,
            persons=self.person_keys,
            clock=self.clock,
            leeway=self.settings.leeway,
            cache_size=cache_size,
        )

    # --- authlib hooks ---------------------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        # Records are written when a token is minted (``_generate_token``).
        return None

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return OAuthRequest(request)

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("no JSON-bodied endpoints")

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> IdentityResponse:
        if isinstance(body, dict):
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        else:
            payload = str(body or "").encode()
        return IdentityResponse(status, payload, tuple((str(k), str(v)) for k, v in headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    # --- endpoints -------------------------------------------------------------------------

    async def authorize(self, request: IdentityRequest) -> IdentityResponse:
        """Authorization endpoint, OIDC Core §3.1.2 (GET or POST)."""
        oauth_request = OAuthRequest(request)
        try:
            # The OIDC nonce check (OpenIDCodeExtension.exists_nonce) reads the store.
            grant = await self.run_with_store(self.get_consent_grant, oauth_request, end_user=None)
        except OAuth2Error as error:
            return self._authorization_error(error)
        params = oauth_request.payload.data
        prompt = frozenset(params.get("prompt", "").split())
        max_age: int | None = None
        try:
            if "none" in prompt and len(prompt) > 1:
                raise InvalidRequestError("prompt=none cannot be combined with other values.")
            if params.get("max_age"):
                max_age = int(params["max_age"])
                if max_age < 0:
                    raise ValueError
        except ValueError:
            return self._redirect_error(InvalidRequestError("max_age is not valid."), grant)
        except OAuth2Error as error:
            return self._redirect_error(error, grant)
        context = AuthorizationContext(
            request=request,
            client_id=grant.client.client_id,
            scope=oauth_request.scope or "",
            prompt=prompt,
            max_age=max_age,
            acr_values=tuple(params.get("acr_values", "").split()),
            login_hint=params.get("login_hint"),
            resume_url=request.url,
        )
        outcome = await self.authenticator.authenticate(context)
        if (
            isinstance(outcome, AuthenticatedUser)
            and max_age is not None
            and self.clock() - outcome.auth_time > max_age
        ):
            outcome = None
        if isinstance(outcome, IdentityResponse) and "none" not in prompt:
            return outcome
        if not isinstance(outcome, AuthenticatedUser):
            return self._redirect_error(LoginRequiredError(), grant)
        # Validated again: state may have changed while the authenticator was awaited.
        response: IdentityResponse = await self.run_with_store(
            self.create_authorization_response, oauth_request, grant_user=outcome, grant=grant
        )
        if response.status == 302:
            log.info("authorization_code_issued", client=context.client_id, acr=outcome.acr)
        return response

    def token(self, request: IdentityRequest) -> IdentityResponse:
        """Token endpoint, RFC 6749 §3.2."""
        if refused := self._unreadable_basic_credentials(request):
            return refused
        response: IdentityResponse = self.create_token_response(OAuthRequest(request))
        return response

    def introspect(self, request: IdentityRequest) -> IdentityResponse:
        """Introspection endpoint, RFC 7662 §2."""
        if refused := self._unreadable_basic_credentials(request):
            return refused
        response: IdentityResponse = self.create_endpoint_response(
            "introspection", OAuthRequest(request)
        )
        return response

    def revoke(self, request: IdentityRequest) -> IdentityResponse:
        """Revocation endpoint, RFC 7009 §2."""
        if refused := self._unreadable_basic_credentials(request):
            return refused
        response: IdentityResponse = self.create_endpoint_response(
            "revocation", OAuthRequest(request)
        )
        return response

    def _unreadable_basic_credentials(self, request: IdentityRequest) -> IdentityResponse | None:
        """``invalid_client`` (RFC 6749 §5.2, 401 with a Basic challenge) for HTTP Basic
        credentials that are not base64 of UTF-8 text (RFC 7617 §2.1): authlib would raise
        ``UnicodeDecodeError`` on them."""
        scheme, _, blob = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            base64.b64decode(blob.strip()).decode("utf-8")
        except binascii.Error:
            return None  # authlib treats undecodable base64 as no credentials
        except UnicodeDecodeError:
            error = InvalidClientError(
                description="The client credentials are not UTF-8.", status_code=401
            )
            response: IdentityResponse = self.handle_error_response(None, error)
            return response
        return None

    def userinfo(self, request: IdentityRequest) -> IdentityResponse:
        """UserInfo endpoint, OIDC Core §5.3, bearer token per RFC 6750 §2.1 / §3."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._bearer_error(401, None)
        try:
            _, claims = self._decode_access_token(token.strip())
        except InvalidToken:
            return self._bearer_error(401, "invalid_token")
        if self.store.is_revoked(str(claims["jti"])):
            return self._bearer_error(401, "invalid_token")
        scopes = set(str(claims.get("scope", "")).split())
        record = self.store.get_access_token(str(claims["jti"]))
        family = self.store.get_family(record.family_id) if record else None
        if "openid" not in scopes or family is None or family.user is None:
            return self._bearer_error(403, "insufficient_scope")
        body: dict[str, Any] = {"sub": claims["sub"]}
        for scope in sorted(scopes):
            for name in SCOPE_CLAIMS.get(scope, ()):
                if name in family.user.claims:
                    body[name] = family.user.claims[name]
        return self.handle_response(200, body, list(JSON_HEADERS))

    async def end_session(self, request: IdentityRequest) -> IdentityResponse:
        """End-session endpoint, OpenID Connect RP-Initiated Logout 1.0 §2–§4.

        Only the SSO session this browser holds can end here, and only at once when a valid
        ``id_token_hint`` names that very session; otherwise the user confirms on a page whose
        form carries a token bound to the session cookie (§2: the OP MUST ask when there is no
        ``id_token_hint``; a top-level link is not a decision). A hint from a browser without
        the session (an expired token of someone else's, say) ends nothing.
        """
        oauth_request = OAuthRequest(request)
        try:
            validated = self.validate_endpoint_request("end_session", oauth_request)
        except OAuth2Error as error:
            return self._error_page(error)
        claims = validated.id_token_claims or {}
        held = await self.authenticator.browser_session(request)
        if held is None:
            # Nothing to end: the RP still gets its browser back when the hint was valid.
            log.info("logout_without_session", hinted=bool(claims))
            return self._signed_out(validated)
        hinted = claims.get("sid")
        confirmed = isinstance(hinted, str) and hmac.compare_digest(hinted, held)
        if not confirmed:
            expected = await self.authenticator.logout_token(request)
            offered = request.form.get(LOGOUT_CONFIRM_FIELD, "") if request.method == "POST" else ""
            confirmed = bool(
                expected and offered and hmac.compare_digest(offered.encode(), expected.encode())
            )
            if not confirmed:
                return self._logout_confirmation(request, expected or "")
        cookies = await self.authenticator.sign_out(request)
        client_id = validated.client.client_id if validated.client else None
        subject = claims.get("sub")
        self.audit_event(
            EventType.LOGOUT,
            client_id=client_id,
            subject=subject if isinstance(subject, str) else None,
            operation="rp_initiated_logout",
        )
        log.info("session_ended", client=client_id)
        response = self._signed_out(validated)
        return IdentityResponse(response.status, response.body, (*response.headers, *cookies))

    def _signed_out(self, validated: Any) -> IdentityResponse:
        if validated.redirect_uri:
            return IdentityResponse(
                302, b"", (("Location", validated.redirect_uri), ("Cache-Control", "no-store"))
            )
        page = (
            "<!doctype html><meta charset='utf-8'><title>已退出</title>"
            "<p>已退出登录 / Signed out.</p>"
        )
        return IdentityResponse(
            200,
            page.encode(),
            (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")),
        )

    def _logout_confirmation(self, request: IdentityRequest, token: str) -> IdentityResponse:
        """The page that asks before a logout nobody proved the browser wants: the request's
        own parameters go back in hidden fields, with the session-bound token."""
        fields = [
            (name, request.params[name]) for name in LOGOUT_PARAMS if request.params.get(name)
        ]
        fields.append((LOGOUT_CONFIRM_FIELD, token))
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(name)}' value='{html.escape(value)}'>"
            for name, value in fields
        )
        action = html.escape(self.settings.issuer + "/oauth2/logout")
        page = (
            "<!doctype html><html lang='zh'><meta charset='utf-8'>"
            "<title>退出登录？ / Sign out?</title>"
            "<h1>退出登录？</h1><p>要退出统一身份认证，并退出所有已登录的门户吗？</p>"
            "<p>Sign out of the single sign-on session and of every portal it signed you in"
            " to?</p>"
            f"<form method='post' action='{action}'>{hidden}"
            "<button type='submit'>退出 / Sign out</button></form>"
            "<p>如果不是您本人要求退出，请关闭此页。 / If you did not ask to sign out, close"
            " this page.</p></html>"
        )
        return IdentityResponse(
            200,
            page.encode(),
            (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")),
        )

    def discovery(self) -> dict[str, Any]:
        """OpenID Connect Discovery 1.0 §3 / RFC 8414 §2 metadata."""
        endpoint = self.settings.endpoint
        claims = sorted(
            {"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr"}
            | {c for names in SCOPE_CLAIMS.values() for c in names}
        )
        return {
            "issuer": self.settings.issuer,
            "authorization_endpoint": endpoint("/oauth2/authorize"),
            "token_endpoint": endpoint("/oauth2/token"),
            "userinfo_endpoint": endpoint("/oauth2/userinfo"),
            "jwks_uri": endpoint("/oauth2/jwks"),
            "introspection_endpoint": endpoint("/oauth2/introspect"),
            "revocation_endpoint": endpoint("/oauth2/revoke"),
            "end_session_endpoint": endpoint("/oauth2/logout"),
            "scopes_supported": self.scopes_supported,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                TokenExchangeGrant.GRANT_TYPE,
            ],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": list(self.settings.algorithms),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "none",
            ],
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": list(LEVELS),
            "claims_supported": claims,
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "backchannel_logout_supported": self.backchannel_logout,
            "backchannel_logout_session_supported": self.backchannel_logout,
        }

    def jwks(self) -> dict[str, Any]:
        return self.keys.public_jwks()

    # --- tokens ----------------------------------------------------------------------------

    def subject_for(self, client: OAuthClient, user: AuthenticatedUser) -> str:
        return pairwise_subject(
            self.settings.pairwise_secret, client.registration.sector, user.local_id
        )

    def _generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: GrantFamily | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        now = _now_int(self.clock)
        scope = scope or ""
        family = user
        if family is None:  # client_credentials: a one-token family of its own
            family = GrantFamily(
                family_id=uuid.uuid4().hex,
                client_id=client.client_id,
                user=None,
                scope=scope,
                created_at=now,
                expires_at=now + self.settings.access_token_ttl,
            )
            self.store.put_family(family)
        expires_at = min(now + self.settings.access_token_ttl, int(family.expires_at))
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "iat": now,
            "exp": expires_at,
            "jti": jti,
            "client_id": client.client_id,
            "scope": scope,
        }
        if family.user is None:
            claims["sub"] = client.client_id  # RFC 9068 §2.2: the client acts for itself
        else:
            person = family.user
            claims["sub"] = self.subject_for(client, person)
            # Sealed: the key is the same at every portal, the token readable by this one.
            claims[PERSON_CLAIM] = self.person_keys.seal(
                self.person_keys.person_key(person.local_id),
                subject=claims["sub"],
                client_id=client.client_id,
            )
            org = enterprise_of_local_id(person.local_id)
            if org is not None:
                # A legal person's operator: the enterprise it acts for (the subject rule).
                claims[ENTERPRISE_CLAIM] = self.person_keys.seal(
                    self.enterprise_keys.enterprise_key(org),
                    subject=claims["sub"],
                    client_id=client.client_id,
                    label=ENTERPRISE_AAD,
                )
            claims["acr"] = person.acr_at(now)
            if person.acr_until is not None and now < person.acr_until:
                # A stepped-up level ends when its window does, not when the token would.
                expires_at = claims["exp"] = max(min(expires_at, person.acr_until), now + 1)
            claims["auth_time"] = person.auth_time
            actor = person.actor
            if actor is None and person.actor_local_id is not None:
                # An internal id (a legal person's operator): pairwise per portal, like sub.
                actor = pairwise_subject(
                    self.settings.pairwise_secret,
                    client.registration.sector,
                    person.actor_local_id,
                )
            if actor:
                claims["act"] = {"sub": actor, "role": person.actor_role or "agent"}
            if person.roles:
                claims["roles"] = sorted(person.roles)
        access_token = self.keys.sign(claims, algorithm=self.settings.algorithms[0], typ="at+jwt")
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": access_token,
            "expires_in": expires_at - now,
            "scope": scope,
        }
        refresh_record: RefreshTokenRecord | None = None
        if include_refresh_token and family.user is not None:
            refresh_token = secrets.token_urlsafe(32)
            refresh_record = RefreshTokenRecord(
                token_hash=credential_hash(refresh_token),
                family_id=family.family_id,
                client_id=client.client_id,
                scope=scope,
                issued_at=now,
                expires_at=min(now + self.settings.refresh_token_ttl, family.expires_at),
            )
            token["refresh_token"] = refresh_token
        access_record = AccessTokenRecord(
            jti=jti,
            family_id=family.family_id,
            client_id=client.client_id,
            subject=claims["sub"],
            scope=scope,
            issued_at=now,
            expires_at=expires_at,
        )
        self.store.put_tokens(access_record, refresh_record)
        # Recorded before the token leaves: if the trail cannot take it, nobody gets the token.
        act = claims.get("act")
        self.audit_event(
            EventType.TOKEN_REFRESHED if grant_type == "refresh_token" else EventType.TOKEN_ISSUED,
            client_id=client.client_id,
            subject=claims["sub"],
            level=claims.get("acr"),
            actor=act["sub"] if act else None,
            operation=TOKEN_EXCHANGE_OPERATION
            if grant_type == TokenExchangeGrant.GRANT_TYPE
            else grant_type,
            extra={
                "family": family.family_id,
                "jti": jti,
                "scope": scope[:200],
                "refresh_token": "refresh_token" in token,
            },
        )
        log.info("token_issued", client=client.client_id, grant_type=grant_type)
        return token

    def audit_event(
        self,
        kind: EventType,
        *,
        client_id: str | None,
        subject: str | None,
        level: str | None = None,
        actor: str | None = None,
        operation: str | None = None,
        outcome: str = "ok",
        error_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Report an identity event to the audit trail: pairwise subjects and ids only.

        In a worker thread (``run_with_store``) the event waits for the loop to record it."""
        event = AuditEvent(
            type=kind,
            principal=subject,
            identity_level=level,
            actor=actor,
            client=client_id,
            operation=operation,
            outcome=outcome,
            error_code=error_code,
            extra=extra or {},
        )
        deferred = _DEFERRED_AUDIT.get()
        if deferred is not None:
            deferred.append(event)
        else:
            self.audit.record(event)

    def family_subject(self, family: GrantFamily | None) -> str | None:
        """The pairwise subject a grant family's tokens carry (its client's sector)."""
        if family is None:
            return None
        client = self.clients.get(family.client_id)
        if family.user is None or client is None:
            return family.client_id
        return self.subject_for(client, family.user)

    def id_token(
        self,
        token: Mapping[str, Any],
        client: OAuthClient,
        family: GrantFamily,
        code: CodeRecord | None,
    ) -> str:
        """OIDC Core §2 / §3.1.3.6 ID token for ``family``'s user, audience ``client``."""
        assert family.user is not None, "ID tokens are only issued for a person"
        person = family.user
        alg = client.registration.id_token_signed_response_alg or self.settings.algorithms[0]
        now = _now_int(self.clock)
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": self.subject_for(client, person),
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "exp": now + self.settings.id_token_ttl,
            "auth_time": person.auth_time,
            "acr": person.acr_at(now),
            "at_hash": _half_hash(str(token["access_token"]), alg),
        }
        if person.amr:
            claims["amr"] = list(person.amr)
        if code is not None and code.nonce:
            claims["nonce"] = code.nonce
        if person.session_id:
            claims["sid"] = person.session_id
        return self.keys.sign(claims, algorithm=alg, typ="JWT")

    def refresh_view(self, record: RefreshTokenRecord, family: GrantFamily | None) -> TokenView:
        """``record`` as authlib sees it; ``family`` is its grant family as just read."""
        client = self.clients.get(record.client_id)
        subject = record.client_id
        if family is not None and family.user is not None and client is not None:
            subject = self.subject_for(client, family.user)
        return TokenView(
            kind="refresh_token",
            key=record.token_hash,
            client_id=record.client_id,
            family_id=record.family_id,
            scope=record.scope,
            subject=subject,
            issued_at=int(record.issued_at),
            expires_at=int(record.expires_at),
            revoked=record.revoked or record.rotated or family is None or family.revoked,
            now=_now_int(self.clock),
            extra={},
        )

    def find_token(self, token_string: str, hint: str | None) -> TokenView | None:
        """An access or refresh token of ours (RFC 7662 §2.1: the hint only orders the search)."""
        order = ["access_token", "refresh_token"]
        if hint == "refresh_token":
            order.reverse()
        for kind in order:
            view = (
                self._access_view(token_string)
                if kind == "access_token"
                else self._refresh_lookup(token_string)
            )
            if view is not None:
                return view
        return None

    def _refresh_lookup(self, token_string: str) -> TokenView | None:
        record = self.store.get_refresh_token(credential_hash(token_string))
        if record is None:
            return None
        return self.refresh_view(record, self.store.get_family(record.family_id))

    def _access_view(self, token_string: str) -> TokenView | None:
        if token_string.count(".") != 2:
            return None
        try:
            _, claims = self._decode_access_token(token_string, leeway=0)
        except InvalidToken:
            return None
        jti = str(claims["jti"])
        record = self.store.get_access_token(jti)
        extra: dict[str, Any] = {"aud": claims["aud"], "jti": jti}
        for name in ("acr", "auth_time", "act"):
            if name in claims:
                extra[name] = claims[name]
        return TokenView(
            kind="access_token",
            key=jti,
            client_id=str(claims["client_id"]),
            family_id=record.family_id if record else None,
            scope=str(claims.get("scope", "")),
            subject=str(claims["sub"]),
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
            revoked=self.store.is_revoked(jti),
            now=_now_int(self.clock),
            extra=extra,
        )

    def _decode_access_token(
        self, token: str, *, leeway: int | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims of an access token of ours, held to the same rules as at /api:
        a sealed person claim that does not open for its ``sub`` and ``client_id`` (tampered,
        moved between tokens) makes the whole token invalid (userinfo, introspection)."""
        header, claims = decode_access_token(
            token,
            keys=self.keys,
            issuer=self.settings.issuer,
            audience=self.settings.audience,
            algorithms=self.settings.algorithms,
            now=self.clock(),
            leeway=self.settings.leeway if leeway is None else leeway,
        )
        principal_from_claims(claims, self.person_keys)
        return header, claims

    def decode_id_token_hint(self, token: str) -> dict[str, Any] | None:
        """Claims of an ID token this provider issued (signature and iss; expiry tolerated)."""

        def resolve(obj: GuestProtocol) -> Key:
            kid = obj.headers().get("kid")
            key = self.keys.public_key(kid) if isinstance(kid, str) else None
            if key is None or key.alg != obj.headers().get("alg"):
                raise InvalidToken("kid")
            return key

        try:
            decoded = jwt.decode(token, resolve, algorithms=list(self.settings.algorithms))
        except (JoseError, InvalidToken, ValueError, TypeError):
            return None
        claims = dict(decoded.claims)
        if str(decoded.header.get("typ", "JWT")).lower() in ("at+jwt", "application/at+jwt"):
            return None
        if claims.get("iss") != self.settings.issuer or not isinstance(claims.get("aud"), str):
            return None
        return claims

    # --- error responses -------------------------------------------------------------------

    def _authorization_error(self, error: OAuth2Error) -> IdentityResponse:
        if error.redirect_uri:
            response: IdentityResponse = self.handle_error_response(None, error)
            return response
        return self._error_page(error)

    def _redirect_error(self, error: OAuth2Error, grant: Any) -> IdentityResponse:
        error.redirect_uri = grant.redirect_uri
        error.state = grant.request.payload.state
        response: IdentityResponse = self.handle_error_response(None, error)
        return response

    def _error_page(self, error: OAuth2Error) -> IdentityResponse:
        """RFC 6749 §4.1.2.1: without a verified redirect URI, tell the user, never redirect."""
        code = str(error.error)
        text = _ERROR_TEXT.get(code, _ERROR_TEXT["invalid_request"])
        page = (
            "<!doctype html><html lang='zh'><meta charset='utf-8'>"
            "<title>登录请求无效 / Invalid sign-in request</title>"
            f"<h1>登录请求无效</h1><p>{html.escape(text)}</p>"
            f"<p>error: <code>{html.escape(code)}</code></p></html>"
        )
        return IdentityResponse(
            400,
            page.encode(),
            (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")),
        )

    def _bearer_error(self, status: int, error: str | None) -> IdentityResponse:
        challenge = 'Bearer realm="tongban"'
        body: dict[str, str] = {}
        if error:
            challenge += f', error="{error}"'
            body["error"] = error
        return IdentityResponse(
            status,
            json.dumps(body).encode(),
            (("WWW-Authenticate", challenge), *JSON_HEADERS),
        )
