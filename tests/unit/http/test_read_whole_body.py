"""read_whole_body keeps what ``await request.read()`` keeps, for a body already in."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestHandler

from gateway.http.client_io import read_whole_body
from tests.source_pins import source_digest as _digest


def _request(
    chunks: list[bytes],
    *,
    limit: int = 1024,
    error: Exception | None = None,
    protocol: Any = None,
) -> Any:
    protocol = protocol or mock.Mock(_reading_paused=False)
    payload = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        payload.feed_data(chunk)
    payload.feed_eof()
    if error is not None:
        payload.set_exception(error)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return make_mocked_request(
        "POST", "/x", headers=headers, payload=payload, client_max_size=limit
    )


BODIES = [
    [b'{"a": 1}'],
    [b"a=1&b=", b"2", b"&c=3"],
    [b""],
    [b"x" * 1024],
    [b"x" * 600, b"y" * 424],
]


@pytest.mark.parametrize("chunks", BODIES)
async def test_the_same_bytes_and_form_as_read(chunks: list[bytes]) -> None:
    read = _request(chunks)
    expected = await read.read()
    taken = _request(chunks)
    assert taken.content.is_eof()
    read_whole_body(taken)
    assert await taken.read() == expected == b"".join(chunks)
    assert dict(await taken.post()) == dict(await read.post())
    assert taken.content.at_eof()
    read_whole_body(taken)  # a second time: kept as it is
    assert await taken.read() == expected


@pytest.mark.parametrize("chunks", [[b"x" * 1025], [b"x" * 1000, b"y" * 25]])
async def test_a_body_over_the_limit_is_refused_as_read_refuses_it(chunks: list[bytes]) -> None:
    with pytest.raises(web.HTTPRequestEntityTooLarge) as refused:
        await _request(chunks).read()
    with pytest.raises(web.HTTPRequestEntityTooLarge) as taken:
        read_whole_body(_request(chunks))
    assert taken.value.text == refused.value.text
    assert taken.value.status == refused.value.status


async def test_the_streams_error_is_raised_as_read_raises_it() -> None:
    with pytest.raises(ConnectionResetError):
        await _request([b"{}"], error=ConnectionResetError("gone")).read()
    with pytest.raises(ConnectionResetError):
        read_whole_body(_request([b"{}"], error=ConnectionResetError("gone")))


def _protocol(*, reading_paused: bool = False, buffer_paused: bool = False) -> Any:
    return mock.Mock(_reading_paused=reading_paused, _buffer_paused=buffer_paused)


@pytest.mark.parametrize("chunks", BODIES)
async def test_a_connection_reading_on_is_not_asked_to_resume(chunks: list[bytes]) -> None:
    """One chunk on a connection whose reading is not held back: the same bytes and the same
    stream state as ``read``, without the protocol's resume (an empty parse); several chunks
    go ``read_nowait``'s way, resume included."""
    read = _request(chunks, protocol=_protocol())
    expected = await read.read()
    protocol = _protocol()
    taken = _request(chunks, protocol=protocol)
    protocol.resume_reading.reset_mock()  # feed_eof's own resume, as the server's
    read_whole_body(taken)
    assert await taken.read() == expected == b"".join(chunks)
    content, other = taken.content, read.content
    assert (content._size, content._cursor, len(content._buffer)) == (
        other._size,
        other._cursor,
        len(other._buffer),
    )
    assert protocol.resume_reading.called == (len(chunks) > 1)


@pytest.mark.parametrize(("reading", "buffer"), [(True, False), (False, True), (True, True)])
async def test_a_connection_held_back_is_asked_to_resume_as_read_asks(
    reading: bool, buffer: bool
) -> None:
    protocol = _protocol(reading_paused=reading, buffer_paused=buffer)
    taken = _request([b'{"a": 1}'], protocol=protocol)
    protocol.resume_reading.reset_mock()
    read_whole_body(taken)
    assert await taken.read() == b'{"a": 1}'
    protocol.resume_reading.assert_called_once_with()


PINNED = {
    "BaseRequest.read": (web.BaseRequest.read, "5b94964416f69903"),
    "StreamReader._read_nowait_chunk": (StreamReader._read_nowait_chunk, "672849652cf250d3"),
    "BaseProtocol.resume_reading": (BaseProtocol.resume_reading, "21dee847a31af724"),
    "RequestHandler.data_received": (RequestHandler.data_received, "1ee57ebe052e6c80"),
    "StreamReader.read_nowait": (StreamReader.read_nowait, "e340a15bd631cecb"),
    "StreamReader._read_nowait": (StreamReader._read_nowait, "05fc75740b9d4d63"),
    "StreamReader.readany": (StreamReader.readany, "766f946ae360b8ea"),
}


def test_the_aiohttp_code_stood_in_for_is_unchanged() -> None:
    changed = sorted(name for name, (f, pinned) in PINNED.items() if _digest(f) != pinned)
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed {changed}: check read_whole_body "
        "(gateway/http/client_io.py) against the new code before updating PINNED"
    )


def test_the_private_attributes_used_exist() -> None:
    assert "_read_bytes" in web.BaseRequest.ATTRS
    assert web.BaseRequest._read_bytes is None
    for name in ("_buffer", "_protocol", "_exception", "_waiter", "_buffer_offset"):
        assert name in StreamReader.__slots__
    for name in ("_http_chunk_splits", "_timer", "_size", "_cursor"):
        assert name in StreamReader.__slots__
    assert {"_reading_paused", "_buffer_paused"} <= set(BaseProtocol.__slots__)
