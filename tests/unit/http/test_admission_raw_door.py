"""The door's refusal from raw bytes: the same answer as from a parsed request, only for what
aiohttp's parser would read the same way, and only while that parser stands between requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.http.admission import (
    ADMISSION,
    Admission,
    _DoorHandler,
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


async def test_a_request_like_the_last_one_refused_is_refused_unparsed_alike(
    door: _Door,
) -> None:
    door.handler.data_received(_post())
    assert door.parsed == 1
    assert not door.handler._messages
    parsed = door.transport.written.pop()
    door.handler.data_received(_post())
    assert door.parsed == 1  # not fed to aiohttp's parser
    raw = door.transport.written.pop()
    assert _answer(raw) == _answer(parsed)
    assert _answer(raw)[0][0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Connection: close" not in raw
    assert not door.handler._force_close
    ids = {json.loads(x.partition(b"\r\n\r\n")[2])["request_id"] for x in (raw, parsed)}
    assert len(ids) == 2
    assert door.admission._rids == 2
    assert door.handler._request_count == 2


async def test_only_the_same_head_and_length_are_refused_unparsed(door: _Door) -> None:
    handler = door.handler
    handler.data_received(_post())
    handler.data_received(_post().replace(BODY, BODY.upper()))  # another body, same length
    assert door.parsed == 1
    # Another head (the query): parsed, refused, and the head kept from then on.
    handler.data_received(_post("/api/v1/calls?x=1"))
    assert door.parsed == 2
    handler.data_received(_post("/api/v1/calls?x=1"))
    assert door.parsed == 2
    assert len(door.transport.written) == 4
    # Health: parsed, handed on, answered by its handler.
    handler.data_received(_post("/healthz"))
    assert door.parsed == 3
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(door.transport.written) > 4
    assert b"503" not in b"".join(door.transport.written[4:])


async def test_a_longer_read_with_the_same_head_is_parsed(door: _Door) -> None:
    handler = door.handler
    handler.data_received(_post())
    handler.data_received(_post() + b"P")  # a second request begun in the same read
    assert door.parsed == 2
    assert handler.at_boundary is False
    handler.data_received(_post()[1:])  # ... and the rest of it: parsed, refused
    assert door.parsed == 3
    assert len(door.transport.written) == 3
    handler.data_received(_post())  # where the parser stands is not known any more: parsed
    assert door.parsed == 4
    assert len(door.transport.written) == 4


async def test_a_client_asking_to_close_gets_its_answer_and_the_close(door: _Door) -> None:
    door.handler.data_received(_post(version=b"1.0"))
    assert b"\r\nConnection: close\r\n" in door.transport.written[-1]
    assert door.handler._force_close
    assert door.handler.refused_head is None


async def test_what_may_not_be_refused_goes_to_the_parser(door: _Door) -> None:
    door.handler.data_received(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert door.parsed == 1
    assert not door.transport.written  # handed on to the health answer
    assert door.handler.at_boundary  # one whole request: the parser stands between requests
    assert door.handler.refused_head is None


async def test_split_and_pipelined_reads_leave_it_to_the_parser(door: _Door) -> None:
    handler, request = door.handler, _post()
    head = request.index(b"\r\n\r\n") + 4
    handler.data_received(request[:head])
    handler.data_received(request[head:])
    assert handler.at_boundary is False
    for _ in range(10):  # handed on (its body was not in): the middleware refuses it
        await asyncio.sleep(0)
    handler.data_received(request)
    handler.data_received(request + request)
    handler.data_received(request)
    assert door.parsed == 5
    assert handler.refused_head is None
    ids = [json.loads(x.partition(b"\r\n\r\n")[2])["request_id"] for x in door.transport.written]
    assert len(set(ids)) == 5
    assert door.admission._rids == 5


async def test_below_the_bound_the_same_request_is_taken_in(door: _Door) -> None:
    door.handler.data_received(_post())
    door.admission.in_flight = 0
    door.handler.data_received(_post())
    assert door.parsed == 2
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(door.transport.written) == 2
    assert b"HTTP/1.1 200 OK" in door.transport.written[1]
