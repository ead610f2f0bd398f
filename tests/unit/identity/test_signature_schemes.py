"""Signature schemes as named plug-ins, and the reversible legacy cipher checked against vectors
computed here independently (and shown to be no proof of who signed)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.identity import signing
from gateway.identity.signing import (
    NonceCache,
    ParameterScheme,
    SignatureError,
    SignatureSettings,
    format_time,
    parse_time,
    scheme_names,
    sign_request,
    verify_request,
)

LEGACY = SignatureSettings(scheme="xor-base64-md5", code_param="appmark")
TIME = "20260101120000"


def legacy_sign_by_hand(secret: str, when: str) -> str:
    """The scheme as described: uppercase hex MD5 of the secret, XOR the time string repeated
    to its length, Base64. Written with integers instead of the module's byte loop."""
    plain = hashlib.md5(secret.encode()).hexdigest().upper().encode()
    key = (when.encode() * (len(plain) // len(when) + 1))[: len(plain)]
    mixed = int.from_bytes(plain, "big") ^ int.from_bytes(key, "big")
    return base64.b64encode(mixed.to_bytes(len(plain), "big")).decode()


def test_a_known_vector() -> None:
    # md5("") = d41d8cd98f00b204e9800998ecf8427e, a published constant; XOR with the time by hand.
    plain = "D41D8CD98F00B204E9800998ECF8427E"
    key = (TIME * 3)[: len(plain)]
    expected = base64.b64encode(
        bytes(ord(p) ^ ord(k) for p, k in zip(plain, key, strict=True))
    ).decode()
    assert signing.xor_base64_md5("app", "", TIME) == expected
    assert expected == legacy_sign_by_hand("", TIME)


@given(secret=st.text(min_size=1, max_size=40), stamp=st.integers(1_600_000_000, 2_000_000_000))
def test_the_cipher_matches_the_description(secret: str, stamp: int) -> None:
    when = format_time(stamp)
    assert signing.xor_base64_md5("any-app", secret, when) == legacy_sign_by_hand(secret, when)


def test_one_sign_gives_away_what_signs_everything() -> None:
    # Why the gateway treats this scheme as a shared-secret transport, never as proof.
    seen = signing.xor_base64_md5("app", "the-shared-secret", TIME)
    digest = bytes(b ^ TIME.encode()[i % len(TIME)] for i, b in enumerate(base64.b64decode(seen)))
    assert digest.decode() == hashlib.md5(b"the-shared-secret").hexdigest().upper()
    later = "20260102090000"
    forged = base64.b64encode(
        bytes(b ^ later.encode()[i % len(later)] for i, b in enumerate(digest))
    ).decode()
    assert forged == signing.xor_base64_md5("app", "the-shared-secret", later)
    assert signing.BUILT_IN_SCHEMES["xor-base64-md5"].reversible


def test_the_legacy_scheme_is_verified_with_the_gateways_own_replay_controls() -> None:
    now = parse_time(TIME)
    assert now is not None
    params, headers = sign_request(
        LEGACY, "nx-app", "secret-0001", method="POST", path="/", params={}, now=now
    )
    assert params["sign"] == legacy_sign_by_hand("secret-0001", TIME)
    nonces = NonceCache(600, clock=lambda: now)

    def verify(at: float, secret: str = "secret-0001") -> str:
        return verify_request(
            LEGACY,
            lambda code: secret if code == "nx-app" else None,
            method="POST",
            path="/",
            params=params,
            headers=headers,
            now=at,
            nonces=nonces,
            operation="ticketValidation",
            argument="T-1",
        )

    assert verify(now) == "nx-app"
    for at, secret, reason in (
        (now, "secret-0001", "request_replayed"),
        (now + 3600, "secret-0001", "timestamp_out_of_window"),
        (now + 1, "another-secret", "signature_invalid"),
    ):
        with pytest.raises(SignatureError) as refused:
            verify(at, secret)
        assert refused.value.reason == reason


def test_an_unknown_scheme_is_refused_with_the_registered_names() -> None:
    with pytest.raises(ValidationError) as refused:
        SignatureSettings(scheme="des-legacy")
    message = str(refused.value)
    assert "no signature scheme 'des-legacy'" in message
    assert "xor-base64-md5" in message
    assert "hmac-sha256" in message


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ParameterScheme]:
    scheme = ParameterScheme("sha1-upper", lambda code, secret, when: f"{code}:{when}".upper())
    entry = SimpleNamespace(name="sha1-upper", load=lambda: scheme)

    def found(group: str) -> list[SimpleNamespace]:
        return [entry] if group == signing.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(signing, "entry_points", found)
    signing._plugins.cache_clear()
    yield scheme
    signing._plugins.cache_clear()


def test_a_plugin_scheme_is_found_by_its_name(plugin: ParameterScheme) -> None:
    assert "sha1-upper" in scheme_names()
    settings = SignatureSettings(scheme="sha1-upper")
    params, _ = sign_request(
        settings, "app", "s", method="POST", path="/", params={}, now=parse_time(TIME) or 0
    )
    assert params["sign"] == f"APP:{TIME}"
