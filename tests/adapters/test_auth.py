"""Each auth kind, verified by the loopback back-end from the spec, not from the adapter's code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.adapter import (
    AdapterConfigError,
    BackendFault,
    BackendRejected,
    Call,
    Secret,
)
from tests.adapters.loopback_backends import (
    CONTEXT,
    DEGREE,
    FACTORIES,
    Backend,
    api_key_check,
    bearer_check,
    hmac_check,
    make_call,
    make_spec,
    opened_adapter,
    running_backend,
    ws_security_check,
)

SECRET_TEXT = "s3cr3t-never-shown"


@pytest.fixture
async def rest_backend() -> AsyncIterator[Backend]:
    async with running_backend("rest") as server:
        yield server


@pytest.fixture
async def soap_backend() -> AsyncIterator[Backend]:
    async with running_backend("soap") as server:
        yield server


async def test_api_key(rest_backend: Backend) -> None:
    rest_backend.auth_check = api_key_check("X-API-Key", SECRET_TEXT)
    auth = {"type": "api_key", "key": Secret(SECRET_TEXT)}
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        reply = await adapter.call(make_call("rest"))
    assert reply.data == DEGREE


async def test_api_key_in_a_custom_header_refused_when_wrong(rest_backend: Backend) -> None:
    rest_backend.auth_check = api_key_check("X-Gov-Key", SECRET_TEXT)
    auth = {"type": "api_key", "header": "X-Gov-Key", "key": Secret("wrong")}
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        with pytest.raises(BackendRejected) as caught:
            await adapter.call(make_call("rest"))
    assert "wrong" not in str(caught.value)


def oauth(backend: Backend, secret: str = SECRET_TEXT) -> dict[str, Any]:
    backend.oauth_client = ("gateway client", SECRET_TEXT)
    backend.auth_check = bearer_check(backend)
    return {
        "type": "oauth2_client_credentials",
        "token_url": backend.base_url + "/oauth/token",
        "client_id": "gateway client",
        "client_secret": Secret(secret),
    }


async def test_oauth2_client_credentials_token_is_fetched_once_and_cached(
    rest_backend: Backend,
) -> None:
    async with opened_adapter("rest", rest_backend.address, auth=oauth(rest_backend)) as adapter:
        for _ in range(3):
            reply = await adapter.call(make_call("rest"))
    assert reply.data == DEGREE
    assert rest_backend.token_requests == 1
    assert rest_backend.received == 3


async def test_oauth2_refreshes_once_on_401(rest_backend: Backend) -> None:
    async with opened_adapter("rest", rest_backend.address, auth=oauth(rest_backend)) as adapter:
        await adapter.call(make_call("rest"))
        rest_backend.tokens.clear()  # the system revokes every token it issued
        reply = await adapter.call(make_call("rest"))
    assert reply.data == DEGREE
    assert rest_backend.token_requests == 2
    assert rest_backend.received == 3  # ok, 401, ok


async def test_oauth2_wrong_client_secret_never_reaches_the_api(rest_backend: Backend) -> None:
    auth = oauth(rest_backend, secret="not-the-secret")
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        with pytest.raises(BackendRejected) as caught:
            await adapter.call(make_call("rest"))
    assert caught.value.reached_backend is False
    assert rest_backend.received == 0
    assert "not-the-secret" not in str(caught.value)


async def test_hmac_signature_checked_by_the_server_on_post(rest_backend: Backend) -> None:
    rest_backend.auth_check = hmac_check("gw-key-1", SECRET_TEXT)
    auth = {"type": "hmac", "key_id": "gw-key-1", "secret": Secret(SECRET_TEXT)}
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        reply = await adapter.call(make_call("rest"))
    assert reply.data == DEGREE


async def test_hmac_signature_on_get_with_path_and_query(rest_backend: Backend) -> None:
    rest_backend.auth_check = hmac_check("gw-key-1", SECRET_TEXT)
    auth = {"type": "hmac", "key_id": "gw-key-1", "secret": Secret(SECRET_TEXT)}
    payload = {"account_no": "61/0042 户", "year": 2024, "name": "李 四", "active": True}
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        reply = await adapter.call(Call("lookup", payload, CONTEXT))
    assert reply.data == DEGREE
    [seen] = rest_backend.seen
    assert seen.method == "GET"
    assert seen.raw_path.startswith("/api/accounts/61%2F0042%20%E6%88%B7?")
    assert "year=2024" in seen.raw_path
    assert "active=true" in seen.raw_path
    assert seen.body == b""


async def test_hmac_with_the_wrong_secret_is_refused(rest_backend: Backend) -> None:
    rest_backend.auth_check = hmac_check("gw-key-1", SECRET_TEXT)
    auth = {"type": "hmac", "key_id": "gw-key-1", "secret": Secret("other")}
    async with opened_adapter("rest", rest_backend.address, auth=auth) as adapter:
        with pytest.raises(BackendRejected):
            await adapter.call(make_call("rest"))


@pytest.mark.parametrize("digest", [False, True], ids=["text", "digest"])
async def test_ws_security_username_token(soap_backend: Backend, digest: bool) -> None:
    soap_backend.auth_check = ws_security_check("gateway", SECRET_TEXT)
    auth = {"type": "ws_security", "username": "gateway", "password": Secret(SECRET_TEXT),
            "digest": digest}  # fmt: skip
    async with opened_adapter("soap", soap_backend.address, auth=auth) as adapter:
        reply = await adapter.call(make_call("soap"))
    assert reply.data == DEGREE
    if digest:
        assert SECRET_TEXT.encode() not in soap_backend.seen[0].body


async def test_ws_security_wrong_password_is_a_client_fault(soap_backend: Backend) -> None:
    soap_backend.auth_check = ws_security_check("gateway", SECRET_TEXT)
    auth = {"type": "ws_security", "username": "gateway", "password": Secret("nope"),
            "digest": True}  # fmt: skip
    async with opened_adapter("soap", soap_backend.address, auth=auth) as adapter:
        with pytest.raises(BackendFault) as caught:
            await adapter.call(make_call("soap"))
    assert caught.value.fault_side == "client"


@pytest.mark.parametrize(
    ("kind", "auth", "field"),
    [
        ("rest", {"type": "api_key", "key": SECRET_TEXT}, "auth.key"),
        ("shaanxi_degree", {"type": "hmac", "key_id": "k", "secret": SECRET_TEXT}, "auth.secret"),
        ("soap", {"type": "ws_security", "username": "u", "password": SECRET_TEXT},
         "auth.password"),
    ],
)  # fmt: skip
def test_an_inline_secret_is_refused_without_echoing_it(
    kind: Any, auth: dict[str, Any], field: str
) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        FACTORIES[kind].check(make_spec(kind, "http://127.0.0.1:1", auth=auth))
    assert caught.value.field == field
    assert SECRET_TEXT not in str(caught.value)


def test_secrets_never_show_in_reprs() -> None:
    spec = make_spec("rest", "http://127.0.0.1:1", auth={"type": "api_key", "key": Secret("k9")})
    assert "k9" not in repr(spec)
