"""Development-only bearer tokens: HMAC-signed, for `tongban demo` until the OIDC provider lands.

The secret is random per process, so a token never outlives the demo that printed it, and
`serve` refuses to enable this without an explicit ``--insecure-dev-tokens`` flag.

A dev token may name its ``person`` (Principal.person, the owner of its cases) as a plain
claim: unlike the provider's access tokens (gateway/identity/person_key.py seals it) these are
minted by the gateway process for a developer or a test, never handed to a portal, so there is
nobody to hide the key from; the HMAC still keeps anyone else from choosing it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable

from gateway.errors import Unauthenticated
from gateway.principal import Principal, TokenVerifier

_PREFIX = "dev."
_CACHE_SIZE = 1024
"""Verified tokens kept before the cache starts over."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DevTokenIssuer:
    """Issues and verifies development tokens; implements ``TokenVerifier``."""

    def __init__(
        self, secret: bytes | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        # Tokens already verified, with their expiry: a portal sends the same token with every
        # call, and its signature and claims cannot change (the access-token verifier keeps
        # the same kind of cache). Dev tokens cannot be revoked; expiry is checked every time.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(
        self,
        subject: str,
        level: str,
        *,
        client_id: str = "dev-portal",
        actor: str | None = None,
        actor_role: str | None = None,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = ("openid", "services:call"),
        ttl: float = 12 * 3600,
        person: str | None = None,
        enterprise: str | None = None,
    ) -> str:
        claims: dict[str, object] = {
            "sub": subject,
            "acr": level,
            "client_id": client_id,
            "act": actor,
            "act_role": actor_role,
            "roles": sorted(roles),
            "scope": " ".join(scopes),
            "exp": int(self._clock() + ttl),
        }
        if person is not None:
            claims["person"] = person
        if enterprise is not None:
            claims["enterprise"] = enterprise
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{_PREFIX}{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())

    async def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            if known[1] < self._clock():
                raise Unauthenticated("The bearer token has expired.")
            return known[0]
        principal, expires = self._verify_signed(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def _verify_signed(self, token: str) -> tuple[Principal, float]:
        if not token.startswith(_PREFIX) or token.count(".") != 2:
            raise Unauthenticated("The bearer token is not valid.")
        body, signature = token[len(_PREFIX) :].split(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            raise Unauthenticated("The bearer token is not valid.")
        try:
            claims = json.loads(_unb64(body))
        except ValueError:
            raise Unauthenticated("The bearer token is not valid.") from None
        if claims["exp"] < self._clock():
            raise Unauthenticated("The bearer token has expired.")
        person = claims.get("person")
        enterprise = claims.get("enterprise")
        if any(v is not None and not isinstance(v, str) for v in (person, enterprise)):
            raise Unauthenticated("The bearer token is not valid.")
        principal = Principal(
            subject=claims["sub"],
            level=claims["acr"],
            client_id=claims["client_id"],
            actor=claims.get("act"),
            actor_role=claims.get("act_role"),
            roles=frozenset(claims.get("roles", ())),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            person=person,
            enterprise=enterprise,
        )
        return principal, claims["exp"]


class WithDevTokens:
    """Development tokens beside a real verifier (demo, or serve --insecure-dev-tokens)."""

    def __init__(self, dev: DevTokenIssuer, real: TokenVerifier) -> None:
        self._dev = dev
        self._real = real

    async def verify(self, token: str) -> Principal:
        if token.startswith(_PREFIX):
            return await self._dev.verify(token)
        return await self._real.verify(token)
