"""A call's body read whole (``read_whole_body``) on a connection behind the door: aiohttp's
parser is fed the client's reads only, not an empty one, so a keep-alive connection that sent
an admitted call still stands between two requests and a later refusal of the same request is
answered from its bytes, alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.http.admission import ADMISSION, Admission, admission_middleware, refuse_at_the_door
from gateway.http.client_io import read_whole_body
from gateway.settings import AdmissionSettings
from tests.unit.http.test_admission_raw_door import _answer, _Door, _post, _Transport


@pytest.fixture
async def door(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[_Door]:
    async def ok(request: web.Request) -> web.Response:
        assert request.content.is_eof()  # one read held the whole request
        read_whole_body(request)
        return web.Response(body=await request.read())

    app = web.Application(middlewares=[admission_middleware])
    app.router.add_route("*", "/{tail:.*}", ok)
    settings = AdmissionSettings(max_in_flight=1, min_in_flight=1, queue_delay_target_ms=0)
    admission = app[ADMISSION] = Admission(settings, 1 << 20)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
    await runner.setup()
    assert runner.server is not None
    refuse_at_the_door(runner.server, admission)
    handler = runner.server()
    transport = _Transport()
    handler.connection_made(transport)
    for _ in range(3):
        await asyncio.sleep(0)
    out = _Door(admission, handler, transport)  # type: ignore[arg-type]
    feed = RequestHandler.data_received

    def counted(self: RequestHandler, data: bytes) -> None:
        out.parsed += 1
        feed(self, data)

    monkeypatch.setattr(RequestHandler, "data_received", counted)
    yield out
    handler.force_close()
    handler.connection_lost(None)
    await runner.cleanup()


async def _answered(door: _Door, count: int) -> None:
    for _ in range(20):
        if len(door.transport.written) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(door.transport.written)} answers, not {count}")


async def test_an_admitted_call_leaves_the_connection_between_requests(door: _Door) -> None:
    door.handler.data_received(_post())
    await _answered(door, 1)
    assert door.transport.written[0].startswith(b"HTTP/1.1 200 OK")
    assert door.transport.written[0].endswith(_post().partition(b"\r\n\r\n")[2])
    assert door.parsed == 1  # the client's read only: no empty parse when the body was read
    assert door.handler.at_boundary
    for _ in range(3):
        await asyncio.sleep(0)  # the connection's task back at its wait
    door.admission.in_flight = 1  # at the bound now
    door.handler.data_received(_post())
    assert door.parsed == 2
    parsed = door.transport.written.pop()
    door.handler.data_received(_post())
    assert door.parsed == 2  # refused from its bytes
    again = door.transport.written.pop()
    assert _answer(again) == _answer(parsed)
    assert _answer(again)[0][0] == b"HTTP/1.1 503 Service Unavailable"
