"""The lean sender's own write of a request (``adapters/lean_send.py``, ``_write_at_once``):
the same bytes as ``ClientSession.request``, in one write, the same answers and failures, and
aiohttp's own ``send`` whenever its writer would do anything else.

Every test runs ``session.request`` and ``LeanSender.request`` against one raw back-end that
keeps the bytes of each request and answers from a script, and compares what both see.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import http_writer, payload
from multidict import CIMultiDict
from yarl import URL

from adapters import lean_send
from adapters.eager_send import REQUEST_CLASS
from adapters.lean_send import LeanRequest, LeanSender
from tests.adapters.loopback_backends import read_raw_request
from tests.source_pins import source_digest as _digest

_JSON = b'{"ok":true}'


def _answer(body: bytes = _JSON, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class Back:
    """A raw HTTP/1.1 back-end: keeps each request's bytes (and each ``recv``'s count, to tell
    one write from several on loopback) and answers with ``answer(bytes)``; an answer of None
    closes the connection without answering."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answer: Callable[[bytes], bytes | None] = lambda _: _answer()
        self.hold = False
        self.close_after = False  # close the connection after each answer
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = await read_raw_request(reader)
                if raw is None:
                    return
                self.requests.append(raw)
                if self.hold:
                    await asyncio.sleep(3600)
                reply = self.answer(raw)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    return
        finally:
            writer.close()


@pytest.fixture
async def back() -> AsyncIterator[Back]:
    server = Back()
    server._server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.port = server._server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        server._server.close()


def _session(**timeouts: float) -> aiohttp.ClientSession:
    """A session of a system's settings (what ``adapters.rest.open_session`` makes)."""
    return aiohttp.ClientSession(
        request_class=REQUEST_CLASS,
        connector=aiohttp.TCPConnector(limit=4, limit_per_host=0),
        headers={"User-Agent": "tongban", "Accept-Encoding": "identity", "Accept": "x/y"},
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, **timeouts),
        auto_decompress=False,
        raise_for_status=False,
    )


