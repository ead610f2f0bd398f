"""The /api access-token verifier: claim checks, the verified-token cache, revocation."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from gateway.errors import Unauthenticated
from gateway.identity.keys import SigningKeys
from gateway.identity.verifier import JwtAccessTokenVerifier, decode_access_token

ISSUER = "https://idp.example"
AUDIENCE = "https://idp.example/api"
KEYS = SigningKeys.generate(("ES256",))


class FakeRevocationList:
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked = 0

    async def is_revoked(self, jti: str) -> bool:
        self.asked += 1
        return jti in self.revoked


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _token(clock: Clock, typ: str = "at+jwt", **changes: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "pairwise-sub",
        "client_id": "portal-qh",
        "scope": "openid services:call",
        "acr": "L2",
        "iat": int(clock.now),
        "exp": int(clock.now) + 300,
        "jti": secrets.token_hex(8),
        "act": {"sub": "agent-1", "role": "agent"},
        "roles": ["clerk"],
    }
    claims.update(changes)
    return KEYS.sign({k: v for k, v in claims.items() if v is not None}, algorithm="ES256", typ=typ)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def revocations() -> FakeRevocationList:
    return FakeRevocationList()


@pytest.fixture
def verifier(clock: Clock, revocations: FakeRevocationList) -> JwtAccessTokenVerifier:
    return JwtAccessTokenVerifier(
        keys=KEYS,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("ES256",),
        revocations=revocations,
        clock=clock,
        cache_size=2,
    )


async def test_claims_map_to_the_principal(verifier: JwtAccessTokenVerifier, clock: Clock) -> None:
    principal = await verifier.verify(_token(clock))
    assert principal.subject == "pairwise-sub"
    assert principal.level == "L2"
    assert principal.client_id == "portal-qh"
    assert principal.actor == "agent-1"
    assert principal.actor_role == "agent"
    assert principal.scopes == {"openid", "services:call"}
    assert principal.roles == {"clerk"}


@pytest.mark.parametrize(
    "changes",
    [
        {"iss": "https://other.example"},
        {"aud": "portal-qh"},
        {"exp": 1_800_000_000 - 31},
        {"iat": 1_800_000_000 + 3600},
        {"sub": None},
        {"jti": None},
        {"client_id": None},
        {"act": "agent-1"},
        {"roles": "clerk"},
        {"typ": "JWT"},
    ],
)
async def test_bad_tokens_are_refused_alike(
    verifier: JwtAccessTokenVerifier, clock: Clock, changes: dict[str, Any]
) -> None:
    typ = changes.pop("typ", "at+jwt")
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(_token(clock, typ=typ, **changes))
    assert info.value.detail == "The bearer token is not valid."


async def test_small_leeway_on_expiry(verifier: JwtAccessTokenVerifier, clock: Clock) -> None:
    token = _token(clock)
    clock.now += 300 + 29
    await verifier.verify(token)
    clock.now += 2
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)
    assert verifier.cached == 0


async def test_expired_tokens_leave_the_cache_without_being_presented_again(
    verifier: JwtAccessTokenVerifier, clock: Clock
) -> None:
    await verifier.verify(_token(clock))
    clock.now += 300 + 31  # past its expiry and the leeway; never presented again
    await verifier.verify(_token(clock))
    assert verifier.cached == 1


async def test_cache_is_bounded_and_never_skips_revocation(
    verifier: JwtAccessTokenVerifier, clock: Clock, revocations: FakeRevocationList
) -> None:
    tokens = [_token(clock) for _ in range(3)]
    for token in tokens:
        await verifier.verify(token)
    assert verifier.cached == 2
    await verifier.verify(tokens[-1])  # a cache hit still asks the revocation list
    assert revocations.asked == 4
    _, claims = decode_access_token(
        tokens[-1],
        keys=KEYS,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("ES256",),
        now=clock.now,
        leeway=0,
    )
    revocations.revoked.add(claims["jti"])
    with pytest.raises(Unauthenticated):
        await verifier.verify(tokens[-1])


async def test_machine_token_has_the_system_level(
    verifier: JwtAccessTokenVerifier, clock: Clock
) -> None:
    principal = await verifier.verify(_token(clock, acr=None, act=None, roles=None))
    assert principal.level == "system"
    assert principal.actor is None


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        JwtAccessTokenVerifier(
            keys=KEYS,
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=("ES256", "HS256"),
            revocations=FakeRevocationList(),
        )
