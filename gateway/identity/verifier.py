"""Local validation of the provider's JWT access tokens for /api/* (RFC 9068 §4, RFC 6750).

Checks, in order: size, header ``typ`` = at+jwt (RFC 9068 §2.1), ``alg`` in the configured list
only (so ``none`` and HS256-with-the-public-key are refused, RFC 8725 §3.1), a known ``kid``
whose key matches the ``alg``, the signature, then ``iss``, ``aud``, ``exp`` / ``iat`` with a
small leeway, the presence of ``sub``, ``jti`` and ``client_id``, the sealed person claim
(``tb_pk``, gateway/identity/person_key.py) when present, and finally the revocation list.
Every failure is the same ``Unauthenticated`` for the caller; the reason is only logged.

Verified tokens are cached (bounded, keyed by SHA-256 of the token, dropped at ``exp``) because
an ES256 verification costs ~160 µs; the revocation check is never cached. A key
retired while a token is cached keeps that token valid until its ``exp`` (minutes).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, Key

from gateway.errors import Unauthenticated
from gateway.identity.person_key import ENTERPRISE_AAD, PERSON_CLAIM, PersonKeys, SealError
from gateway.identity.store import IdentityStore
from gateway.identity.subject_keys import ENTERPRISE_CLAIM
from gateway.principal import Principal

log = structlog.get_logger("tongban.identity")

MAX_TOKEN_LENGTH = 8192
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MACHINE_LEVEL = "system"
"""Principal.level of a client-credentials token: no person, so no identity level at all."""


class InvalidToken(Exception):
    """Internal: why a token was refused (logged, never shown)."""


class VerificationKeys(Protocol):
    def public_key(self, kid: str) -> Key | None: ...


class RevocationList(Protocol):
    async def is_revoked(self, jti: str) -> bool: ...


class StoreRevocationList:
    """Revocation answers from the provider's own store: asked on the loop when it answers in
    microseconds, from a worker thread when it waits on the network (Redis)."""

    def __init__(self, store: IdentityStore) -> None:
        self._store = store

    async def is_revoked(self, jti: str) -> bool:
        if self._store.blocking:
            return await asyncio.to_thread(self._store.is_revoked, jti)
        return self._store.is_revoked(jti)


def decode_access_token(
    token: str,
    *,
    keys: VerificationKeys,
    issuer: str,
    audience: str,
    algorithms: Collection[str],
    now: float,
    leeway: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a valid access token; raises ``InvalidToken`` otherwise."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("size")

    def resolve(obj: GuestProtocol) -> Key:
        header = obj.headers()
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("no kid")
        key = keys.public_key(kid)
        if key is None:
            raise InvalidToken("unknown kid")
        if key.alg != header.get("alg"):
            raise InvalidToken("alg does not match the key")
        return key

    try:
        decoded = jwt.decode(token, resolve, algorithms=list(algorithms))
    except (JoseError, ValueError, TypeError) as exc:
        raise InvalidToken(type(exc).__name__) from None
    header = dict(decoded.header)
    if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
        raise InvalidToken("typ")
    registry = jwt.JWTClaimsRegistry(
        now=int(now),
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        jti={"essential": True},
        client_id={"essential": True},
    )
    try:
        registry.validate(decoded.claims)
    except JoseError as exc:
        raise InvalidToken(type(exc).__name__) from None
    return header, dict(decoded.claims)


def principal_from_claims(
    claims: Mapping[str, Any], persons: PersonKeys | None = None
) -> Principal:
    """RFC 9068 claims → Principal; raises ``InvalidToken`` on a malformed claim.

    A sealed person claim must open with ``persons`` for this ``sub`` and ``client_id``: a
    token carrying one that does not (tampered, moved, or no key to open it) is refused, never
    taken as person-less.
    """
    scope = claims.get("scope", "")
    roles = claims.get("roles", [])
    act = claims.get("act")
    level = claims.get("acr", MACHINE_LEVEL)
    if not isinstance(scope, str) or not isinstance(level, str):
        raise InvalidToken("claim types")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidToken("roles")
    actor = actor_role = None
    if act is not None:
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
            raise InvalidToken("act")
        actor = act["sub"]
        role = act.get("role")
        actor_role = role if isinstance(role, str) else None
    subject, client_id = str(claims["sub"]), str(claims["client_id"])
    person = None
    sealed = claims.get(PERSON_CLAIM)
    if sealed is not None:
        if persons is None or not isinstance(sealed, str):
            raise InvalidToken("person claim")
        try:
            person = persons.open(sealed, subject=subject, client_id=client_id)
        except SealError:
            raise InvalidToken("person claim") from None
    enterprise = None
    sealed_enterprise = claims.get(ENTERPRISE_CLAIM)
    if sealed_enterprise is not None:
        if persons is None or not isinstance(sealed_enterprise, str):
            raise InvalidToken("enterprise claim")
        try:
            enterprise = persons.open(
                sealed_enterprise, subject=subject, client_id=client_id, label=ENTERPRISE_AAD
            )
        except SealError:
            raise InvalidToken("enterprise claim") from None
    return Principal(
        subject=subject,
        level=level,
        client_id=client_id,
        actor=actor,
        actor_role=actor_role,
        scopes=frozenset(scope.split()),
        roles=frozenset(roles),
        person=person,
        enterprise=enterprise,
    )


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    jti: str
    exp: float


class JwtAccessTokenVerifier:
    """Implements ``gateway.principal.TokenVerifier`` for the provider's access tokens."""

    def __init__(
        self,
        *,
        keys: VerificationKeys,
        issuer: str,
        audience: str,
        algorithms: Collection[str],
        revocations: RevocationList,
        persons: PersonKeys | None = None,
        clock: Callable[[], float] = time.time,
        leeway: int = 30,
        cache_size: int = 4096,
    ) -> None:
        if not algorithms or any(alg.upper().startswith(("HS", "NONE")) for alg in algorithms):
            raise ValueError("access tokens are verified with asymmetric algorithms only")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = tuple(algorithms)
        self._revocations = revocations
        self._persons = persons
        self._clock = clock
        self._leeway = leeway
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        verified = self._cache.get(digest)
        if verified is not None and verified.exp <= now - self._leeway:
            del self._cache[digest]
            verified = None
        if verified is None:
            verified = self._verify_signed(token, now)
            self._remember(digest, verified, now)
        else:
            self._cache.move_to_end(digest)
        if await self._revocations.is_revoked(verified.jti):
            log.info("access_token_refused", reason="revoked")
            raise Unauthenticated("The bearer token is not valid.")
        return verified.principal

    def _verify_signed(self, token: str, now: float) -> _Verified:
        try:
            _, claims = decode_access_token(
                token,
                keys=self._keys,
                issuer=self._issuer,
                audience=self._audience,
                algorithms=self._algorithms,
                now=now,
                leeway=self._leeway,
            )
            principal = principal_from_claims(claims, self._persons)
        except InvalidToken as exc:
            log.info("access_token_refused", reason=str(exc))
            raise Unauthenticated("The bearer token is not valid.") from None
        return _Verified(principal, str(claims["jti"]), float(claims["exp"]))

    def _remember(self, digest: bytes, verified: _Verified, now: float) -> None:
        self._cache[digest] = verified
        # Least recently used first: over the bound, or expired (a token nobody presents again
        # would otherwise stay until 4096 newer ones push it out: the cache would only ever
        # grow to its bound, however few tokens are alive).
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if len(self._cache) <= self._cache_size and oldest.exp > now - self._leeway:
                break
            self._cache.popitem(last=False)

    @property
    def cached(self) -> int:
        """How many verified tokens are cached (for tests and metrics)."""
        return len(self._cache)
