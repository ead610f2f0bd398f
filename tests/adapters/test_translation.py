"""The translation tables and helpers, without I/O."""

from __future__ import annotations

import dataclasses
import email.utils
import socket
from pathlib import Path

import aiohttp
import pytest
import zeep.exceptions
from aiohttp.client_reqrep import ConnectionKey

from adapters.rest import (
    build_rest_adapter,
    context_headers,
    header_safe,
    map_aiohttp_errors,
    parse_retry_after,
)
from adapters.shaanxi_degree import unwrap_answer
from adapters.soap import fault_side, map_zeep_errors
from gateway.adapter import (
    BackendBadResponse,
    BackendError,
    BackendFault,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Call,
    SystemSpec,
)
from tests.calls import CONTEXT


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (None, None), ("soon", None), ("-3", None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(1_000_090, usegmt=True)
    assert parse_retry_after(date, now=lambda: 1_000_000.0) == 90.0
    assert parse_retry_after(date, now=lambda: 2_000_000.0) == 0.0


@pytest.mark.parametrize(
    ("code", "side"),
    [
        ("soap:Client", "client"),
        ("soap-env:Client.Authentication", "client"),
        ("{http://www.w3.org/2003/05/soap-envelope}Sender", "client"),
        ("env:Sender", "client"),
        ("soap:Server", "server"),
        ("env:Receiver", "server"),
        (None, "server"),
    ],
)
def test_fault_side(code: str | None, side: str) -> None:
    assert fault_side(code) == side


def test_soap12_sender_fault_is_client_side() -> None:
    with pytest.raises(BackendFault) as caught, map_zeep_errors("gs-edu"):
        raise zeep.exceptions.Fault("holder 张三 unknown", code="soap12:Sender")  # type: ignore[no-untyped-call]
    assert caught.value.fault_side == "client"
    assert "张三" not in str(caught.value)
    assert isinstance(caught.value.__cause__, zeep.exceptions.Fault)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(0, BackendBadResponse), (200, BackendBadResponse), (404, BackendRejected),
     (500, BackendServerError)],
)  # fmt: skip
def test_zeep_transport_error_by_status(status: int, expected: type[BackendError]) -> None:
    with pytest.raises(expected), map_zeep_errors("gs-edu"):
        raise zeep.exceptions.TransportError("details", status_code=status)  # type: ignore[no-untyped-call]


def test_zeep_validation_error_was_never_sent() -> None:
    with pytest.raises(BackendRejected) as caught, map_zeep_errors("gs-edu"):
        raise zeep.exceptions.ValidationError("Missing element holderName")  # type: ignore[no-untyped-call]
    assert caught.value.reached_backend is False


_KEY = ConnectionKey("10.9.8.7", 443, True, True, None, None, None, None)


@pytest.mark.parametrize(
    ("foreign", "expected", "reached"),
    [
        (aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(111, "refused")),
         BackendUnavailable, False),
        (aiohttp.ClientConnectorDNSError(_KEY, socket.gaierror(-2, "Name or service not known")),
         BackendUnavailable, False),
        (aiohttp.ConnectionTimeoutError("slow"), BackendTimeout, False),
        (aiohttp.SocketTimeoutError("slow"), BackendTimeout, True),
        (aiohttp.ServerDisconnectedError("bad"), BackendUnavailable, True),
        (aiohttp.ClientPayloadError("reset"), BackendUnavailable, True),
        (aiohttp.ClientConnectionResetError("reset"), BackendUnavailable, True),
    ],
)  # fmt: skip
def test_aiohttp_rows(foreign: Exception, expected: type[BackendError], reached: bool) -> None:
    with pytest.raises(expected) as caught, map_aiohttp_errors("js-tax"):
        raise foreign
    assert caught.value.reached_backend is reached
    assert caught.value.__cause__ is foreign
    assert "10.9.8.7" not in str(caught.value)


def test_a_preliminary_exchange_never_reached_the_backend() -> None:
    with pytest.raises(BackendTimeout) as caught, map_aiohttp_errors("js-tax", request_sent=False):
        raise aiohttp.SocketTimeoutError("token endpoint slow")
    assert caught.value.reached_backend is False


def test_unknown_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), map_aiohttp_errors("js-tax"):
        raise KeyError("bug")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("req-1", "req-1"), ("学历", "%E5%AD%A6%E5%8E%86"), ("a\r\nb", "a%0D%0Ab"), (" x", "%20x")],
)
def test_header_values_are_ascii_safe(value: str, expected: str) -> None:
    assert header_safe(value) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"code": "0000", "msg": "ok", "result": '{"valid": true}'}, {"valid": True}),
        ({"code": "0000", "msg": "ok", "result": None}, None),
    ],
)
def test_shaanxi_unwraps_the_result(answer: object, expected: object) -> None:
    assert unwrap_answer(answer, "sx-edu") == expected


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ({"code": "1001", "msg": "查无此人 张三"}, BackendRejected),
        ({"code": "9999", "msg": "内部错误"}, BackendServerError),
        ({"msg": "no code"}, BackendBadResponse),
        ([1, 2], BackendBadResponse),
        ({"code": "0000", "result": "{not json"}, BackendBadResponse),
        ({"code": "0000", "result": {"already": "parsed"}}, BackendBadResponse),
    ],
)
def test_shaanxi_error_answers(answer: object, error: type[BackendError]) -> None:
    with pytest.raises(error) as caught:
        unwrap_answer(answer, "sx-edu")
    assert type(caught.value) is error
    assert "张三" not in str(caught.value)


async def test_prepared_request_per_operation() -> None:
    # The URL and path worked out once per operation, the placeholders filled per call, the
    # fixed headers first and a context header of the same name taking its place.
    spec = SystemSpec(
        id="sys",
        province="61",
        address="http://127.0.0.1:1/base/",
        config_dir=Path("."),
        options={"headers": {"X-Tongban-Service": "fixed", "X-Fixed": "1"}},
        operations={
            "Echo": {"method": "POST", "path": "/echo"},
            "One": {"method": "PUT", "path": "/items/{item}"},
        },
    )
    adapter = await build_rest_adapter.open(spec)
    try:
        context = dataclasses.replace(CONTEXT, purpose="核验 check", client=None)
        first = adapter.prepare(Call("Echo", {"a": 1}, context))
        second = adapter.prepare(Call("Echo", {"a": 2}, context))
        item = adapter.prepare(Call("One", {"item": "a b/c", "x": True}, context))
    finally:
        await adapter.aclose()
    assert str(first.url) == str(second.url) == "http://127.0.0.1:1/base/echo"
    assert first.path == "/base/echo"
    assert first.body == b'{"a":1}'
    assert second.body == b'{"a":2}'
    assert str(item.url) == "http://127.0.0.1:1/base/items/a%20b%2Fc"
    assert item.path == "/base/items/a%20b%2Fc"
    assert item.body == b'{"x":true}'
    assert list(first.headers) == [
        "X-Tongban-Service",
        "X-Fixed",
        "X-Request-ID",
        "X-Tongban-Purpose",
        "X-Tongban-Principal",
        "X-Tongban-Actor",
        "X-Tongban-Level",
        "X-Tongban-Source-Province",
        "Content-Type",
    ]
    assert first.headers["X-Tongban-Service"] == "svc"
    assert (
        first.headers["X-Tongban-Purpose"]
        == header_safe("核验 check")
        == "%E6%A0%B8%E9%AA%8C%20check"
    )
    assert first.headers == context_headers(context) | {
        "X-Tongban-Service": "svc",
        "X-Fixed": "1",
        "Content-Type": "application/json",
    }
