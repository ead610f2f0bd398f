"""The access-token verifier's cache, keyed by the token's exact text: a token verified once
is refused again when it has expired, been revoked or been changed in any character."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from gateway.errors import Unauthenticated
from gateway.identity.keys import SigningKeys
from gateway.identity.verifier import JwtAccessTokenVerifier

ISSUER = "https://idp.example"
AUDIENCE = "https://idp.example/api"
KEYS = SigningKeys.generate(("ES256",))
OTHER_KEYS = SigningKeys.generate(("ES256",))
NOW = 1_800_000_000.0


class Revocations:
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked: list[str] = []

    async def is_revoked(self, jti: str) -> bool:
        self.asked.append(jti)
        return jti in self.revoked


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _token(keys: SigningKeys = KEYS, **changes: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "pairwise-sub",
        "client_id": "portal-qh",
        "scope": "openid services:call",
        "acr": "L2",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": secrets.token_hex(8),
    }
    claims.update(changes)
    return keys.sign(claims, algorithm="ES256", typ="at+jwt")


def _verifier(clock: Clock, revocations: Revocations, keys: Any = KEYS) -> JwtAccessTokenVerifier:
    return JwtAccessTokenVerifier(
        keys=keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("ES256",),
        revocations=revocations,
        clock=clock,
        cache_size=4,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations() -> Revocations:
    return Revocations()


async def test_an_expired_token_is_refused_after_a_cached_success(
    clock: Clock, revocations: Revocations
) -> None:
    verifier = _verifier(clock, revocations)
    token = _token()
    await verifier.verify(token)
    await verifier.verify(token)
    assert verifier.cached == 1
    clock.now = NOW + 300 + 29  # past its expiry, within the leeway: still valid
    await verifier.verify(token)
    clock.now += 2
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)
    assert verifier.cached == 0


async def test_a_revoked_token_is_refused_after_a_cached_success(
    clock: Clock, revocations: Revocations
) -> None:
    verifier = _verifier(clock, revocations)
    token = _token(jti="jti-revoked-later")
    await verifier.verify(token)
    await verifier.verify(token)
    assert revocations.asked == ["jti-revoked-later"] * 2, "asked on every call, cached or not"
    revocations.revoked.add("jti-revoked-later")
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)


@pytest.mark.parametrize("part", [0, 1, 2])
async def test_a_token_changed_in_any_part_is_refused_after_a_cached_success(
    clock: Clock, revocations: Revocations, part: int
) -> None:
    verifier = _verifier(clock, revocations)
    token = _token()
    await verifier.verify(token)
    pieces = token.split(".")
    # One character of the header, the claims or the signature changed.
    text = pieces[part]
    middle = len(text) // 2
    pieces[part] = text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]
    with pytest.raises(Unauthenticated):
        await verifier.verify(".".join(pieces))
    # Nor is anything around the cached text taken for it.
    for altered in (token + "A", token[:-1], " " + token, token.upper()):
        with pytest.raises(Unauthenticated):
            await verifier.verify(altered)
    assert (await verifier.verify(token)).subject == "pairwise-sub"


async def test_a_token_signed_with_another_key_is_refused_though_its_claims_were_cached(
    clock: Clock, revocations: Revocations
) -> None:
    verifier = _verifier(clock, revocations)
    jti = secrets.token_hex(8)
    await verifier.verify(_token(jti=jti))
    with pytest.raises(Unauthenticated):
        await verifier.verify(_token(OTHER_KEYS, jti=jti))


async def test_the_cache_keeps_at_most_its_size(clock: Clock, revocations: Revocations) -> None:
    verifier = _verifier(clock, revocations)
    tokens = [_token() for _ in range(10)]
    for token in tokens:
        await verifier.verify(token)
        assert verifier.cached <= 4
    assert verifier.cached == 4
    for token in tokens:  # each still verifies, cached or again
        assert (await verifier.verify(token)).client_id == "portal-qh"
