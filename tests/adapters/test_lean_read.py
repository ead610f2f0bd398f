"""The read of an answer that arrived whole (``adapters/lean_read.py``): what the caller sees
is what ``ClientSession.request`` and ``ClientResponse.read`` give, on every answer, hostile
ones included, and aiohttp's own path reads whatever the lean read does not take.

Every test runs ``session.request`` and ``LeanSender.fetch`` (on a connector with
``LeanHandler``) against one raw back-end answering from a script, and compares status, reason,
version, headers, body, charset and length, or the error's type and text, and whether the
connection was kept for the next request.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import base_protocol, client_proto, client_reqrep, connector, helpers, streams
from yarl import URL

from adapters import lean_read
from adapters.eager_send import REQUEST_CLASS
from adapters.lean_read import LeanAnswer, LeanHandler, install
from adapters.lean_send import LeanSender
from tests.adapters.loopback_backends import read_raw_request
from tests.source_pins import source_digest as _digest

_JSON = b'{"ok":true}'
Reply = bytes | list[bytes] | None
"""An answer: its bytes in one write, in several (a pause between them; an empty last piece
closes the connection), or a close without an answer."""


def _ok(body: bytes = _JSON, *, extra: bytes = b"", head: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return (
        head
        + b"\r\nContent-Type: application/json; charset=utf-8\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


class Back:
    """A raw back-end: answers each request with ``answer(request bytes)``; counts the
    connections it accepted."""

    def __init__(self) -> None:
        self.answer: Callable[[bytes], Reply] = lambda _: _ok()
        self.requests: list[bytes] = []
        self.connections = 0
        self.hold = False
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (raw := await read_raw_request(reader)) is not None:
                self.requests.append(raw)
                if self.hold:
                    await asyncio.sleep(3600)
                reply = self.answer(raw)
                if reply is None:
                    return
                pieces = [reply] if isinstance(reply, bytes) else reply
                for i, piece in enumerate(pieces):
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
                    await writer.drain()
                if not pieces[-1]:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def back() -> AsyncIterator[Back]:
    server = Back()
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()


def _session(decompress: bool = False, **timeouts: float) -> aiohttp.ClientSession:
    """A session of a system's settings (``adapters.rest.open_session``), ``LeanHandler``
    installed."""
    return aiohttp.ClientSession(
        request_class=REQUEST_CLASS,
        connector=install(aiohttp.TCPConnector(limit=4, limit_per_host=0)),
        headers={"User-Agent": "tongban", "Accept-Encoding": "identity", "Accept": "x/y"},
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, **timeouts),
        auto_decompress=decompress,
        raise_for_status=False,
    )


Seen = tuple[Any, ...]


def _seen(answer: Any, body: bytes) -> Seen:
    return (
        answer.status,
        answer.reason,
        answer.version,
        list(answer.headers.items()),
        body,
        answer.charset,
        answer.content_type,
        answer.content_length,
    )


async def _by_aiohttp(session: aiohttp.ClientSession, method: str, url: URL) -> Seen:
    try:
        async with session.request(method, url, data=b"{}", allow_redirects=False) as answer:
            return _seen(answer, await answer.read())
    except Exception as exc:  # compared by type and text
        return ("error", type(exc), str(exc))


async def _by_fetch(sender: LeanSender, method: str, url: URL) -> tuple[Seen, bool]:
    """What the caller sees, and whether the lean read took the answer."""
    try:
        answer = await sender.fetch(method, url, sender.headers({}), b"{}")
        if isinstance(answer, LeanAnswer):
            return _seen(answer, answer.body), True
        try:
            return _seen(answer, await answer.read()), False
        finally:
            answer.release()
            await answer.wait_for_close()
    except Exception as exc:
        return ("error", type(exc), str(exc)), False


async def _both(
    back: Back, answer: Callable[[bytes], Reply], method: str = "POST", decompress: bool = False
) -> tuple[Seen, Seen, bool]:
    """The answer read by ``session.request`` and by ``fetch``, each on a session of its own,
    followed by a plain request on the same session: whether the connection was kept is seen
    in the back-end's count of connections."""
    url = URL(f"http://127.0.0.1:{back.port}/a")
    outcomes: list[Any] = []
    for lean in (False, True):
        session = _session(decompress)
        try:
            back.answer = answer
            before = back.connections
            if lean:
                sender = LeanSender.for_(session, url.origin(), ())
                assert sender is not None
                seen, took = await _by_fetch(sender, method, url)
            else:
                seen, took = await _by_aiohttp(session, method, url), False
            back.answer = lambda _: _ok()
            after = await _by_aiohttp(session, "GET", url)
            assert after[0] == 200
            outcomes.append(((*seen, back.connections - before), took))
        finally:
            await session.close()
    (plain, _), (lean_seen, took) = outcomes
    return plain, lean_seen, took


