"""The door's refusal from raw bytes: the same answer as from a parsed request, only for what
aiohttp's parser would read the same way, and only while that parser stands between requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import Mock

import pytest
from aiohttp import web
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from gateway.http.admission import (
    ADMISSION,
    Admission,
    _DoorHandler,
    _simple_request,
    admission_middleware,
    refuse_at_the_door,
)
from gateway.settings import AdmissionSettings

BODY = b'{"service": "demo", "operation": "get"}'


def _post(path: str = "/api/v1/calls", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/" + version + b"\r\nHost: gw\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer a.b.c\r\n" + extra
        + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
    )  # fmt: skip


PLAIN = [
    _post(),
    _post("/api/v1/calls?x=1&y=%20"),
    _post(extra=b"Connection: close\r\n"),
    _post(extra=b"connection:  Keep-Alive , foo\r\n"),
    _post(version=b"1.0"),
    _post(version=b"1.0", extra=b"Connection: keep-alive\r\n"),
    _post(version=b"1.0", extra=b"Connection: close, keep-alive\r\n"),
    b"GET /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"HEAD /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"DELETE /x HTTP/1.1\r\nhost: gw\r\ncontent-length:\t0\t\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Empty:\r\nX-Tab: a\tb\r\n\r\n",
    b"GET /x HTTP/1.0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Twice: 1\r\nX-Twice: 2\r\n\r\n",
]
NOT_PLAIN = [
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nContent-Length: 3 3\r\n\r\nabc",
    b"GET /x HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"GET /x HTTP/1.1\nHost: gw\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: g\rw\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: gw\r\n folded\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: g\x00w\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: g\xc3\xa9\r\n\r\n",
    b"GET http://gw/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET /x HTTP/2.0\r\nHost: gw\r\n\r\n",
    b"GET  /x HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: gw\r\n",  # no whole head yet
    b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n",  # no Host
    b"GET /x HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /x HTTP/1.1\r\n" + b"X: a\r\n" * 80 + b"\r\n",
]


async def _parsed(data: bytes) -> list[tuple[Any, Any]]:
    """What aiohttp's own parser makes of ``data``."""
    loop = asyncio.get_running_loop()
    protocol = Mock(transport=None, _reading_paused=False)
    parser = HttpRequestParser(protocol, loop, 2**16, max_line_size=8190, max_field_size=8190)
    messages, _, _ = parser.feed_data(data)
    return list(messages)


@pytest.mark.parametrize("data", PLAIN)
async def test_a_plain_request_reads_as_aiohttp_parser_reads_it(data: bytes) -> None:
    simple = _simple_request(data)
    assert simple is not None
    method, path, close, head, body = simple
    assert head + body == len(data)
    [(message, payload)] = await _parsed(data)
    assert message.method == method.decode()
    assert message.path.partition("?")[0] == path.decode()
    assert message.should_close is close
    assert payload is EMPTY_PAYLOAD or payload.is_eof()
    assert (b"" if payload is EMPTY_PAYLOAD else await payload.read()) == data[head:]
    # The same with the next request's bytes after it: the head and body end where they did.
    again = _simple_request(data + data)
    assert again is not None
    assert again[3:] == (head, body)
    if not close:
        assert len(await _parsed(data + data)) == 2


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_anything_else_is_left_to_aiohttp_parser(data: bytes) -> None:
    assert _simple_request(data) is None


# --- the handler --------------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class _Door:
    def __init__(self, admission: Admission, handler: _DoorHandler, transport: _Transport):
        self.admission = admission
        self.handler = handler
        self.transport = transport
        self.parsed = 0
        """Calls of aiohttp's own data_received (its parser fed)."""


@pytest.fixture
async def door(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Door]:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(middlewares=[admission_middleware])
    app.router.add_route("*", "/{tail:.*}", ok)
    settings = AdmissionSettings(max_in_flight=1, min_in_flight=1, queue_delay_target_ms=0)
    admission = app[ADMISSION] = Admission(settings, 1 << 20)
    admission.in_flight = 1  # at the bound
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
    await runner.setup()
    assert runner.server is not None
    refuse_at_the_door(runner.server, admission)
    handler = runner.server()
    assert isinstance(handler, _DoorHandler)
    transport = _Transport()
    handler.connection_made(transport)
    for _ in range(3):
        await asyncio.sleep(0)  # the handler's task waits for a request
    out = _Door(admission, handler, transport)
    feed = RequestHandler.data_received

    def counted(self: RequestHandler, data: bytes) -> None:
        out.parsed += 1
        feed(self, data)

    monkeypatch.setattr(RequestHandler, "data_received", counted)
    yield out
    handler.force_close()
    handler.connection_lost(None)
    await runner.cleanup()


