"""Signing keys: the key file (0600), rotation that keeps old tokens verifiable, the public JWKS."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from joserfc import jwt

from gateway.identity.keys import KeyFileError, SigningKeys


def test_load_or_create_writes_a_private_file_and_loads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "jwks.json"
    created = SigningKeys.load_or_create(path, ("ES256",))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKeys.load_or_create(path, ("ES256",))
    assert loaded.public_jwks() == created.public_jwks()
    assert loaded.active_kid("ES256") == created.active_kid("ES256")


def test_a_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    SigningKeys.load_or_create(path, ("ES256",))
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="0600"):
        SigningKeys.load_or_create(path)


def test_a_corrupt_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"jwk": {"kty": "EC", "d": "secret-material"}}]}')
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        SigningKeys.load_or_create(path)
    assert "secret-material" not in str(info.value)


def test_public_jwks_has_no_private_members() -> None:
    keys = SigningKeys.generate(("ES256",))
    (jwk,) = keys.public_jwks()["keys"]
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}


def test_rotation_signs_with_the_new_key_and_still_verifies_the_old(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    keys = SigningKeys.load_or_create(path, ("ES256",))
    old_kid = keys.active_kid("ES256")
    old_token = keys.sign({"sub": "a"}, algorithm="ES256")
    new_kid = keys.rotate("ES256")
    assert new_kid != old_kid
    assert keys.active_kid("ES256") == new_kid
    new_token = keys.sign({"sub": "b"}, algorithm="ES256")
    for token, kid in ((old_token, old_kid), (new_token, new_kid)):
        key = keys.public_key(kid)
        assert key is not None
        assert jwt.decode(token, key, algorithms=["ES256"]).claims["sub"] in ("a", "b")
    # the rotation survived a restart
    reloaded = SigningKeys.load_or_create(path, ("ES256",))
    assert reloaded.active_kid("ES256") == new_kid
    assert {k["kid"] for k in reloaded.public_jwks()["keys"]} == {old_kid, new_kid}


def test_retire_removes_an_old_key_but_never_the_active_one() -> None:
    keys = SigningKeys.generate(("ES256",))
    old_kid = keys.active_kid("ES256")
    keys.rotate("ES256")
    with pytest.raises(ValueError, match="rotate first"):
        keys.retire(keys.active_kid("ES256"))
    keys.retire(old_kid)
    assert keys.public_key(old_kid) is None


def test_adding_an_algorithm_keeps_the_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    es = SigningKeys.load_or_create(path, ("ES256",)).active_kid("ES256")
    both = SigningKeys.load_or_create(path, ("ES256", "RS256"))
    assert both.active_kid("ES256") == es
    token = both.sign({"x": 1}, algorithm="RS256")
    header = jwt.decode(token, both.public_key_set(), algorithms=["RS256"]).header
    assert header["kid"] == both.active_kid("RS256")