def _chunked(_: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n'
    )


def _gzipped(_: bytes) -> bytes:
    return _ok(gzip.compress(_JSON, mtime=0), extra=b"Content-Encoding: gzip\r\n")


def _bad_gzip(_: bytes) -> bytes:
    return _ok(b"not gzip at all", extra=b"Content-Encoding: gzip\r\n")


# Taken by the lean read: the whole answer in the one read.
WHOLE: dict[str, Callable[[bytes], Reply]] = {
    "content-length": lambda _: _ok(),
    "empty body": lambda _: _ok(b""),
    "chunked": _chunked,
    "503 with Retry-After": lambda _: (
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy"
    ),
    "204": lambda _: b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "304": lambda _: b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
    "HTTP/1.0 with a length": lambda _: _ok(head=b"HTTP/1.0 200 OK"),
    "HTTP/1.0 kept alive": lambda _: _ok(
        head=b"HTTP/1.0 200 OK", extra=b"Connection: keep-alive\r\n"
    ),
    "Connection: close": lambda _: _ok(extra=b"Connection: close\r\n"),
    "no reason": lambda _: _ok(head=b"HTTP/1.1 200 "),
    "a header not UTF-8": lambda _: _ok(extra=b"X-Name: \xd5\xc5\xc8\xfd\r\n"),
    "repeated headers": lambda _: _ok(extra=b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nVary: x\r\n"),
    "no content type": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "bytes after the answer": lambda _: _ok() + b"HTTP/1.1 20",
    "the head in two writes": lambda _: [b"HTTP/1.1 200 OK\r\nContent-Le", _ok()[17:]],
    "gzip": _gzipped,
}

# Hostile, and taken or refused by aiohttp's parser as it judges them: the lean read sees what
# the parser made of them, whatever that is.
LENIENT: dict[str, Callable[[bytes], Reply]] = {
    "obs-fold": lambda _: _ok(extra=b"X-Folded: a\r\n b\r\n"),
    "bare LF": lambda _: b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
    "bare LF in the body's chunks": lambda _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\n0\n\n"
    ),
    "HTTP/2.0": lambda _: _ok(head=b"HTTP/2.0 200 OK"),
    "HTTP/1.1 without reason or space": lambda _: _ok(head=b"HTTP/1.1 200"),
    "tab in a value": lambda _: _ok(extra=b"X-Tab: a\tb\r\n"),
    "Transfer-Encoding gzip, chunked": lambda _: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "Content-Length with spaces": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length:  2 \r\n\r\nhi",
    "Content-Length with a plus": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi",
    "Content-Length 2, 2": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi",
    "a header without a colon": lambda _: _ok(extra=b"X-No-Colon\r\n"),
    "an empty header name": lambda _: _ok(extra=b": empty\r\n"),
    "UTF-8 in a header name": lambda _: _ok(extra="X-名: 1\r\n".encode()),
    "a body longer than declared": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello",
}

