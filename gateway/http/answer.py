"""A JSON or problem+json answer written in one step: head and body serialised once.

aiohttp's ``web.Response`` is general: its ``__init__`` checks text against body and content
type against charset, and its ``prepare`` and ``write_eof`` go through about a dozen calls
(``Response._start``, ``StreamResponse._start``, ``_prepare_headers``, the request's prepare
hook, ``_write_headers``, the writer's ``write_headers``, ``write_eof`` on the response, on
its base and on the writer, ``_send_headers_with_payload``, ``_writelines``), most of them
coroutines, for an answer that is always the same shape: a JSON body of known length.

``JsonAnswer`` is a ``web.Response`` (every caller and test that takes one takes it) whose
``prepare`` writes, when nothing asks for more, exactly the bytes aiohttp's path writes: the
status line, the headers already set in their order, then ``Content-Length``, ``Date``,
``Server`` and, on a connection not kept alive, ``Connection: close``, serialised by aiohttp's
own ``_serialize_headers`` (which refuses a header value with a line break, as before), and
the body, in one write through the request's writer (its byte counts, its closing-transport
check and its drain, as before). Anything else goes aiohttp's general way, unchanged: a HEAD
request or a status without a body, HTTP/1.0, compression, cookies, chunked encoding, a
header the general path would treat itself (``Content-Length``, ``Date``, ``Server``,
``Connection``, ``Transfer-Encoding``) set beforehand, no ``Content-Type``, or an
``on_response_prepare`` receiver. tests/unit/http/test_answer.py compares the bytes on the
wire of both ways; tests/unit/http/test_dispatch.py fails naming the aiohttp function if the
code this stands in for changes. Hand-written rather than a library's: what is matched is
aiohttp's own output, which only aiohttp's code defines.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web
from aiohttp.compression_utils import MAX_SYNC_CHUNK_SIZE
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import _serialize_headers
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

_GENERAL = (
    hdrs.CONTENT_LENGTH,
    hdrs.DATE,
    hdrs.SERVER,
    hdrs.CONNECTION,
    hdrs.TRANSFER_ENCODING,
)
"""Headers that, set before ``prepare``, send the answer the general way."""


class JsonAnswer(web.Response):
    """``web.Response(body=body, status=status, content_type=content_type, headers=headers)``,
    made and written in fewer steps (the module docstring says when and how)."""

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        # As Response.__init__ makes them: the headers given, then the content type.
        real: CIMultiDict[str] = CIMultiDict() if headers is None else CIMultiDict(headers)
        if hdrs.CONTENT_TYPE in real:
            raise ValueError("the content type is given as content_type")
        real[hdrs.CONTENT_TYPE] = content_type
        web.StreamResponse.__init__(self, status=status, _real_headers=real)
        self._body = body
        # As Response.__init__ leaves them (used only if compression is enabled).
        self._zlib_executor_size = MAX_SYNC_CHUNK_SIZE
        self._zlib_executor = None

    async def prepare(self, request: BaseRequest) -> Any:
        if self._eof_sent or self._payload_writer is not None or not _lean(self, request):
            return await super().prepare(request)
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        self._must_be_empty_body = False
        body = self._body
        assert isinstance(body, bytes)
        headers = self._headers
        headers[hdrs.CONTENT_LENGTH] = str(len(body))
        headers[hdrs.DATE] = rfc822_formatted_time()
        headers[hdrs.SERVER] = SERVER_SOFTWARE
        if not keep_alive:
            headers[hdrs.CONNECTION] = "close"
        head = _serialize_headers(f"HTTP/1.1 {self._status} {self._reason}", headers)
        writer = request._payload_writer
        self._req = request
        self._payload_writer = writer
        await writer.write_eof(head + body)
        # As StreamResponse.write_eof leaves it (finish_response's write_eof is then a no-op).
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None
        return writer


def _lean(answer: JsonAnswer, request: BaseRequest) -> bool:
    """Whether aiohttp's general path would write nothing but what ``prepare`` writes."""
    # The request's and the app's private attributes behind their properties (``version``,
    # ``method``, ``match_info.apps``, ``on_response_prepare``): a Python call each less.
    if (
        request._version != HttpVersion11
        or request._method == hdrs.METH_HEAD
        or answer._status < 200
        or answer._status in (204, 304)
        or answer._compression
        or answer._cookies
        or answer._chunked
        or not isinstance(answer._body, bytes)
    ):
        return False
    headers = answer._headers
    if hdrs.CONTENT_TYPE not in headers:
        return False
    for name in _GENERAL:
        if name in headers:
            return False
    # What the request's prepare hook would do (web.Request._prepare_hook): send the signal.
    match_info = getattr(request, "_match_info", None)
    if match_info is not None:
        for app in match_info._apps:
            if app._on_response_prepare:
                return False
    return True
