"""The OpenID Connect kind of ``UpstreamIdP``: the gateway as a relying party of a provincial OP.

Hand-written on joserfc (authlib's client does not raise on ``?error=``, and its httpx
integration warns on import):
- authentication request, OIDC Core §3.1.2.1, with ``state``, ``nonce`` and PKCE S256
  (RFC 7636 §4.2) and ``acr_values`` for step-up (§3.1.2.1);
- the callback: ``error=`` (RFC 6749 §4.1.2.1) and ``state`` are checked BEFORE any token request
  (RFC 9700 §4.7), and the redirect URI is per platform so a response cannot be replayed at
  another platform's callback (mix-up, RFC 9700 §4.4);
- token request, RFC 6749 §4.1.3, client_secret_basic, with the PKCE verifier;
- ID token validation, OIDC Core §3.1.3.7: signature with the platform's JWKS (kid required,
  algorithms pinned), ``iss``, ``aud`` contains our client id (``azp`` when several), ``exp`` /
  ``iat``, and ``nonce`` equal to the one this login sent (a replayed ID token fails here);
- a platform declared a staff directory (``staff:`` in idps.yaml) has its roles claim read
  (gateway/identity/staff.py); any other platform's roles are never looked at.

Must not: import aiohttp; log or keep the code, the tokens or the client secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, Key, KeySet

from gateway.identity.citizen import FederatedIdentity, MappingError, map_claims
from gateway.identity.identifiers import LinkKeyer
from gateway.identity.staff import as_staff
from gateway.identity.upstream import (
    AvailabilityCache,
    OidcIdpSettings,
    UpstreamError,
    UpstreamLogin,
)

log = structlog.get_logger("tongban.identity")

_METADATA_TTL = 300.0
_MAX_RESPONSE = 256 * 1024


class OidcUpstream:
    """One provincial OpenID Connect platform."""

    def __init__(
        self,
        platform: str,
        settings: OidcIdpSettings,
        http: httpx.AsyncClient,
        *,
        timeout: float = 3.0,
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
        linker: LinkKeyer | None = None,
    ) -> None:
        self._linker = linker
        self.platform = platform
        self.province = settings.province
        self.display_name = (settings.name.zh, settings.name.en)
        self.for_enterprises = False
        self.settings = settings
        self._http = http
        self._timeout = timeout
        self._leeway = leeway
        self._clock = clock
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._availability = AvailabilityCache(self._probe, clock)
        self._lock = asyncio.Lock()

    # --- metadata --------------------------------------------------------------------------

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, timeout=self._timeout)
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        if response.status_code != 200 or len(response.content) > _MAX_RESPONSE:
            raise UpstreamError("upstream_bad_metadata", unavailable=True)
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError("upstream_bad_metadata", unavailable=True) from None
        if not isinstance(data, dict):
            raise UpstreamError("upstream_bad_metadata", unavailable=True)
        return data

    async def metadata(self, *, refresh: bool = False) -> dict[str, Any]:
        """Discovery document (OIDC Discovery §4), cached; its issuer must be the configured one."""
        async with self._lock:
            fresh = self._clock() - self._fetched_at < _METADATA_TTL
            if self._metadata is not None and fresh and not refresh:
                return self._metadata
            issuer = self.settings.issuer
            data = await self._get_json(f"{issuer}/.well-known/openid-configuration")
            if data.get("issuer", "").rstrip("/") != issuer:
                raise UpstreamError("upstream_issuer_mismatch", unavailable=True)
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(name), str):
                    raise UpstreamError("upstream_bad_metadata", unavailable=True)
            jwks = await self._get_json(str(data["jwks_uri"]))
            try:
                self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError):
                raise UpstreamError("upstream_bad_jwks", unavailable=True) from None
            self._metadata = data
            self._fetched_at = self._clock()
            return data

    async def available(self) -> bool:
        return await self._availability()

    async def _probe(self) -> bool:
        try:
            # A real probe every few seconds: cached metadata says nothing about now.
            await self.metadata(refresh=True)
            ok = True
        except UpstreamError:
            ok = False
        return ok

    # --- the login ---------------------------------------------------------------------------

    async def start_login(self, login: UpstreamLogin) -> str:
        metadata = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": login.redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": login.state,
            "nonce": login.nonce,
            "code_challenge": login.code_challenge,
            "code_challenge_method": "S256",
        }
        if login.acr is not None and login.acr in self.settings.acr_values:
            params["acr_values"] = self.settings.acr_values[login.acr]
            params["prompt"] = "login"
        endpoint = str(metadata["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        # RFC 9700 §4.7 (authlib's client would not raise): error and state first; no token
        # request on either.
        if "error" in params:
            raise UpstreamError("upstream_refused")
        if params.get("state") != login.state:
            raise UpstreamError("state_mismatch")
        code = params.get("code")
        if not code:
            raise UpstreamError("code_missing")
        metadata = await self.metadata()
        try:
            response = await self._http.post(
                str(metadata["token_endpoint"]),
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": login.redirect_uri,
                    "code_verifier": login.code_verifier,
                },
                auth=(
                    self.settings.client_id,
                    self.settings.client_secret.get_secret_value(),
                ),
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        if response.status_code != 200 or len(response.content) > _MAX_RESPONSE:
            raise UpstreamError("token_request_refused")
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError("token_response_malformed") from None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str):
            raise UpstreamError("id_token_missing")
        claims = self.validate_id_token(id_token, login.nonce)
        try:
            identity = map_claims(
                self.platform,
                self.settings.claims,
                claims,
                keep_id_number=self.settings.keep_id_number,
                linker=self._linker,
            )
        except MappingError as exc:
            log.warning("upstream_claims_unusable", platform=self.platform, reason=str(exc))
            raise UpstreamError("claims_unusable") from None
        if self.settings.staff is not None:
            try:
                identity = as_staff(identity, self.settings.staff, claims)
            except MappingError:
                log.warning("upstream_claims_unusable", platform=self.platform, reason="no_role")
                raise UpstreamError("staff_role_missing") from None
        log.info("upstream_login_completed", platform=self.platform, level=identity.level)
        return identity

    def validate_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """OIDC Core §3.1.3.7 checks; raises ``UpstreamError`` naming the failed check."""
        keys = self._keys
        if keys is None:
            raise UpstreamError("upstream_bad_jwks")

        def resolve(obj: GuestProtocol) -> Key:
            header = obj.headers()
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise UpstreamError("id_token_no_kid")
            try:
                key = keys.get_by_kid(kid)
            except (ValueError, KeyError):
                raise UpstreamError("id_token_unknown_kid") from None
            if key.alg is not None and key.alg != header.get("alg"):
                raise UpstreamError("id_token_alg_mismatch")
            return key

        try:
            decoded = jwt.decode(id_token, resolve, algorithms=list(self.settings.algorithms))
        except UpstreamError:
            raise
        except (JoseError, ValueError, TypeError):
            raise UpstreamError("id_token_invalid") from None
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": self.settings.issuer},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError:
            raise UpstreamError("id_token_claims_invalid") from None
        claims = dict(decoded.claims)
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.settings.client_id not in audiences:
            raise UpstreamError("id_token_wrong_audience")
        if len(audiences) > 1 and claims.get("azp") != self.settings.client_id:
            raise UpstreamError("id_token_wrong_azp")
        if claims.get("nonce") != nonce:
            # A replayed ID token carries the nonce of another login.
            raise UpstreamError("nonce_mismatch")
        return claims
