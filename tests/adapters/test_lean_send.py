"""The REST adapter's lean send (adapters/lean_send.py) sends what ``ClientSession.request``
sends, answers and fails as it does, and is taken exactly when it covers the call.

The wire tests run both paths against one raw TCP back-end that keeps every request's bytes;
the guard tests fail when the aiohttp code the lean path stands in for changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import inspect
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.helpers import TimerNoop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from adapters.eager_send import REQUEST_CLASS
from adapters.lean_send import LeanRequest, LeanSender
from adapters.rest import RestAdapter, build_rest_adapter, open_session
from gateway.adapter import BackendUnavailable, Call, CallContext, Secret, SystemSpec
from tests.adapters.loopback_backends import read_raw_request
from tests.source_pins import source_digest as _digest

CONTEXT = CallContext(
    request_id="0f3c2a9b8d7e6f5a4b3c2d1e0f9a8b7c",
    purpose="核验 check",
    service="svc",
    receiving_province="63",
    handling_province="61",
    principal="p-1",
    actor="a-1",
    level="L2",
    client="portal",
    idempotency_key="k-1",
    subject_hashes="person:" + "ab" * 32,
)


# --- what the lean path stands in for -----------------------------------------------------------

# SHA-256 of the source of the aiohttp code that adapters/lean_send.py does the work of, for the
# pinned aiohttp version. When one changes, read the new code against LeanSender.request,
# LeanSender._attempt, LeanRequest.make and _session_is_plain, then update the digest here.
_STOOD_IN_FOR: dict[str, Any] = {
    "ClientSession._request": aiohttp.ClientSession._request,
    "ClientSession._prepare_headers": aiohttp.ClientSession._prepare_headers,
    "ClientRequest.__init__": aiohttp.ClientRequest.__init__,
    "ClientRequest.update_headers": aiohttp.ClientRequest.update_headers,
    "ClientRequest.update_auto_headers": aiohttp.ClientRequest.update_auto_headers,
    "ClientRequest.update_body_from_data": aiohttp.ClientRequest.update_body_from_data,
    "ClientRequest.update_transfer_encoding": aiohttp.ClientRequest.update_transfer_encoding,
    "ClientRequest.update_content_encoding": aiohttp.ClientRequest.update_content_encoding,
    "ClientRequest.update_expect_continue": aiohttp.ClientRequest.update_expect_continue,
    "ClientResponse.__aexit__": aiohttp.ClientResponse.__aexit__,
}


PINNED = {
    "ClientSession._request": "32986b8105faf5f8",
    "ClientSession._prepare_headers": "599951967800b861",
    "ClientRequest.__init__": "8636fdb3a4b93b5f",
    "ClientRequest.update_headers": "4443c95d4332a9a8",
    "ClientRequest.update_auto_headers": "bce84510c402d732",
    "ClientRequest.update_body_from_data": "05b09c13b46521ad",
    "ClientRequest.update_transfer_encoding": "bdf48822001f774d",
    "ClientRequest.update_content_encoding": "8838c75e15e3df06",
    "ClientRequest.update_expect_continue": "82689b67b41d69a1",
    "ClientResponse.__aexit__": "6003530dc5283bbd",
}


def test_the_aiohttp_code_stood_in_for_is_unchanged() -> None:
    changed = {name for name, f in _STOOD_IN_FOR.items() if _digest(f) != PINNED[name]}
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed {sorted(changed)}: check adapters/lean_send.py "
        "against the new code before updating PINNED"
    )


async def test_the_private_attributes_read_exist() -> None:
    async with aiohttp.ClientSession() as session:
        for name in (
            "_middlewares",
            "_default_proxy",
            "_default_auth",
            "_base_url",
            "_retry_connection",
            "_request_class",
            "_response_class",
            "_loop",
            "_read_bufsize",
            "_max_line_size",
            "_max_field_size",
            "_max_headers",
        ):
            assert hasattr(session, name), name
        assert session.connector is not None
        assert hasattr(session.connector, "_timeout_ceil_threshold")
    assert "set_response_params" in vars(aiohttp.client_proto.ResponseHandler)
    assert list(inspect.signature(aiohttp.BaseConnector.connect).parameters) == [
        "self",
        "req",
        "traces",
        "timeout",
    ]


async def _requests_both_ways(
    method: str, url: URL, call: dict[str, str], data: bytes | None
) -> tuple[aiohttp.ClientRequest, aiohttp.ClientRequest]:
    """The request ``session.request`` makes (its header merge, the request class's
    constructor) and the one ``LeanSender`` makes, for one call."""
    session = aiohttp.ClientSession(
        request_class=REQUEST_CLASS,
        headers={"User-Agent": "tongban-gateway", "Accept-Encoding": "identity", "Accept": "x/y"},
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
    )
    try:
        loop = asyncio.get_running_loop()
        plain = REQUEST_CLASS(
            method,
            url,
            headers=session._prepare_headers(call),
            data=data,
            cookies=session.cookie_jar.filter_cookies(url),
            loop=loop,
            response_class=aiohttp.ClientResponse,
            timer=TimerNoop(),
            session=session,
            ssl=True,
            traces=[],
        )
        sender = LeanSender.for_(session, url.origin(), call)
        assert sender is not None
        lean = LeanRequest.make(method, url, sender.headers(call), data, loop, session)
        return plain, lean
    finally:
        await session.close()


def _state(request: aiohttp.ClientRequest) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in vars(request).items():
        shown: Any = value
        if name == "headers":
            shown = list(value.items())
        elif name == "_body" and value is not None:
            own = {k: v for k, v in vars(value).items() if k != "_headers"}
            shown = (type(value), own, list(value.headers.items()))
        elif name in ("_timer", "_traces"):
            shown = type(value)
        out.append((name, shown))
    return out


@pytest.mark.parametrize(
    ("method", "data", "typed"),
    [
        ("POST", b'{"a":1}', True),
        ("PUT", b"{}", True),
        ("GET", None, False),
        ("PUT", b"", True),
        ("POST", None, False),
        ("POST", b"raw", False),  # the payload's own Content-Type
    ],
)
async def test_the_lean_request_is_aiohttps_request(
    method: str, data: bytes | None, typed: bool
) -> None:
    call = {"X-Fixed": "1", "X-Request-ID": "r-1"}
    if typed:
        call["Content-Type"] = "application/json"
    for url in (URL("http://127.0.0.1:8080/a/b?x=1&y=%20"), URL("https://example.org/p")):
        plain, lean = await _requests_both_ways(method, url, call, data)
        assert type(lean).__mro__[1] is type(plain)
        assert _state(lean) == _state(plain)


# --- when it is taken ---------------------------------------------------------------------------


def _spec(**changes: Any) -> SystemSpec:
    spec = SystemSpec(
        id="sys",
        province="61",
        address="http://127.0.0.1:1/base",
        config_dir=Path("."),
        attempt_timeout=10.0,
        operations={
            "Echo": {"method": "POST", "path": "/echo"},
            "Get": {"method": "GET", "path": "/items/{item}"},
            "Put": {"method": "PUT", "path": "/items/{item}"},
        },
    )
    return dataclasses.replace(spec, **changes)


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"type": "api_key", "header": "X-API-Key", "key": Secret("k")},
        {"type": "hmac", "key_id": "id", "secret": Secret("s")},
        {
            "type": "oauth2_client_credentials",
            "token_url": "http://127.0.0.1:1/token",
            "client_id": "c",
            "client_secret": Secret("s"),
        },
    ],
)
async def test_every_auth_of_a_plain_system_takes_the_lean_path(auth: dict[str, Any]) -> None:
    adapter = await build_rest_adapter.open(_spec(auth=auth))
    try:
        assert adapter._lean is not None
    finally:
        await adapter.aclose()


@pytest.mark.parametrize(
    "spec",
    [
        _spec(options={"headers": {"Accept": "application/vnd.x+json"}}),  # a default's name
        _spec(options={"headers": {"user-agent": "them"}}),
        _spec(options={"headers": {"x-request-id": "fixed"}}),  # the context's, spelt otherwise
        _spec(options={"headers": {"Content-Length": "3"}}),
        _spec(options={"headers": {"Expect": "100-continue"}}),
        _spec(options={"headers": {"Host": "elsewhere"}}),
        _spec(auth={"type": "api_key", "header": "Accept", "key": Secret("k")}),
        _spec(address="http://user:pw@127.0.0.1:1/base"),
        _spec(address="http://127.0.0.1:1/base?tenant=1"),
    ],
)
async def test_what_aiohttp_would_merge_otherwise_takes_the_session(spec: SystemSpec) -> None:
    adapter = await build_rest_adapter.open(spec)
    try:
        assert adapter._lean is None
    finally:
        await adapter.aclose()


@pytest.mark.parametrize(
    "other",
    [
        lambda: {"cookie_jar": aiohttp.CookieJar()},
        lambda: {"trace_configs": [aiohttp.TraceConfig()]},
        lambda: {"timeout": aiohttp.ClientTimeout(total=5)},
        lambda: {"proxy": "http://127.0.0.1:3128"},
        lambda: {"raise_for_status": True},
        lambda: {"skip_auto_headers": ["User-Agent"]},
        lambda: {"trust_env": True},
        lambda: {"base_url": "http://127.0.0.1:1"},
        lambda: {"request_class": aiohttp.ClientRequest},
        lambda: {"headers": {"User-Agent": "u", "Accept-Encoding": "identity"}},  # no Accept
    ],
)
async def test_a_session_of_other_settings_is_not_covered(
    other: Callable[[], dict[str, Any]],
) -> None:
    changes = other()  # made on the running loop (a cookie jar needs one)
    settings: dict[str, Any] = {
        "request_class": REQUEST_CLASS,
        "headers": {"User-Agent": "u", "Accept-Encoding": "identity", "Accept": "*/*"},
        "cookie_jar": aiohttp.DummyCookieJar(),
        "timeout": aiohttp.ClientTimeout(total=None),
    }
    origin = URL("http://127.0.0.1:1")
    async with aiohttp.ClientSession(**settings) as session:
        assert LeanSender.for_(session, origin, ["X-A"]) is not None
    async with aiohttp.ClientSession(**(settings | changes)) as session:
        assert LeanSender.for_(session, origin, ["X-A"]) is None


# --- on the wire --------------------------------------------------------------------------------


class Wire:
    """A raw HTTP/1.1 back-end: keeps each request's bytes and the connection it came on;
    ``drop_second`` closes a connection on its second request without answering."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.drop_second = False
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        served = 0
        try:
            while True:
                raw = await read_raw_request(reader)
                if raw is None:
                    return
                self.requests.append((number, raw))
                served += 1
                if self.drop_second and served == 2:
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = b'{"ok":true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    server = Wire()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _calls_both_ways(
    wire: Wire, spec: SystemSpec, calls: list[Call]
) -> tuple[list[bytes], list[bytes]]:
    """The bytes the back-end reads for ``calls``, sent by an adapter on the lean path and by
    one on the session's."""
    seen: list[list[bytes]] = []
    for lean in (True, False):
        adapter = await build_rest_adapter.open(spec)
        try:
            assert adapter._lean is not None
            if not lean:
                adapter._lean = None
            start = len(wire.requests)
            for call in calls:
                await adapter.call(call)
            seen.append([raw for _, raw in wire.requests[start:]])
        finally:
            await adapter.aclose()
    return seen[0], seen[1]


