"""The legal-person kind of ``UpstreamIdP``: a signed assertion (docs/identity-platforms.md,
"Legal persons").

The enterprise platform signs in the agent (经办人) and POSTs a JWS assertion (RFC 7515, JWT
claims RFC 7519) back to the gateway's callback; the web layer parks the post and the browser
comes back by GET (SameSite=Lax cookies then bind it to the login). Checks, in order:
signature with the platform's JWKS (algorithms pinned, ``kid`` required), ``iss``, ``aud`` = the
gateway's id at the platform (an assertion for another audience is refused), ``exp`` / ``iat``
(at most ``max_age`` old), ``state`` = this login's state (an assertion of another login is
refused), and a one-time ``jti`` (replay cache). Then the declarative mapping: credit code
(GB 32100 checked), organisation type → applicant type, company name, legal representative, the
agent and the level on the platform's scale (Zhejiang ``realLevel`` runs backwards).

Must not: import aiohttp; log the assertion or personal data.
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
from gateway.identity.signing import NonceCache
from gateway.identity.upstream import AvailabilityCache, UpstreamError, UpstreamLogin
from gateway.identity.upstream_kinds import LegalPersonIdpSettings

log = structlog.get_logger("tongban.identity")

ASSERTION_PARAM = "assertion"
MAX_ASSERTION = 16 * 1024
_KEYS_TTL = 300.0


class LegalPersonUpstream:
    """One legal-person platform."""

    def __init__(
        self,
        platform: str,
        settings: LegalPersonIdpSettings,
        http: httpx.AsyncClient,
        *,
        timeout: float = 3.0,
        leeway: int = 30,
        linker: LinkKeyer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.platform = platform
        self.province = settings.province
        self.display_name = (settings.name.zh, settings.name.en)
        self.for_enterprises = True
        self.settings = settings
        self._http = http
        self._timeout = timeout
        self._leeway = leeway
        self._linker = linker
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._availability = AvailabilityCache(self._probe, clock)
        self._lock = asyncio.Lock()
        self._seen = NonceCache(2 * settings.max_age, clock=clock)

    async def keys(self, *, refresh: bool = False) -> KeySet:
        async with self._lock:
            fresh = self._clock() - self._fetched_at < _KEYS_TTL
            if self._keys is not None and fresh and not refresh:
                return self._keys
            try:
                response = await self._http.get(self.settings.jwks_uri, timeout=self._timeout)
            except httpx.HTTPError:
                raise UpstreamError("upstream_unreachable", unavailable=True) from None
            if response.status_code != 200:
                raise UpstreamError("upstream_unreachable", unavailable=True)
            try:
                self._keys = KeySet.import_key_set(response.json())
            except (JoseError, ValueError, TypeError, KeyError):
                raise UpstreamError("upstream_bad_jwks", unavailable=True) from None
            self._fetched_at = self._clock()
            return self._keys

    async def available(self) -> bool:
        return await self._availability()

    async def _probe(self) -> bool:
        try:
            await self.keys(refresh=True)
            ok = True
        except UpstreamError:
            ok = False
        return ok

    async def start_login(self, login: UpstreamLogin) -> str:
        query = urlencode(
            {"appcode": self.settings.app_code, "return": login.redirect_uri, "state": login.state}
        )
        url = self.settings.login_url
        return f"{url}{'&' if '?' in url else '?'}{query}"

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        if params.get("state") != login.state:
            raise UpstreamError("state_mismatch")
        assertion = params.get(ASSERTION_PARAM, "")
        if not assertion or len(assertion) > MAX_ASSERTION:
            raise UpstreamError("assertion_missing")
        claims = self.validate(assertion, await self.keys(), login.state)
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
        log.info("upstream_login_completed", platform=self.platform, level=identity.level)
        return identity

    def validate(self, assertion: str, keys: KeySet, state: str) -> dict[str, Any]:
        """The checks of the module docstring; ``UpstreamError`` names the failed one."""

        def resolve(obj: GuestProtocol) -> Key:
            kid = obj.headers().get("kid")
            if not isinstance(kid, str):
                raise UpstreamError("assertion_no_kid")
            try:
                return keys.get_by_kid(kid)
            except (ValueError, KeyError):
                raise UpstreamError("assertion_unknown_kid") from None

        try:
            decoded = jwt.decode(assertion, resolve, algorithms=list(self.settings.algorithms))
        except UpstreamError:
            raise
        except (JoseError, ValueError, TypeError):
            raise UpstreamError("assertion_signature_invalid") from None
        now = int(self._clock())
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=self._leeway,
            iss={"essential": True, "value": self.settings.issuer},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError:
            raise UpstreamError("assertion_claims_invalid") from None
        claims = dict(decoded.claims)
        aud = claims.get("aud")
        if self.settings.audience not in (aud if isinstance(aud, list) else [aud]):
            raise UpstreamError("assertion_wrong_audience")
        if now - int(claims["iat"]) > self.settings.max_age + self._leeway:
            raise UpstreamError("assertion_expired")
        if claims.get("state") != state:
            raise UpstreamError("assertion_for_another_login")
        if not self._seen.first_use(f"{claims['iss']}|{claims['jti']}"):
            raise UpstreamError("assertion_replayed")
        return claims
