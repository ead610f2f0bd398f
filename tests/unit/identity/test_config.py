"""Provider settings and pairwise subjects (OIDC Core §8.1)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from pydantic import SecretStr, ValidationError

from gateway.identity.config import ProviderSettings, pairwise_subject

SECRET = SecretStr("k" * 32)


def test_pairwise_subject_is_the_specified_hmac() -> None:
    expected = base64.urlsafe_b64encode(
        hmac.new(b"k" * 32, b"portal.example|u-1", hashlib.sha256).digest()
    ).rstrip(b"=")
    assert pairwise_subject(SECRET, "portal.example", "u-1") == expected.decode()


def test_pairwise_subject_is_stable_per_sector_and_differs_across_sectors() -> None:
    a = pairwise_subject(SECRET, "a.example", "u-1")
    assert a == pairwise_subject(SECRET, "a.example", "u-1")
    assert a != pairwise_subject(SECRET, "b.example", "u-1")
    assert a != pairwise_subject(SECRET, "a.example", "u-2")
    assert "=" not in a
    assert "u-1" not in a


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"issuer": "http://idp.example"}, "https"),
        ({"issuer": "https://idp.example/"}, "must not end"),
        ({"issuer": "https://idp.example?x=1"}, "https"),
        ({"pairwise_secret": SecretStr("short")}, "32"),
        ({"algorithms": ("HS256",)}, "algorithms"),
        ({"authorization_code_ttl": 3600}, "authorization_code_ttl"),
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"issuer": "https://idp.example", "pairwise_secret": SECRET}
    data.update(changes)
    with pytest.raises(ValidationError, match=message):
        ProviderSettings.model_validate(data)


def test_audience_defaults_to_the_api_under_the_issuer() -> None:
    settings = ProviderSettings(issuer="https://idp.example", pairwise_secret=SECRET)
    assert settings.audience == "https://idp.example/api"
    assert "kkkk" not in repr(settings)
