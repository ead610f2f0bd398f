"""The answer of a system's request read without ``ClientResponse``, when it arrived whole.

After ``LeanSender`` has written a request (``adapters/lean_send.py``), aiohttp reads the answer
through several layers: the connection's protocol parses the bytes and queues the answer's
head with a ``StreamReader`` of its body, ``ClientResponse.start`` waits on that queue and takes
the head over, ``ClientResponse.read`` waits on the stream reader for the body, and the
connection goes back to the pool when the body's end is seen. An answer of a provincial system
is small: its head and its whole body (``Content-Length`` or chunked) nearly always arrive in
the one ``data_received`` that the connection's protocol is handed.

``LeanHandler`` is aiohttp's ``ResponseHandler`` (installed as the connector's protocol by
``install``) with one addition: when a lean request waits on it (``arm``), it looks, after
aiohttp's own ``data_received`` has parsed the bytes with aiohttp's own parser and queued the
result exactly as always, at what was queued. When that is one final answer (status 200 or
more) whose body has ended without error (or has none: ``HEAD``, 204, 304), nothing left
over, no upgrade and reading not paused, it takes the answer off the queue, as
``ClientResponse.start`` would, and hands the sender a ``LeanAnswer``: status, reason, version,
headers (the parser's ``CIMultiDictProxy``) and the body's bytes (the stream reader's chunks
joined, what ``StreamReader.read`` returns). Anything else (a 1xx, a body not ended yet or
delimited by the close, an upgrade, a parse error, a closed connection, a read timeout) leaves
the queue as aiohttp filled it and answers None: the sender then makes the ``ClientResponse``
and ``ClientResponse.start`` reads the queue, raising what it raises today.

So the bytes are parsed by aiohttp's parser (llhttp, with aiohttp's own checks on top: a
duplicate or invalid ``Content-Length``, obs-fold, bare LF, header injection, an oversized
head are judged as before, their errors raised by aiohttp's path), decompression is aiohttp's
(done by the parser into the stream reader when the session asks for it), and the read
timeout, the pool, keep-alive and ``Connection: close`` stay aiohttp's: the connection is
released as ``ClientResponse`` releases it, with the protocol's ``should_close``.

It reads private attributes of ``ResponseHandler``, ``DataQueue`` and ``StreamReader``, and
replaces the connector's private protocol factory; aiohttp is pinned in pyproject.toml and
``tests/adapters/test_lean_read.py`` pins the code relied on.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import HeadersMixin
from aiohttp.http import HttpVersion, RawResponseMessage
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDictProxy

__all__ = ["LeanAnswer", "LeanHandler", "install"]


class LeanAnswer(HeadersMixin):
    """A whole answer: what a caller reads of ``ClientResponse`` after ``read()``. Its
    ``content_type``, ``charset`` and ``content_length`` are ``ClientResponse``'s own (the same
    mixin over the same headers)."""

    def __init__(self, message: RawResponseMessage, body: bytes) -> None:
        self.status: int = message.code
        self.reason: str | None = message.reason
        self.version: HttpVersion = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        self._headers = message.headers
        self.body = body


class LeanHandler(ResponseHandler):
    """aiohttp's protocol of a client connection, which can hand a whole answer over
    directly (see the module's text)."""

    _lean_waiter: asyncio.Future[LeanAnswer | None] | None = None

    def arm(self) -> asyncio.Future[LeanAnswer | None] | None:
        """A future for the next answer (set by ``data_received``), or None when the
        connection holds anything from before (then aiohttp's path reads it)."""
        if (
            self._buffer
            or self._exception is not None
            or self._upgraded
            or self._payload_parser is not None
            or self._parser is None
        ):
            return None
        waiter: asyncio.Future[LeanAnswer | None] = self._loop.create_future()
        self._lean_waiter = waiter
        return waiter

    def disarm(self) -> None:
        self._lean_waiter = None

    def _fall_back(self) -> None:
        waiter = self._lean_waiter
        if waiter is not None:
            self._lean_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._lean_waiter
        if waiter is None:
            return
        queued = self._buffer
        if not queued:
            if self._exception is not None:
                self._fall_back()
            return  # a part of the head: the parser keeps it
        self._lean_waiter = None
        if waiter.done():  # cancelled: the sender closes the connection
            return
        if (
            len(queued) == 1
            and self._exception is None
            and not self._upgraded
            and not self._tail
            and not self._reading_paused
        ):
            (message, payload), _ = queued[0]
            if message.code >= 200:
                if payload is EMPTY_PAYLOAD:
                    body = b""
                elif payload._eof and payload._exception is None:
                    body = b"".join(payload._buffer)
                else:
                    waiter.set_result(None)
                    return
                queued.popleft()  # what ClientResponse.start's read of the queue does
                waiter.set_result(LeanAnswer(message, body))
                return
        waiter.set_result(None)

    def set_exception(self, exc: BaseException, *args: Any) -> None:
        super().set_exception(exc, *args)
        self._fall_back()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._fall_back()


def install(connector: aiohttp.BaseConnector) -> aiohttp.BaseConnector:
    """``connector`` with ``LeanHandler`` as the protocol of its new connections."""
    connector._factory = functools.partial(LeanHandler, loop=connector._loop)  # type: ignore[assignment]
    return connector
