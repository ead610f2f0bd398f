"""The client's side of a request: its body must arrive in time, and a client that goes away
mid-request is a client abort (logged with status 499, as nginx does), not a server error.

The body of every request that has one is read here, under ``server.body_timeout``, before any
other middleware or handler sees the request; aiohttp keeps it, so ``request.read()``,
``json()`` and ``post()`` later answer from memory. A body slower than that is ``408
client.request_timeout`` and the connection is closed. A connection lost while the body is read
(``ConnectionResetError``) ends the request quietly: nobody is left to answer, the access line
says 499, and no traceback is logged. The header and idle timeouts are aiohttp's keep-alive
timer (``server.idle_timeout``, set where the server starts: gateway/serve.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from aiohttp.helpers import TimerNoop
from aiohttp.streams import StreamReader

from gateway.errors import (
    InvalidRequest,
    MalformedJson,
    RequestTimeout,
    UnsupportedMediaType,
)
from gateway.http.keys import LOG_FIELDS, REQUEST_ID, SETTINGS
from gateway.http.middlewares import Handler
from gateway.http.problem import problem_response

log = structlog.get_logger("tongban.http")

CLIENT_CLOSED_REQUEST: Final = 499
"""nginx's status for a request whose client closed the connection before the answer."""


@web.middleware
async def client_io_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the body under the body timeout; a client abort is a 499 line, not a 500."""
    early = await read_body(request)
    if early is not None:
        return early
    try:
        return await handler(request)
    except ConnectionResetError as exc:
        return aborted_or_raise(request, exc)


async def read_body(request: web.Request) -> web.StreamResponse | None:
    """The request's body read under the body timeout: None when it is in, or the answer
    already given (408, sent and the connection closed) or due (499, the client left)."""
    if not request.body_exists:
        return None
    if request.content.is_eof():
        # The whole body has arrived with the head (a small one nearly always has): reading it
        # cannot wait, so there is no timer to arm.
        try:
            read_whole_body(request)
        except ConnectionResetError:
            return client_aborted(request)
        return None
    timeout = request.app[SETTINGS].gateway.server.body_timeout
    try:
        async with asyncio.timeout(timeout):
            await request.read()
    except TimeoutError:
        request[LOG_FIELDS]["error_code"] = RequestTimeout.code
        log.info("request_body_timeout", timeout_s=timeout)
        error = RequestTimeout(f"The request body did not arrive within {timeout:g} seconds.")
        response = problem_response(error, request.get(REQUEST_ID, ""), request.path)
        response.force_close()
        response.headers["X-Request-ID"] = request.get(REQUEST_ID, "")
        # Sent now and the connection closed: aiohttp would otherwise linger, reading
        # what is left of the body for another lingering_time.
        await response.prepare(request)
        await response.write_eof()
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionResetError:
        return client_aborted(request)
    return None


def read_whole_body(request: web.Request) -> None:
    """``await request.read()`` for a body whose stream is at its end (the whole body is in
    its buffer), in one step: the buffer taken at once (``read_nowait``, which raises the
    stream's error as ``read`` does) and kept where ``read`` keeps it, so ``read``, ``json``
    and ``post`` answer from memory afterwards. ``read`` takes the same bytes in two awaited
    ``readany`` steps, copying them into a bytearray and out again. A body over the app's
    ``client_max_size`` is refused as ``read`` refuses it (413)."""
    if request._read_bytes is not None:
        return
    content = request.content
    data = _whole_chunk(content)
    if data is None:
        data = content.read_nowait()
    limit = request.client_max_size
    if limit and len(data) > limit:
        raise web.HTTPRequestEntityTooLarge(limit)
    request._read_bytes = data


def _whole_chunk(content: StreamReader) -> bytes | None:
    """The body of a stream at its end held in one chunk, taken as ``read_nowait`` takes it
    (the chunk out of the buffer, the size and cursor moved on) but without its last step
    when the connection's reading is not held back: ``_read_nowait_chunk`` then asks the
    protocol to resume reading, which feeds aiohttp's parser an empty read
    (``data_received(b"")``, through the door's own ``data_received``) and resumes a transport
    that is not paused. With neither flag set the parser holds no bytes back (it keeps some
    only after pausing, which sets one of them) and the transport reads on, so that step does
    nothing. None for anything else (an error, a waiter, several chunks, chunked framing, a
    read timer, reading held back): ``read_nowait`` takes it."""
    buffer = content._buffer
    protocol = content._protocol
    if (
        content._exception is not None
        or content._waiter is not None
        or len(buffer) != 1
        or content._buffer_offset
        or content._http_chunk_splits is not None
        or type(content._timer) is not TimerNoop
        or protocol._reading_paused
        or protocol._buffer_paused
    ):
        return None
    data = buffer.popleft()
    size = len(data)
    content._size -= size
    content._cursor += size
    return data


def aborted_or_raise(request: web.Request, exc: ConnectionResetError) -> web.Response:
    """For a ConnectionResetError out of the handler: a client abort when the client's
    connection is gone, else the error goes on."""
    if request.transport is None or request.transport.is_closing():
        return client_aborted(request)
    raise exc


def client_aborted(request: web.Request) -> web.Response:
    """The answer nobody will read: status 499 for the access line and the metrics."""
    request[LOG_FIELDS]["client_aborted"] = True
    response = web.Response(status=CLIENT_CLOSED_REQUEST)
    response.force_close()
    return response


async def read_json_body(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The body as sent and as a JSON object, or a client error naming what is wrong (415, 400
    for JSON that does not parse or is not an object)."""
    check_json_content(request)
    raw = await request.read()
    return raw, json_object(raw)


def check_json_content(request: web.Request) -> None:
    """UnsupportedMediaType (415) unless the body is sent as application/json:
    ``read_json_body``'s first step, for a handler that awaits the body itself."""
    # The header exactly as nearly every client sends it needs no parsing; anything else is
    # parsed (parameters, case, spaces) as aiohttp does.
    if (
        request.headers.get("Content-Type") != "application/json"
        and request.content_type != "application/json"
    ):
        raise UnsupportedMediaType("Send the body as application/json.")


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or a client error (400: not JSON, or not an object)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJson("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body
