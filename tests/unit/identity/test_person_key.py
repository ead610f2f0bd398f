"""The person key and its sealed access-token claim: derivation, sealing, and the verifier's use."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from pydantic import SecretStr

from gateway.errors import Unauthenticated
from gateway.identity.authn import AuthenticatedUser, FakeAuthenticator
from gateway.identity.clients import ClientRegistration, ClientRegistry
from gateway.identity.config import ProviderSettings, pairwise_subject
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.keys import SigningKeys
from gateway.identity.person_key import PERSON_CLAIM, PersonKeys, SealError
from gateway.identity.provider import OpenIDProvider
from gateway.identity.store import GrantFamily, MemoryIdentityStore
from gateway.identity.verifier import JwtAccessTokenVerifier, StoreRevocationList

SECRET = SecretStr("pairwise-secret-for-person-key-tests-0123")
KEYS = SigningKeys.generate(("ES256",))
LOCAL_ID = "person:link-key-of-su-lanxin"
QH, SX, SYSTEM = "portal-qh", "portal-sx", "system-61"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the key and the seal -------------------------------------------------------------------


def test_the_person_key_is_stable_keyed_and_not_a_pairwise_subject() -> None:
    keys = PersonKeys(SECRET)
    key = keys.person_key(LOCAL_ID)
    assert key == PersonKeys(SECRET).person_key(LOCAL_ID), "every instance derives the same"
    assert key != keys.person_key("person:someone-else")
    assert key != PersonKeys(SecretStr("another-deployment-secret-0123456789")).person_key(LOCAL_ID)
    assert LOCAL_ID not in key
    # Its own label: not the pairwise HMAC under the same secret, whatever the sector.
    for sector in ("", "portal-qh.example", LOCAL_ID):
        assert key != pairwise_subject(SECRET, sector, LOCAL_ID)
    assert repr(keys) == "PersonKeys(<derived keys>)"


def test_a_sealed_claim_opens_for_its_sub_and_client_only() -> None:
    keys = PersonKeys(SECRET)
    person = keys.person_key(LOCAL_ID)
    sealed = keys.seal(person, subject="sub-a", client_id=QH)
    assert person not in sealed
    assert keys.open(sealed, subject="sub-a", client_id=QH) == person
    for subject, client_id in (("sub-b", QH), ("sub-a", SX), ("", "sub-a" + QH)):
        with pytest.raises(SealError):
            keys.open(sealed, subject=subject, client_id=client_id)
    with pytest.raises(SealError):
        PersonKeys(SecretStr("another-deployment-secret-0123456789")).open(
            sealed, subject="sub-a", client_id=QH
        )


def test_two_seals_of_one_person_share_nothing_a_portal_could_match() -> None:
    keys = PersonKeys(SECRET)
    person = keys.person_key(LOCAL_ID)
    first = keys.seal(person, subject="sub-a", client_id=QH)
    second = keys.seal(person, subject="sub-a", client_id=QH)
    assert first != second
    assert _unb64(first)[:12] != _unb64(second)[:12], "a fresh nonce each time"
    assert _unb64(first)[12:] != _unb64(second)[12:]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),  # the tag
        lambda raw: raw[:12] + bytes([raw[12] ^ 1]) + raw[13:],  # the ciphertext
        lambda raw: bytes([raw[0] ^ 1]) + raw[1:],  # the nonce
        lambda raw: raw[:28],  # truncated to nonce + tag
        lambda raw: raw + b"\x00",
    ],
)
def test_a_tampered_seal_does_not_open(tamper: Any) -> None:
    keys = PersonKeys(SECRET)
    sealed = keys.seal(keys.person_key(LOCAL_ID), subject="sub-a", client_id=QH)
    with pytest.raises(SealError):
        keys.open(_b64(tamper(_unb64(sealed))), subject="sub-a", client_id=QH)


@pytest.mark.parametrize("garbage", ["", "not base64 !", "x" * 300, "AAAA", "é"])
def test_garbage_does_not_open(garbage: str) -> None:
    with pytest.raises(SealError):
        PersonKeys(SECRET).open(garbage, subject="sub-a", client_id=QH)


# --- through the provider and the verifier --------------------------------------------------


def _provider() -> OpenIDProvider:
    clients = [
        ClientRegistration(
            client_id=client_id,
            type="public",
            redirect_uris=(f"https://{client_id}.example/cb",),
            scopes=("openid", "services:call"),
        )
        for client_id in (QH, SX)
    ]
    clients.append(
        ClientRegistration(
            client_id=SYSTEM,
            type="confidential",
            client_secret=SecretStr("system-61-secret-0123456789"),
            grant_types=("client_credentials",),
            scopes=("services:call",),
        )
    )
    return OpenIDProvider(
        ProviderSettings(issuer="https://gw.example", pairwise_secret=SECRET),
        ClientRegistry(clients),
        KEYS,
        MemoryIdentityStore(),
        FakeAuthenticator(),
    )


def _access_token(
    provider: OpenIDProvider, client_id: str, user: AuthenticatedUser | None = None
) -> str:
    client = provider.clients[client_id]
    family = None
    if user is not None:
        now = time.time()
        family = GrantFamily("f-" + client_id, client_id, user, "openid", now, now + 3600)
        provider.store.put_family(family)
    token = provider.generate_token(
        "authorization_code" if user else "client_credentials",
        client,
        user=family,
        scope="openid services:call",
    )
    return str(token["access_token"])


def _claims(token: str) -> dict[str, Any]:
    """What the portal reads in its token (RFC 9068 tokens are not encrypted)."""
    claims: dict[str, Any] = json.loads(_unb64(token.split(".")[1]))
    return claims


def _user(local_id: str = LOCAL_ID) -> AuthenticatedUser:
    return AuthenticatedUser(local_id, "L2", int(time.time()), session_id="sid-1")


async def test_two_portals_tokens_have_one_owner_and_two_subjects() -> None:
    provider = _provider()
    verifier = provider.access_token_verifier()
    at_qh = await verifier.verify(_access_token(provider, QH, _user()))
    at_sx = await verifier.verify(_access_token(provider, SX, _user()))
    assert at_qh.subject != at_sx.subject, "pairwise subjects per portal (OIDC Core §8.1)"
    assert at_qh.person == at_sx.person == provider.person_keys.person_key(LOCAL_ID)
    assert at_qh.owner == at_sx.owner == at_qh.person
    assert at_qh.owner_keys == (at_qh.person, at_qh.subject)
    someone_else = await verifier.verify(_access_token(provider, QH, _user("person:other")))
    assert someone_else.owner != at_qh.owner


async def test_what_a_portal_reads_in_its_tokens_never_matches_across_portals() -> None:
    provider = _provider()
    qh = [_claims(_access_token(provider, QH, _user())) for _ in range(2)]
    sx = _claims(_access_token(provider, SX, _user()))
    person = provider.person_keys.person_key(LOCAL_ID)
    seen = [c[PERSON_CLAIM] for c in (*qh, sx)]
    assert len(set(seen)) == 3, "a fresh ciphertext per token"
    for claims in (*qh, sx):
        assert person not in str(claims)
        assert LOCAL_ID not in str(claims)


async def test_a_machine_token_has_no_person_and_owns_as_its_subject() -> None:
    provider = _provider()
    token = _access_token(provider, SYSTEM)
    assert PERSON_CLAIM not in _claims(token)
    principal = await provider.access_token_verifier().verify(token)
    assert principal.person is None
    assert principal.owner == principal.subject == SYSTEM
    assert principal.owner_keys == (SYSTEM,)


def _resigned(token: str, **changes: Any) -> str:
    claims = {**_claims(token), **changes}
    return KEYS.sign(claims, algorithm="ES256", typ="at+jwt")


async def test_a_token_whose_person_claim_does_not_open_is_refused() -> None:
    provider = _provider()
    verifier = provider.access_token_verifier()
    token = _access_token(provider, QH, _user())
    other = _claims(_access_token(provider, SX, _user("person:other")))
    sealed = _claims(token)[PERSON_CLAIM]
    flipped = _unb64(sealed)
    flipped = flipped[:-1] + bytes([flipped[-1] ^ 1])
    refused = [
        _resigned(token, **{PERSON_CLAIM: _b64(flipped)}),
        _resigned(token, **{PERSON_CLAIM: other[PERSON_CLAIM]}),  # moved from another token
        _resigned(token, sub=other["sub"]),  # the claim is bound to the sub it was sealed for
        _resigned(token, client_id=SX),  # and to the client
        _resigned(token, **{PERSON_CLAIM: 42}),
    ]
    for bad in refused:
        with pytest.raises(Unauthenticated):
            await verifier.verify(bad)
    assert verifier.cached == 0
    # Signed by the provider's key but verified without the person key: refused, not ownerless.
    blind = JwtAccessTokenVerifier(
        keys=KEYS,
        issuer=provider.settings.issuer,
        audience=provider.settings.audience,
        algorithms=("ES256",),
        revocations=StoreRevocationList(provider.store),
    )
    with pytest.raises(Unauthenticated):
        await blind.verify(token)
    assert (await verifier.verify(token)).person is not None


async def test_introspection_and_userinfo_do_not_release_the_person_key() -> None:
    provider = _provider()
    token = _access_token(provider, QH, _user())
    view = provider.find_token(token, "access_token")
    assert view is not None
    assert PERSON_CLAIM not in view.extra
    assert provider.person_keys.person_key(LOCAL_ID) not in repr(view)


# --- dev tokens ------------------------------------------------------------------------------


async def test_dev_tokens_carry_a_plain_person_under_their_hmac() -> None:
    issuer = DevTokenIssuer(b"d" * 32)
    plain = await issuer.verify(issuer.issue("sub-1", "L2"))
    assert plain.person is None
    assert plain.owner == "sub-1"
    with_person = await issuer.verify(issuer.issue("sub-2", "L2", person="pk-1"))
    assert with_person.person == with_person.owner == "pk-1"
    body, signature = issuer.issue("sub-2", "L2", person="pk-1")[4:].split(".")
    forged = body.replace(body[-4:], "AAAA")
    with pytest.raises(Unauthenticated):
        await issuer.verify(f"dev.{forged}.{signature}")
