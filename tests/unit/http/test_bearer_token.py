"""The bearer token read from the Authorization header as it was read before its shortcut (a
header starting ``Bearer `` as sent is not lowered nor split): the same token, or the same
refusal, for every spelling of the scheme, spaces and tabs around the token, and no token."""

from __future__ import annotations

import itertools

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.errors import Unauthenticated
from gateway.http.middlewares import bearer_token


def _as_before(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


SCHEMES = ("Bearer", "bearer", "BEARER", "BeArEr", "Basic", "Bearerx", "", " Bearer", "Bearer\t")
GAPS = ("", " ", "  ", "\t", " \t ")
TOKENS = ("", "dev.abc.def", " dev.abc.def ", "a b", "\t", "x")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_token_or_the_refusal_as_before(scheme: str) -> None:
    for gap, token in itertools.product(GAPS, TOKENS):
        header = scheme + gap + token
        request = make_mocked_request("POST", "/api/v1/x", headers={"Authorization": header})
        want = _as_before(header)
        if want is None:
            with pytest.raises(Unauthenticated):
                bearer_token(request)
        else:
            assert bearer_token(request) == want, repr(header)


def test_no_header_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        bearer_token(make_mocked_request("POST", "/api/v1/x"))