class Counted:
    """Counts the requests sent by aiohttp's own ``send`` (the lean sender's fallback)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_aiohttp = 0
        original = REQUEST_CLASS.send

        async def send(request: aiohttp.ClientRequest, conn: Any) -> aiohttp.ClientResponse:
            self.by_aiohttp += 1
            return await original(request, conn)

        monkeypatch.setattr(REQUEST_CLASS, "send", send)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    return Counted(monkeypatch)


Outcome = tuple[Any, ...]


async def _outcome(answer: Awaitable[aiohttp.ClientResponse]) -> Outcome:
    """What a caller sees of one exchange: status, reason, headers, body, sizes; or the error."""
    try:
        response = await answer
        try:
            body = await response.read()
            return (
                response.status,
                response.reason,
                list(response.headers.items()),
                body,
                response.request_info.method,
                list(response.request_info.headers.items()),
                response._output_size,  # the bytes sent (its property warns)
            )
        finally:
            response.release()
            await response.wait_for_close()
    except Exception as exc:  # compared by type and text
        return ("error", type(exc), str(exc))


async def _both(
    back: Back,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[Outcome, bytes, Outcome, bytes]:
    """One exchange by ``session.request`` and one by the lean sender, each on a fresh
    connection: what each saw and the bytes the back-end read."""
    url = URL(f"http://127.0.0.1:{back.port}{target}", encoded=True)
    seen: list[tuple[Outcome, bytes]] = []
    for lean in (False, True):
        own = session or _session()
        try:
            start = len(back.requests)
            if lean:
                sender = LeanSender.for_(own, url.origin(), headers)
                assert sender is not None
                call = sender.request(method, url, sender.headers(headers), body)
            else:
                call = own.request(method, url, headers=headers, data=body, allow_redirects=False)
            outcome = await _outcome(call)
            seen.append((outcome, b"".join(back.requests[start:])))
        finally:
            if session is None:
                await own.close()
    return seen[0][0], seen[0][1], seen[1][0], seen[1][1]


_CALL = {"X-Fixed": "1", "X-Request-ID": "r-1", "X-Purpose": "核验 check".encode().decode()}


@pytest.mark.parametrize(
    ("method", "target", "typed", "body"),
    [
        ("POST", "/a/echo", True, b'{"a":1}'),
        ("POST", "/a/echo", False, b"raw"),  # the payload's own Content-Type
        ("POST", "/a/echo", False, None),  # send's Content-Type for a POST without one
        ("PATCH", "/a/echo", False, None),
        ("PUT", "/a/items/7", True, b""),
        ("PUT", "/a/items/7", True, b"{}"),
        ("GET", "/a/items/a%20b%2Fc?q=x%20y&n=3", False, None),
        ("DELETE", "/a/items/7", False, None),
        ("GET", "/a/x", True, b"[1]"),  # a GET with a body
        ("POST", "/a/echo", True, b"x" * 3000),  # one write on this Python, two on 3.12.9+
    ],
)
async def test_the_same_bytes_and_answers_written_at_once(
    back: Back, counted: Counted, method: str, target: str, typed: bool, body: bytes | None
) -> None:
    headers = dict(_CALL)
    if typed:
        headers["Content-Type"] = "application/json"
    plain, plain_bytes, lean, lean_bytes = await _both(back, method, target, headers, body)
    assert lean_bytes == plain_bytes
    assert lean == plain
    assert plain[0] == 200
    assert lean_bytes.startswith(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:".encode())
    by_aiohttp = 1 if body is None or len(body) < 2048 or http_writer.SKIP_WRITELINES else 2
    assert counted.by_aiohttp == by_aiohttp  # session.request once; the lean write none


async def test_a_body_past_the_drain_limit_goes_through_aiohttps_send(
    back: Back, counted: Counted
) -> None:
    body = b"y" * 70_000
    headers = {"Content-Type": "application/octet-stream"}
    plain, plain_bytes, lean, lean_bytes = await _both(back, "POST", "/big", headers, body)
    assert lean_bytes == plain_bytes
    assert lean == plain
    assert counted.by_aiohttp == 2


def _chunked(raw: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n'
    )


def _gzipped(raw: bytes) -> bytes:
    return _answer(gzip.compress(_JSON, mtime=0), extra=b"Content-Encoding: gzip\r\n")


def _cut_short(raw: bytes) -> bytes:
    return b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":'


def _until_close(raw: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + _JSON


def _no_content(raw: bytes) -> bytes:
    return b"HTTP/1.1 204 No Content\r\n\r\n"


def _not_http(raw: bytes) -> bytes:
    return b"NOT HTTP AT ALL\r\n\r\n"


def _refused(raw: bytes) -> bytes:
    return b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy"


def _continue_first(raw: bytes) -> bytes:
    return b"HTTP/1.1 100 Continue\r\n\r\n" + _answer()


def _closed(raw: bytes) -> None:
    return None


@pytest.mark.parametrize(
    "answer",
    [
        _chunked,
        _gzipped,
        _cut_short,
        _until_close,
        _no_content,
        _not_http,
        _refused,
        _continue_first,
        _closed,
    ],
)
@pytest.mark.parametrize("decompress", [False, True])
async def test_the_same_answers(
    back: Back, counted: Counted, answer: Callable[[bytes], bytes | None], decompress: bool
) -> None:
    back.answer = answer
    back.close_after = answer in (_cut_short, _until_close)
    session = _session()
    session._auto_decompress = decompress
    try:
        plain, plain_bytes, lean, lean_bytes = await _both(
            back, "POST", "/a", {"Content-Type": "application/json"}, b"{}", session
        )
    finally:
        await session.close()
    assert lean_bytes == plain_bytes
    assert lean == plain
    if answer is _gzipped:
        assert plain[3] == (_JSON if decompress else gzip.compress(_JSON, mtime=0))
    if answer in (_cut_short, _not_http, _closed):
        assert plain[0] == "error"
    assert counted.by_aiohttp == 1


async def test_a_read_timeout_is_aiohttps(back: Back, counted: Counted) -> None:
    back.hold = True
    session = _session(sock_read=0.05)
    try:
        async with asyncio.timeout(60):  # a sender that never starts the timer fails, not hangs
            plain, _, lean, _ = await _both(back, "POST", "/a", {}, b"{}", session)
    finally:
        await session.close()
    assert plain[:2] == ("error", aiohttp.SocketTimeoutError)
    assert lean == plain
    assert counted.by_aiohttp == 1


async def test_keep_alive_and_the_pool_limit(back: Back, counted: Counted) -> None:
    connections: set[int] = set()
    original = back._serve

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(id(writer))
        await original(reader, writer)

    back._serve = serve  # type: ignore[method-assign]
    assert back._server is not None
    back._server.close()
    back._server = await asyncio.start_server(serve, "127.0.0.1", 0)
    back.port = back._server.sockets[0].getsockname()[1]
    session = _session()  # limit 4
    try:
        url = URL(f"http://127.0.0.1:{back.port}/a")
        sender = LeanSender.for_(session, url.origin(), ())
        assert sender is not None

        async def one() -> bytes:
            response = await sender.request("GET", url, sender.headers({}), None)
            try:
                return await response.read()
            finally:
                response.release()

        assert await asyncio.gather(*(one() for _ in range(12))) == [_JSON] * 12
        assert await one() == _JSON
    finally:
        await session.close()
    assert 1 <= len(connections) <= 4
    assert len(back.requests) == 13
    assert counted.by_aiohttp == 0


class _Transport:
    def __init__(self, closing: bool) -> None:
        self.closing = closing
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Protocol:
    def __init__(self, transport: _Transport | None, paused: bool) -> None:
        self.transport = transport
        self.writing_paused = paused
        self.timeouts = 0

    def start_timeout(self) -> None:
        self.timeouts += 1


async def _request(method: str = "POST") -> LeanRequest:
    session = _session()
    url = URL("http://127.0.0.1:9/a")
    sender = LeanSender.for_(session, url.origin(), ())
    await session.close()
    assert sender is not None
    return LeanRequest.make_unsent(
        method, url, sender.headers({}), b"{}", asyncio.get_running_loop(), session
    )


@pytest.mark.parametrize(
    ("transport", "paused", "method"),
    [
        (None, False, "POST"),
        (_Transport(closing=True), False, "POST"),
        (_Transport(closing=False), True, "POST"),
        (_Transport(closing=False), False, "CONNECT"),
    ],
)
async def test_what_aiohttps_writer_would_do_otherwise_is_left_to_it(
    transport: _Transport | None, paused: bool, method: str
) -> None:
    protocol = _Protocol(transport, paused)
    request = await _request(method)
    assert lean_send._write_at_once(request, protocol, b"{}") is None
    assert protocol.timeouts == 0
    assert transport is None or transport.written == []


async def test_the_payload_made_for_the_fallback_is_aiohttps() -> None:
    request = await _request()
    assert request._body is None
    request.with_payload(b"{}")
    body: Any = request._body
    made = payload.PAYLOAD_REGISTRY.get(b"{}", disposition=None)
    assert type(body) is type(made)
    assert vars(body) == vars(made)
    assert list(body.headers.items()) == list(made.headers.items())
    assert list(request.headers.items())[-2:] == [
        ("Content-Length", "2"),
        ("Content-Type", "application/octet-stream"),
    ]


# --- the aiohttp code the write stands in for -----------------------------------------------------

_WRITE_PATH: dict[str, Any] = {
    "ClientRequest.send": aiohttp.ClientRequest.send,
    "ClientRequest.write_bytes": aiohttp.ClientRequest.write_bytes,
    "ClientRequest.request_info": vars(aiohttp.ClientRequest)["request_info"].fget,
    "ClientResponse.__init__": aiohttp.ClientResponse.__init__,
    "StreamWriter.write": http_writer.StreamWriter.write,
    "StreamWriter.write_headers": http_writer.StreamWriter.write_headers,
    "StreamWriter.set_eof": http_writer.StreamWriter.set_eof,
    "StreamWriter.write_eof": http_writer.StreamWriter.write_eof,
    "StreamWriter._send_headers_with_payload": http_writer.StreamWriter._send_headers_with_payload,
    "StreamWriter._write": http_writer.StreamWriter._write,
    "StreamWriter._writelines": http_writer.StreamWriter._writelines,
    "Payload.__init__": payload.Payload.__init__,
    "BytesPayload.__init__": payload.BytesPayload.__init__,
    "BytesPayload.write_with_length": payload.BytesPayload.write_with_length,
}

PINNED = {
    "ClientRequest.send": "82b495aa06760c64",
    "ClientRequest.write_bytes": "f3b5cbcb26f2c27d",
    "ClientRequest.request_info": "400d62892bfe8340",
    "ClientResponse.__init__": "3ea35c3069aa9535",
    "StreamWriter.write": "17a5fa94c65dcab6",
    "StreamWriter.write_headers": "41686943f544d978",
    "StreamWriter.set_eof": "be7044ff686ba3ea",
    "StreamWriter.write_eof": "c7e545df80b9eb68",
    "StreamWriter._send_headers_with_payload": "ba7ce5cef94031cd",
    "StreamWriter._write": "85b096c3e76d8e37",
    "StreamWriter._writelines": "7269c41caab2c306",
    "Payload.__init__": "0adbd7d69a918eb6",
    "BytesPayload.__init__": "ec976aa8666637a1",
    "BytesPayload.write_with_length": "fe934738467fd16b",
}


def test_the_aiohttp_write_path_is_unchanged() -> None:
    changed = {name for name, f in _WRITE_PATH.items() if _digest(f) != PINNED[name]}
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed {sorted(changed)}: check _write_at_once and "
        "LeanRequest.make_unsent in adapters/lean_send.py against the new code before "
        "updating PINNED"
    )


def test_the_head_serialiser_is_aiohttps_c_one() -> None:
    # The lean write calls the serialiser aiohttp's writer calls: its C one, CR/LF check and all.
    serialise = vars(lean_send)["_serialize_headers"]
    assert serialise is http_writer._serialize_headers
    headers: CIMultiDict[str] = CIMultiDict({"X-Bad": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="Forbidden control character"):
        serialise("POST / HTTP/1.1", headers)