def _answer(raw: bytes) -> tuple[list[bytes], dict[str, Any]]:
    """The head's lines without the request id's and date's values, and the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    problem = json.loads(body)
    lines = [
        line.split(b":")[0] if line.startswith((b"X-Request-ID:", b"Date:")) else line
        for line in head.split(b"\r\n")
    ]
    assert len(body) == int(next(x for x in lines if x.startswith(b"Content-Length:"))[15:])
    problem.pop("request_id")
    return lines, problem


async def test_a_plain_request_is_refused_unparsed_with_the_parsed_path_answer(door: _Door) -> None:
    door.handler.data_received(_post())
    assert door.parsed == 0
    assert not door.handler._messages
    raw = door.transport.written.pop()
    # The same request through the parsed path (as for a connection not between requests).
    door.handler.at_boundary = False
    door.handler.body_due = -1
    door.handler.data_received(_post())
    assert door.parsed == 1
    parsed = door.transport.written.pop()
    assert _answer(raw) == _answer(parsed)
    assert _answer(raw)[0][0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Connection: close" not in raw
    assert not door.handler._force_close
    ids = {json.loads(x.partition(b"\r\n\r\n")[2])["request_id"] for x in (raw, parsed)}
    assert len(ids) == 2
    assert door.admission._rids == 2


async def test_a_client_asking_to_close_gets_its_answer_and_the_close(door: _Door) -> None:
    door.handler.data_received(_post(version=b"1.0"))
    assert door.parsed == 0
    assert b"\r\nConnection: close\r\n" in door.transport.written[-1]
    assert door.handler._force_close


async def test_what_may_not_be_refused_unparsed_goes_to_the_parser(door: _Door) -> None:
    door.handler.data_received(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert door.parsed == 1
    assert not door.transport.written
    assert door.handler.at_boundary  # one whole request: the parser stands between requests


async def test_the_door_follows_the_parser_through_split_and_pipelined_requests(
    door: _Door,
) -> None:
    handler, request = door.handler, _post()
    head = request.index(b"\r\n\r\n") + 4
    # The head first, then the body in two parts: parsed and refused there; between requests
    # again once the body's last byte is in, and the next one is refused unparsed.
    handler.data_received(request[:head])
    assert (handler.at_boundary, handler.body_due) == (False, len(BODY))
    handler.data_received(request[head : head + 5])
    assert (handler.at_boundary, handler.body_due) == (False, len(BODY) - 5)
    handler.data_received(request[head + 5 :])
    assert (handler.at_boundary, handler.body_due) == (True, 0)
    for _ in range(10):  # handed on (its body was not in): the middleware refuses it
        await asyncio.sleep(0)
    assert door.parsed == 3
    assert len(door.transport.written) == 1
    handler.data_received(request)
    assert door.parsed == 3
    assert len(door.transport.written) == 2
    # Two requests in one read: both parsed and refused in order; where the parser stands
    # after bytes that are not one plain request is not known, so the parser takes all from
    # then on, and still refuses at the door.
    handler.data_received(request + request)
    assert door.parsed == 4
    assert len(door.transport.written) == 4
    assert (handler.at_boundary, handler.body_due) == (False, -1)
    handler.data_received(request)
    assert door.parsed == 5
    assert len(door.transport.written) == 5
    ids = [json.loads(x.partition(b"\r\n\r\n")[2])["request_id"] for x in door.transport.written]
    assert len(set(ids)) == 5
    assert door.admission._rids == 5


async def test_a_head_with_the_start_of_the_next_request_is_not_known_any_more(
    door: _Door,
) -> None:
    door.admission.in_flight = 0  # not at the bound: the parser takes everything
    door.handler.data_received(_post() + b"POST /api/v1/calls HTTP/1.1\r\nHo")
    assert (door.handler.at_boundary, door.handler.body_due) == (False, -1)


async def test_below_the_bound_nothing_is_refused_and_the_door_still_follows(door: _Door) -> None:
    door.admission.in_flight = 0
    door.handler.data_received(_post())
    assert door.parsed == 1
    assert not door.transport.written
    assert door.handler.at_boundary