# Left to aiohttp's path: unusual, incomplete or hostile.
OTHER: dict[str, Callable[[bytes], Reply]] = {
    "the body in a second write": lambda _: [_ok()[:-4], _ok()[-4:]],
    "delimited by the close": lambda _: [b"HTTP/1.1 200 OK\r\n\r\n", _JSON, b""],
    "HTTP/1.0 delimited by the close": lambda _: [b"HTTP/1.0 200 OK\r\n\r\n" + _JSON, b""],
    "cut short": lambda _: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", b""],
    "100 Continue first": lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(),
    "two answers at once": lambda _: _ok() + _ok(b"[]"),
    "closed without an answer": lambda _: None,
    "not HTTP": lambda _: b"NOT HTTP AT ALL\r\n\r\n",
    "duplicate Content-Length": lambda _: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
    ),
    "the same Content-Length twice": lambda _: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"
    ),
    "invalid Content-Length": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nab",
    "negative Content-Length": lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nab",
    "chunked and a length": lambda _: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    ),
    "CR inside a value": lambda _: _ok(extra=b"X-Injected: a\rInjected: 1\r\n"),
    "NUL inside a value": lambda _: _ok(extra=b"X-Nul: a\x00b\r\n"),
    "space before the colon": lambda _: _ok(extra=b"X-Space : 1\r\n"),
    "a head too large": lambda _: _ok(extra=b"X-Big: " + b"a" * 9000 + b"\r\n"),
    "too many headers": lambda _: _ok(extra=b"".join(b"X-%d: 1\r\n" % i for i in range(130))),
    "a status line too long": lambda _: _ok(head=b"HTTP/1.1 200 " + b"O" * 9000),
    "status 99": lambda _: _ok(head=b"HTTP/1.1 099 Low"),
    "status 1000": lambda _: _ok(head=b"HTTP/1.1 1000 High"),
    "bad chunk size": lambda _: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "101 upgrade": lambda _: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    ),
    "a large body": lambda _: _ok(b"x" * 300_000),
    "bad gzip": _bad_gzip,
}


@pytest.mark.parametrize("case", sorted(WHOLE))
@pytest.mark.parametrize("decompress", [False, True])
async def test_a_whole_answer_is_read_as_aiohttp_reads_it(
    back: Back, case: str, decompress: bool
) -> None:
    plain, lean, took = await _both(back, WHOLE[case], decompress=decompress)
    assert lean == plain
    assert plain[0] != "error"
    assert took  # the lean read took it
    if case == "gzip":
        assert plain[4] == (_JSON if decompress else gzip.compress(_JSON, mtime=0))


@pytest.mark.parametrize("case", sorted(OTHER))
@pytest.mark.parametrize("decompress", [False, True])
async def test_anything_else_is_read_by_aiohttps_path(
    back: Back, case: str, decompress: bool
) -> None:
    async with asyncio.timeout(30):
        plain, lean, took = await _both(back, OTHER[case], decompress=decompress)
    assert lean == plain
    if case == "bad gzip" and not decompress:
        assert took  # the bytes as they are: a whole answer
    elif case in ("a large body", "two answers at once", "bytes after the answer"):
        pass  # one read or several, as the kernel hands them over: the same either way
    else:
        assert not took


@pytest.mark.parametrize("case", sorted(LENIENT))
async def test_hostile_answers_are_judged_by_aiohttps_parser(back: Back, case: str) -> None:
    async with asyncio.timeout(30):
        plain, lean, _ = await _both(back, LENIENT[case])
    assert lean == plain


@pytest.mark.parametrize("method", ["HEAD", "GET", "DELETE"])
@pytest.mark.parametrize("status", [b"200 OK", b"204 No Content", b"304 Not Modified"])
async def test_answers_without_a_body(back: Back, method: str, status: bytes) -> None:
    def answer(_: bytes) -> bytes:
        if method == "HEAD" or status != b"200 OK":
            return b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\nETag: e\r\n\r\n"
        return b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n"

    plain, lean, took = await _both(back, answer, method)
    assert lean == plain
    assert plain[4] == b""
    assert took


