"""Request parsing (RFC 6749 §3.1/§3.2): repeats, floods, oversize values, content types."""

from __future__ import annotations

import pytest

from gateway.identity.requests import (
    MAX_PARAMETER_LENGTH,
    Headers,
    IdentityRequest,
    ParameterError,
    parse_parameters,
)


def test_parameters_are_decoded() -> None:
    assert parse_parameters("a=1&b=%E9%9D%92%E6%B5%B7&c=") == {"a": "1", "b": "青海", "c": ""}


@pytest.mark.parametrize(
    "encoded",
    [
        "a=1&a=2",
        "a=" + "x" * (MAX_PARAMETER_LENGTH + 1),
        "&".join(f"p{i}=1" for i in range(100)),
        "a=%FF",
    ],
)
def test_bad_parameters_are_refused(encoded: str) -> None:
    with pytest.raises(ParameterError):
        parse_parameters(encoded)


def test_post_needs_a_form_body() -> None:
    with pytest.raises(ParameterError, match="x-www-form-urlencoded"):
        IdentityRequest.build(
            "POST",
            "https://idp.example/oauth2/token",
            headers={},
            query_string="",
            body=b'{"a": 1}',
            content_type="application/json",
        )


def test_post_reads_the_form_and_get_reads_the_query() -> None:
    post = IdentityRequest.build(
        "POST",
        "https://idp.example/oauth2/token",
        headers={"AUTHORIZATION": "Basic x"},
        query_string="q=1",
        body=b"grant_type=refresh_token",
        content_type="application/x-www-form-urlencoded",
    )
    assert post.params == {"grant_type": "refresh_token"}
    assert post.headers["authorization"] == "Basic x"
    assert "Authorization" in post.headers
    get = IdentityRequest.build(
        "GET",
        "https://idp.example/oauth2/authorize?q=1",
        headers={},
        query_string="q=1",
        body=b"",
        content_type="",
    )
    assert get.params == {"q": "1"}


def test_headers_are_case_insensitive() -> None:
    headers = Headers({"X-Thing": "1"})
    assert headers["x-thing"] == "1"
    assert headers.get("X-THING") == "1"
    assert len(headers) == 1