async def test_the_same_bytes_on_the_wire(wire: Wire) -> None:
    spec = _spec(
        address=f"http://127.0.0.1:{wire.port}/base",
        options={"headers": {"X-Fixed": "1", "X-Tongban-Service": "fixed"}},
    )
    calls = [
        Call("Echo", {"a": 1, "名": "张三"}, CONTEXT),
        Call("Get", {"item": "a b/c", "q": "x y", "n": 3}, CONTEXT),
        Call("Put", {"item": "7", "v": True}, dataclasses.replace(CONTEXT, client=None)),
        Call("Echo", {}, CONTEXT),
    ]
    lean, plain = await _calls_both_ways(wire, spec, calls)
    assert lean == plain
    assert len(lean) == 4
    assert lean[0].startswith(b"POST /base/echo HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 22\r\n" in lean[0]
    assert b"GET /base/items/a%20b%2Fc?q=x%20y&n=3 HTTP/1.1\r\n" in lean[1]


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "api_key", "header": "X-API-Key", "key": Secret("k")},
        {"type": "api_key", "header": "authorization", "key": Secret("k")},
    ],
)
async def test_the_same_bytes_with_authentication(wire: Wire, auth: dict[str, Any]) -> None:
    spec = _spec(address=f"http://127.0.0.1:{wire.port}/base", auth=auth)
    lean, plain = await _calls_both_ways(wire, spec, [Call("Echo", {"a": 1}, CONTEXT)])
    assert lean == plain
    assert b"\r\nX-API-Key: k\r\n" in lean[0] or b"\r\nauthorization: k\r\n" in lean[0]