async def test_a_read_timeout_is_aiohttps(back: Back) -> None:
    back.hold = True
    url = URL(f"http://127.0.0.1:{back.port}/a")
    seen = []
    for lean in (False, True):
        session = _session(sock_read=0.05)
        try:
            async with asyncio.timeout(30):
                if lean:
                    sender = LeanSender.for_(session, url.origin(), ())
                    assert sender is not None
                    seen.append((await _by_fetch(sender, "POST", url))[0])
                else:
                    seen.append(await _by_aiohttp(session, "POST", url))
        finally:
            await session.close()
    assert seen[0][:2] == ("error", aiohttp.SocketTimeoutError)
    assert seen[1] == seen[0]


async def test_a_cancelled_read_closes_the_connection(back: Back) -> None:
    back.hold = True
    url = URL(f"http://127.0.0.1:{back.port}/a")
    session = _session()
    try:
        sender = LeanSender.for_(session, url.origin(), ())
        assert sender is not None
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await sender.fetch("POST", url, sender.headers({}), b"{}")
        connector = session.connector
        assert connector is not None
        assert not connector._conns  # not pooled
        assert not connector._acquired
    finally:
        await session.close()


async def test_keep_alive_and_the_pool_limit(back: Back) -> None:
    session = _session()  # limit 4
    try:
        url = URL(f"http://127.0.0.1:{back.port}/a")
        sender = LeanSender.for_(session, url.origin(), ())
        assert sender is not None

        async def one() -> bytes:
            answer = await sender.fetch("GET", url, sender.headers({}), None)
            assert isinstance(answer, LeanAnswer)
            return answer.body

        assert await asyncio.gather(*(one() for _ in range(12))) == [_JSON] * 12
        assert await one() == _JSON
    finally:
        await session.close()
    assert 1 <= back.connections <= 4
    assert len(back.requests) == 13


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_a_dead_pooled_connection(back: Back, method: str) -> None:
    """An idempotent request is sent again on a fresh connection, a POST is not, as by
    aiohttp: the back-end closes the kept connection on reading the second request."""
    answered = 0

    def answer(_: bytes) -> Reply:
        nonlocal answered
        answered += 1
        return None if answered == 2 else _ok()

    back.answer = answer
    url = URL(f"http://127.0.0.1:{back.port}/a")
    session = _session()
    try:
        sender = LeanSender.for_(session, url.origin(), ())
        assert sender is not None
        first = await sender.fetch(method, url, sender.headers({}), b"{}")
        assert isinstance(first, LeanAnswer)
        seen = (await _by_fetch(sender, method, url))[0]
    finally:
        await session.close()
    if method == "PUT":
        assert seen[0] == 200
        assert len(back.requests) == 3
    else:
        assert seen[:2] == ("error", aiohttp.ServerDisconnectedError)
        assert len(back.requests) == 2


async def test_a_large_put_sent_again_on_a_dead_connection_is_sent_whole(back: Back) -> None:
    """A body past the writer's buffer goes out by aiohttp's ``send`` with its payload; sent
    again on a fresh connection, it is that payload, written whole by ``send`` again."""
    answered = 0

    def answer(_: bytes) -> Reply:
        nonlocal answered
        answered += 1
        return None if answered == 2 else _ok()

    back.answer = answer
    url = URL(f"http://127.0.0.1:{back.port}/a")
    body = b"p" * 70_000
    session = _session()
    try:
        sender = LeanSender.for_(session, url.origin(), ())
        assert sender is not None
        await sender.fetch("PUT", url, sender.headers({}), b"{}")
        async with asyncio.timeout(30):
            again = await sender.fetch("PUT", url, sender.headers({}), body)
        assert again.status == 200
        if not isinstance(again, LeanAnswer):
            again.release()
    finally:
        await session.close()
    assert len(back.requests) == 3
    assert back.requests[1] == back.requests[2]
    assert back.requests[2].endswith(b"\r\n\r\n" + body)


def test_the_connector_makes_lean_handlers() -> None:
    async def made() -> type:
        connector = install(aiohttp.TCPConnector())
        try:
            return type(connector._factory())
        finally:
            await connector.close()

    assert asyncio.run(made()) is LeanHandler


