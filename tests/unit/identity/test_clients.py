"""Client registrations: the rules configuration must follow, and the authlib view of them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from gateway.identity.clients import ClientRegistration, ClientRegistry, OAuthClient


def _portal(**changes: Any) -> ClientRegistration:
    data: dict[str, Any] = {
        "client_id": "portal-qh",
        "type": "public",
        "redirect_uris": ("https://portal.example/cb",),
    }
    data.update(changes)
    return ClientRegistration.model_validate(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"client_secret": SecretStr("x" * 20)}, "public client has no client_secret"),
        ({"type": "confidential"}, "needs a client_secret"),
        ({"grant_types": ("client_credentials",)}, "confidential clients only"),
        ({"redirect_uris": ()}, "needs at least one redirect URI"),
        ({"redirect_uris": ("http://portal.example/cb",)}, "must be https"),
        ({"redirect_uris": ("https://portal.example/cb#x",)}, "fragment"),
        ({"client_id": "Portal QH"}, "lower-case"),
        ({"unknown": 1}, "Extra inputs"),
        (
            {"redirect_uris": ("https://a.example/cb", "https://b.example/cb")},
            "sector_identifier",
        ),
    ],
)
def test_invalid_registrations_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _portal(**changes)


def test_loopback_http_is_allowed_for_development() -> None:
    assert _portal(redirect_uris=("http://127.0.0.1:8000/cb",)).sector == "127.0.0.1"


def test_secret_is_masked_in_repr() -> None:
    client = _portal(type="confidential", client_secret=SecretStr("s3cret-value-0123456789"))
    assert "s3cret" not in repr(client)
    assert "s3cret" not in str(client.model_dump())


def test_redirect_uri_matching_is_exact() -> None:
    client = OAuthClient(_portal())
    assert client.check_redirect_uri("https://portal.example/cb")
    for altered in (
        "https://portal.example/cb/",
        "https://portal.example/cb?x=1",
        "https://PORTAL.example/cb",
        "https://portal.example/c",
    ):
        assert not client.check_redirect_uri(altered)


def test_allowed_scope_drops_what_is_not_registered() -> None:
    client = OAuthClient(_portal(scopes=("openid", "profile")))
    assert client.get_allowed_scope("openid email profile openid") == "openid profile"


def test_secret_check_and_auth_methods() -> None:
    confidential = OAuthClient(
        _portal(type="confidential", client_secret=SecretStr("s3cret-value-0123456789"))
    )
    assert confidential.check_client_secret("s3cret-value-0123456789")
    assert not confidential.check_client_secret("s3cret-value-012345678")
    assert not confidential.check_endpoint_auth_method("none", "token")
    public = OAuthClient(_portal())
    assert not public.check_client_secret("")
    assert public.check_endpoint_auth_method("none", "token")


def test_registry_refuses_duplicates_and_answers_service_permissions() -> None:
    with pytest.raises(ValueError, match="twice"):
        ClientRegistry([_portal(), _portal()])
    registry = ClientRegistry([_portal(allowed_services=("degree-check",))])
    assert registry.allows_service("portal-qh", "degree-check")
    assert not registry.allows_service("portal-qh", "pension-transfer")
    assert not registry.allows_service("nobody", "degree-check")