async def test_connections_are_reused_within_the_pool_limit(wire: Wire) -> None:
    wire.delay = 0.02
    spec = _spec(address=f"http://127.0.0.1:{wire.port}/base", concurrency_limit=2)
    adapter = await build_rest_adapter.open(spec)
    try:
        assert adapter._lean is not None
        replies = await asyncio.gather(
            *(adapter.call(Call("Echo", {"i": i}, CONTEXT)) for i in range(8))
        )
        assert [reply.data for reply in replies] == [{"ok": True}] * 8
        await adapter.call(Call("Echo", {"i": 8}, CONTEXT))
    finally:
        await adapter.aclose()
    assert wire.most_open == 2
    assert wire.connections == 2
    assert len(wire.requests) == 9


async def _dead_pooled_connection(wire: Wire, adapter: RestAdapter, second: Call) -> Any:
    """One call on a fresh connection, then ``second`` on the pooled one, which the back-end
    closes on reading it."""
    wire.drop_second = True
    await adapter.call(Call("Echo", {"first": 1}, CONTEXT))
    return await adapter.call(second)


@pytest.mark.parametrize("lean", [True, False])
async def test_an_idempotent_request_is_sent_again_on_a_dead_connection(
    wire: Wire, lean: bool
) -> None:
    adapter = await build_rest_adapter.open(_spec(address=f"http://127.0.0.1:{wire.port}/base"))
    try:
        if not lean:
            adapter._lean = None
        reply = await _dead_pooled_connection(wire, adapter, Call("Put", {"item": "1"}, CONTEXT))
    finally:
        await adapter.aclose()
    assert reply.data == {"ok": True}
    assert [number for number, _ in wire.requests] == [1, 1, 2]
    assert wire.requests[1][1] == wire.requests[2][1]  # the same bytes, sent again