# --- the aiohttp code the read stands in for ------------------------------------------------

_READ_PATH: dict[str, Any] = {
    "ResponseHandler.data_received": client_proto.ResponseHandler.data_received,
    "ResponseHandler.set_exception": client_proto.ResponseHandler.set_exception,
    "ResponseHandler.connection_lost": client_proto.ResponseHandler.connection_lost,
    "ResponseHandler.should_close": vars(client_proto.ResponseHandler)["should_close"].fget,
    "ResponseHandler.__init__": client_proto.ResponseHandler.__init__,
    "ClientResponse.start": client_reqrep.ClientResponse.start,
    "ClientResponse._response_eof": client_reqrep.ClientResponse._response_eof,
    "ClientResponse.read": client_reqrep.ClientResponse.read,
    "ClientResponse.release": client_reqrep.ClientResponse.release,
    "Connection.release": connector.Connection.release,
    "BaseConnector.__init__": connector.BaseConnector.__init__,
    "DataQueue.feed_data": streams.DataQueue.feed_data,
    "DataQueue.read": streams.DataQueue.read,
    "StreamReader.read": streams.StreamReader.read,
    "StreamReader.readany": streams.StreamReader.readany,
    "StreamReader._read_nowait": streams.StreamReader._read_nowait,
    "StreamReader._read_nowait_chunk": streams.StreamReader._read_nowait_chunk,
    "StreamReader.feed_data": streams.StreamReader.feed_data,
    "HeadersMixin": helpers.HeadersMixin,
}

PINNED = {
    "ResponseHandler.data_received": "9bf7ecf8e50516cd",
    "ResponseHandler.set_exception": "83971750bbd9f2f9",
    "ResponseHandler.connection_lost": "84b98dfd8035e493",
    "ResponseHandler.should_close": "fef595ed5edda3ff",
    "ResponseHandler.__init__": "941647862894afb9",
    "ClientResponse.start": "bcbf178da3660180",
    "ClientResponse._response_eof": "e6e30c2f14a2c7a2",
    "ClientResponse.read": "87a96c28a5518708",
    "ClientResponse.release": "91ea7fefe948cf98",
    "Connection.release": "985a11c93791a858",
    "BaseConnector.__init__": "99db6b24033bb11d",
    "DataQueue.feed_data": "632cf6724ef9c400",
    "DataQueue.read": "1340dfce4e1945b4",
    "StreamReader.read": "d2bec4bad05656dc",
    "StreamReader.readany": "766f946ae360b8ea",
    "StreamReader._read_nowait": "05fc75740b9d4d63",
    "StreamReader._read_nowait_chunk": "672849652cf250d3",
    "StreamReader.feed_data": "7548cdda3ea70bf8",
    "HeadersMixin": "58cb0c81e4db3a86",
}


def test_the_aiohttp_read_path_is_unchanged() -> None:
    changed = {name for name, f in _READ_PATH.items() if _digest(f) != PINNED[name]}
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed {sorted(changed)}: check LeanHandler in "
        "adapters/lean_read.py against the new code before updating PINNED"
    )


def test_the_private_state_read_is_there() -> None:
    # What LeanHandler reads of the protocol, its queue and the body's stream reader.
    for name in ("_buffer", "_eof", "_exception", "_size"):
        assert name in streams.StreamReader.__slots__
    assert vars(lean_read)["EMPTY_PAYLOAD"] is streams.EMPTY_PAYLOAD

    async def state() -> set[str]:
        handler = LeanHandler(asyncio.get_running_loop())
        slots: tuple[str, ...] = vars(base_protocol.BaseProtocol)["__slots__"]
        return set(vars(handler)) | set(slots)

    names = asyncio.run(state())
    for name in ("_buffer", "_exception", "_payload_parser", "_tail", "_parser", "_upgraded"):
        assert name in names, name
    assert "_reading_paused" in names