@pytest.mark.parametrize("lean", [True, False])
async def test_a_post_is_not_sent_again_on_a_dead_connection(wire: Wire, lean: bool) -> None:
    adapter = await build_rest_adapter.open(_spec(address=f"http://127.0.0.1:{wire.port}/base"))
    try:
        if not lean:
            adapter._lean = None
        with pytest.raises(BackendUnavailable) as caught:
            await _dead_pooled_connection(wire, adapter, Call("Echo", {"second": 2}, CONTEXT))
    finally:
        await adapter.aclose()
    assert caught.value.reached_backend is True
    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert [number for number, _ in wire.requests] == [1, 1]


async def test_a_closed_session_refuses_as_aiohttp_does() -> None:
    session = open_session(_spec(), headers={"Accept": "application/json"})
    sender = LeanSender.for_(session, URL("http://127.0.0.1:1"), ())
    assert sender is not None
    await session.close()
    with pytest.raises(RuntimeError, match="Session is closed"):
        await sender.request("GET", URL("http://127.0.0.1:1/x"), sender.headers({}), None)


def _loopback_certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_the_same_bytes_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lean path hands the connector the same request (ssl=True, the URL's scheme): the same
    # verified TLS connection, the same bytes inside it.
    cert_file, key_file = _loopback_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    # aiohttp's verifying context for ssl=True, made to trust the loopback certificate only
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", trusting)
    server = Wire()
    server._server = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=server_context)
    server.port = server._server.sockets[0].getsockname()[1]
    try:
        spec = _spec(address=f"https://127.0.0.1:{server.port}/base")
        lean, plain = await _calls_both_ways(server, spec, [Call("Echo", {"a": 1}, CONTEXT)])
    finally:
        await server.stop()
    assert lean == plain
    assert lean[0].startswith(b"POST /base/echo HTTP/1.1\r\nHost: 127.0.0.1:")
    assert server.connections == 2  # one TLS connection per adapter
