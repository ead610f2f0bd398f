"""One request on a system's session, sent without ``ClientSession._request``'s general layers.

``ClientSession.request`` serves every use of aiohttp's client: each call it merges the
session's default headers with the call's, parses and checks the URL, strips credentials from
it, asks the cookie jar, makes a timeout handle, loops over trace configs and middlewares,
builds a closure per attempt, follows redirects, updates cookies and wraps the answer in two
context managers. A system's session (``adapters.rest.open_session``) has no cookies, no trace
configs, no middlewares, no proxy, no total timeout, does not follow redirects and raises for
no status: most of that is the same work, per call, for nothing.

``LeanSender.request`` does what ``_request`` does for such a session, in its order, with
aiohttp's own classes: the session's request class (``LeanRequest``, made with the attributes
its constructor would give it), its connector (``connect``: the pool, its limits, the connect
timeouts), the connection's protocol (``set_response_params``: the response
parser, the read timeout), ``ClientRequest.send`` and ``ClientResponse.start``; aiohttp's errors
are raised and wrapped as ``_request`` raises and wraps them, an idempotent method's request is
sent once more when a pooled connection turns out dead, as ``_request`` does. What is done once
per system instead of per call: the URL's checks (absolute, no credentials), the session's
default headers and ``Host`` merged into a template (copied per call in one C call, the call's
headers appended in another), the parser's settings.

The request itself is written by ``_write_at_once`` when aiohttp's stream writer would write
its head and body in one ``transport.write`` with nothing to wait for (every request of the
adapters that fits the writer's buffer): the head by aiohttp's own serialiser, ``head + body``
in that one write, the read timeout started and the ``ClientResponse`` made as
``ClientRequest.send`` does, without the writer, the body's payload object and the writer
task. Anything else (a closing transport, paused writing, a large body) goes to ``send``.

``LeanSender.fetch`` (the adapters' call) also reads the answer: one that arrived whole comes
back as a ``LeanAnswer`` without ``ClientResponse`` and its stream reader
(``adapters/lean_read.py``), on a connector made by ``adapters.lean_read.install``; any other
answer, and every answer on another connector, as the ``ClientResponse`` of ``request``.

The sender is used only when it covers the session and the headers exactly (``LeanSender.for_``
returns None otherwise, and the caller takes ``session.request``): a session of any other
settings, an address with credentials in it, a header name that the session's defaults or
another header of the call could also spell (then aiohttp's merge rules would apply).
It reads private attributes of ``ClientSession``, ``ClientRequest`` and the connector; the
aiohttp version is pinned in pyproject.toml, and ``tests/adapters/test_lean_send.py`` fails when
what this module relies on changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiohttp
from aiohttp import hdrs, payload
from aiohttp.helpers import EMPTY_BODY_METHODS, TimerNoop
from aiohttp.http_writer import (
    MIN_PAYLOAD_FOR_WRITELINES,
    SKIP_WRITELINES,
    _serialize_headers,
)
from multidict import CIMultiDict
from yarl import URL

from adapters.eager_send import REQUEST_CLASS
from adapters.lean_read import LeanAnswer, LeanHandler

__all__ = ["IDEMPOTENT_METHODS", "LeanRequest", "LeanSender"]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The methods whose request aiohttp sends again on a fresh connection when a pooled one turns
out dead (RFC 9112 §9.3.1; ``aiohttp.client.IDEMPOTENT_METHODS``)."""

_NO_TIMER: Final = TimerNoop()
"""The timer of a session without a total timeout (``TimeoutHandle.timer()`` with none)."""

_DRAIN_LIMIT: Final = 0x10000
"""``StreamWriter.write``'s default ``LIMIT``: past it, a write awaits the transport's drain."""

_HEADS_KEPT: Final = 64
"""Request lines (method and target) whose serialised start a sender keeps (a path with a
call's values in it is a line of its own)."""

_NO_TRACES: Final[list[Any]] = []
"""No trace configs: aiohttp only iterates over the list it is given (never appends to it)."""

# What _request raises as it is (the connector's own errors are never retried).
_CONNECT_ERRORS: Final = (
    aiohttp.ConnectionTimeoutError,
    aiohttp.ClientConnectorError,
    aiohttp.ClientConnectorCertificateError,
    aiohttp.ClientConnectorSSLError,
)


class LeanRequest(REQUEST_CLASS):  # type: ignore[misc,valid-type]
    """The adapters' request class, made by ``LeanRequest.make`` for ``LeanSender``."""

    _body: payload.Payload | None
    _lean_template: CIMultiDict[str] | None = None
    """With ``make_split``: the sender's template, whose headers go before ``headers`` (then
    only the call's own); None once ``full_headers`` has joined them (or never split)."""

    _lean_key: Any = None
    """The connection key ``LeanSender`` keeps for the URL of this request (the same tuple
    aiohttp's property makes of it); None: aiohttp's property."""

    @property
    def connection_key(self) -> Any:
        key = self._lean_key
        return super().connection_key if key is None else key

    def update_headers(self, headers: Any) -> None:
        # Given complete by LeanSender.headers (Host first, then the session's defaults, then
        # the call's): what aiohttp's loop here would copy them into. Kept instead of copied.
        self.headers = headers

    @classmethod
    def make(
        cls,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: Any,
        loop: asyncio.AbstractEventLoop,
        session: aiohttp.ClientSession,
    ) -> LeanRequest:
        """What ``ClientRequest.__init__`` makes of a request of ``LeanSender`` (an absolute URL
        without credentials or fragment, no cookies, proxy, compression, chunking, auth or
        expectation, ``headers`` complete and naming none of the headers the body steps look
        at), without its twelve steps: the same attributes with the same values, in the same
        order (``tests/adapters/test_lean_send.py`` compares them)."""
        if loop.get_debug():  # aiohttp keeps where the request was made: its own constructor
            return cls(
                method,
                url,
                headers=headers,
                data=data,
                loop=loop,
                timer=_NO_TIMER,
                session=session,
                traces=_NO_TRACES,
            )
        req = object.__new__(cls)
        req._session = session
        req.original_url = url
        req.url = url
        req.method = method
        req.chunked = None
        req.compress = None
        req.loop = loop
        req.length = None
        req.response_class = aiohttp.ClientResponse
        req._timer = _NO_TIMER
        req._ssl = True
        req.server_hostname = None
        req.version = aiohttp.HttpVersion11
        req.headers = headers
        req.proxy = None
        req.proxy_auth = None
        req.proxy_headers = None
        if data is None:
            req._body = None
            if method not in _GET_METHODS:
                headers[hdrs.CONTENT_LENGTH] = "0"
        else:
            body = payload.PAYLOAD_REGISTRY.get(data, disposition=None)
            req._body = body
            size = body.size
            assert size is not None  # bytes, or the payload of bytes sent again
            headers[hdrs.CONTENT_LENGTH] = str(size)
            for key, value in body.headers.items():
                if key not in headers:
                    headers[key] = value
        req._traces = _NO_TRACES
        return req

    @classmethod
    def make_unsent(
        cls,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None,
        loop: asyncio.AbstractEventLoop,
        session: aiohttp.ClientSession,
    ) -> LeanRequest:
        """``make`` without the body's payload object, for ``LeanSender``'s own write: the
        headers the payload and ``send`` would add (``Content-Length``, a ``Content-Type`` of
        ``application/octet-stream`` when none is given for a body or a POST, PUT or PATCH)
        are added, and ``_body`` stays None until ``with_payload`` makes it."""
        req = cls.make(method, url, headers, None, loop, session)
        if body is not None:
            headers[hdrs.CONTENT_LENGTH] = str(len(body))
            if hdrs.CONTENT_TYPE not in headers:
                headers[hdrs.CONTENT_TYPE] = _OCTET_STREAM
        elif method in _POST_METHODS and hdrs.CONTENT_TYPE not in headers:
            headers[hdrs.CONTENT_TYPE] = _OCTET_STREAM
        return req

    @classmethod
    def make_split(
        cls,
        method: str,
        url: URL,
        template: CIMultiDict[str],
        call: dict[str, str],
        body: bytes | None,
        loop: asyncio.AbstractEventLoop,
        session: aiohttp.ClientSession,
    ) -> LeanRequest:
        """``make_unsent`` with the template's headers kept apart: ``headers`` holds only the
        call's and what ``make_unsent`` adds after them (``Content-Length``), in their order,
        until ``full_headers`` puts the template before them. For a call whose
        ``Content-Type`` is given in that spelling when ``make_unsent`` would look for it, and a
        template naming neither ``Content-Type`` nor ``Content-Length`` (``LeanSender``
        checks both): then ``make_unsent`` adds nothing else, and its headers are the
        template's followed by these."""
        if loop.get_debug():  # aiohttp's constructor, which adds its defaults to what it is given
            headers = template.copy()
            headers.extend(call)
            return cls.make_unsent(method, url, headers, body, loop, session)
        extra: Any = dict(call)
        req = cls.make(method, url, extra, None, loop, session)  # Content-Length "0" if not a GET
        if body is not None:
            extra[hdrs.CONTENT_LENGTH] = str(len(body))
        req._lean_template = template
        return req

    def full_headers(self) -> CIMultiDict[str]:
        """The request's headers whole (what ``make_unsent`` would have made), from then on
        its ``headers``; for anything but ``LeanSender``'s own write of the head."""
        template = self._lean_template
        if template is not None:
            headers = template.copy()
            headers.extend(self.headers)
            self.headers = headers
            self._lean_template = None
        return self.headers  # type: ignore[no-any-return]

    def with_payload(self, body: bytes | None) -> None:
        """The payload ``make`` would have given a request of ``make_unsent``, for aiohttp's
        own ``send`` (its headers are already in the request's)."""
        if body is not None:
            self._body = payload.PAYLOAD_REGISTRY.get(body, disposition=None)


_OCTET_STREAM: Final = "application/octet-stream"
_POST_METHODS: Final = frozenset(aiohttp.ClientRequest.POST_METHODS)


_GET_METHODS: Final = frozenset(aiohttp.ClientRequest.GET_METHODS)

# The headers whose presence changes what ClientRequest.__init__ or send do.
_STEERING_HEADERS: Final = frozenset(
    name.lower()
    for name in (
        hdrs.HOST,
        hdrs.CONTENT_LENGTH,
        hdrs.TRANSFER_ENCODING,
        hdrs.CONTENT_ENCODING,
        hdrs.EXPECT,
    )
)


def _session_is_plain(session: aiohttp.ClientSession) -> bool:
    """Whether the session has none of the settings that ``LeanSender`` leaves out."""
    return (
        isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
        and not session.trace_configs
        and not session._middlewares
        and session._default_proxy is None
        and session._default_auth is None
        and session._base_url is None
        and not session.trust_env
        and session.timeout.total is None
        and session.raise_for_status is False
        and not session.skip_auto_headers
        and session._retry_connection
        and session.version == aiohttp.HttpVersion11
        and session._request_class is REQUEST_CLASS
        and session._response_class is aiohttp.ClientResponse
    )


class LeanSender:
    """Requests of one system to one origin on its session (see the module's text)."""

    __slots__ = (
        "_auto_decompress",
        "_ceil",
        "_connector",
        "_heads",
        "_key",
        "_key_url",
        "_last_line",
        "_loop",
        "_max_field_size",
        "_max_headers",
        "_max_line_size",
        "_read_bufsize",
        "_read_timeout",
        "_session",
        "_splits",
        "_template",
        "_timeout",
    )

    def __init__(self, session: aiohttp.ClientSession, origin: URL) -> None:
        connector = session.connector
        assert connector is not None
        self._session = session
        self._connector = connector
        self._loop = session._loop
        self._timeout = session.timeout
        self._read_timeout = session.timeout.sock_read
        self._auto_decompress = session.auto_decompress
        self._read_bufsize = session._read_bufsize
        self._max_line_size = session._max_line_size
        self._max_field_size = session._max_field_size
        self._max_headers = session._max_headers
        self._ceil = connector._timeout_ceil_threshold
        # What ClientRequest.update_headers puts first, then the session's default headers as
        # ClientSession._prepare_headers puts them (the call's come after them).
        host = origin.host_port_subcomponent
        assert host is not None
        template: CIMultiDict[str] = CIMultiDict()
        template[hdrs.HOST] = host
        template.extend(session.headers)
        self._template = template
        # The request line and the template's headers, serialised once per line
        # (``_head``); only a template that make_unsent's additions cannot collide with.
        self._splits = hdrs.CONTENT_TYPE not in template and hdrs.CONTENT_LENGTH not in template
        self._heads: dict[str, bytes] = {}
        # The connection key of the last URL sent to (a URL is immutable: the same object,
        # the same key; aiohttp's property makes a new tuple per request).
        self._key_url: URL | None = None
        self._key: Any = None
        # The method, URL object and start of the head last serialised (``_head``): an
        # operation without placeholders sends to the same URL object every call.
        self._last_line: tuple[str, URL | None, bytes] = ("", None, b"")

    @classmethod
    def for_(
        cls, session: aiohttp.ClientSession, origin: URL, header_names: Iterable[str]
    ) -> LeanSender | None:
        """A sender for ``session``'s requests to ``origin`` with headers named among
        ``header_names``, or None when it would not send what ``session.request`` sends."""
        if not _session_is_plain(session) or session.connector is None:
            return None
        if session.connector.force_close:
            return None  # aiohttp's send would add "Connection: close"
        if not origin.absolute or not origin.raw_host or origin.scheme not in ("http", "https"):
            return None
        if origin.raw_user is not None or origin.raw_password is not None:
            return None  # aiohttp turns them into an Authorization header
        if origin.raw_query_string or origin.raw_fragment:
            return None
        defaults = {name.lower() for name in session.headers}
        if not {"accept", "accept-encoding", "user-agent"} <= defaults:
            return None  # aiohttp would add them after the call's headers
        seen = set(_STEERING_HEADERS) | defaults
        for name in set(header_names):
            if name.lower() in seen:
                return None  # replaced in place or added twice by aiohttp's merge
            seen.add(name.lower())
        return cls(session, origin)

    def headers(self, call_headers: dict[str, str]) -> CIMultiDict[str]:
        """The request's headers as aiohttp would send them: ``Host``, the session's defaults,
        then the call's in their order (two C calls)."""
        headers = self._template.copy()
        headers.extend(call_headers)
        return headers

    async def request(
        self, method: str, url: URL, headers: CIMultiDict[str], body: bytes | None
    ) -> aiohttp.ClientResponse:
        """``session.request(method, url, headers=..., data=body, allow_redirects=False)``:
        the answer started (status and headers read), its body unread. ``headers`` come from
        ``headers()`` and are the request's own from then on."""
        response = await self._exchange(method, url, headers, body, lean_read=False)
        assert isinstance(response, aiohttp.ClientResponse)
        return response

    async def fetch(
        self, method: str, url: URL, headers: CIMultiDict[str], body: bytes | None
    ) -> LeanAnswer | aiohttp.ClientResponse:
        """``request``, but an answer that arrived whole (``adapters/lean_read.py``) comes back
        as a ``LeanAnswer``, read and its connection released; any other as the
        ``ClientResponse`` of ``request``, to be read and released by the caller."""
        return await self._exchange(method, url, headers, body, lean_read=True)

    async def fetch_call(
        self, method: str, url: URL, call: dict[str, str], body: bytes | None
    ) -> LeanAnswer | aiohttp.ClientResponse:
        """``fetch(method, url, self.headers(call), body)``: the same request and answer, the
        template's headers not copied per call when the sender writes the head itself
        (``LeanRequest.make_split``); ``call`` is not changed."""
        if self._splits and (
            hdrs.CONTENT_TYPE in call or (body is None and method not in _POST_METHODS)
        ):
            return await self._exchange(method, url, None, body, lean_read=True, call=call)
        return await self._exchange(method, url, self.headers(call), body, lean_read=True)

    async def _exchange(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str] | None,
        body: bytes | None,
        *,
        lean_read: bool,
        call: dict[str, str] | None = None,
    ) -> LeanAnswer | aiohttp.ClientResponse:
        session = self._session
        if session.closed:
            raise RuntimeError("Session is closed")
        retry = method in IDEMPOTENT_METHODS
        # A request takes its headers as they are and adds to them (Content-Length): a request
        # that may be sent again gets a copy, the one sent again the original.
        data: Any = body
        req: LeanRequest | None = None
        resp: LeanAnswer | aiohttp.ClientResponse | None = None
        try:
            while True:
                if headers is None and data is not None and type(data) is not bytes:
                    assert call is not None  # a payload sent again: make's whole headers
                    headers = self.headers(call)
                if headers is None:  # fetch_call's split
                    assert call is not None
                    req = LeanRequest.make_split(
                        method, url, self._template, call, data, self._loop, session
                    )
                elif data is None or type(data) is bytes:
                    req = LeanRequest.make_unsent(
                        method, url, headers.copy() if retry else headers, data, self._loop, session
                    )
                else:  # a payload sent once already by aiohttp's send, sent again by it
                    req = LeanRequest.make(
                        method, url, headers.copy() if retry else headers, data, self._loop, session
                    )
                    data = None
                try:
                    resp = await self._attempt(req, data, lean_read)
                except _CONNECT_ERRORS:
                    raise
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    if not retry:
                        raise
                    retry = False
                    if req._body is not None:
                        # As aiohttp: the payload rewinds itself once its writer settled.
                        await req.close()
                        if req._body.consumed:
                            raise
                        data = req._body
                    continue
                except aiohttp.ClientError:
                    raise
                except OSError as exc:
                    if exc.errno is None and isinstance(exc, TimeoutError):
                        raise
                    raise aiohttp.ClientOSError(*exc.args) from exc
                break
            if req._body is not None:
                await req._body.close()
            return resp
        except BaseException:
            if isinstance(resp, aiohttp.ClientResponse):
                resp.close()
            if req is not None and req._body is not None:
                await req._body.close()
            raise

    def _head(self, req: LeanRequest) -> bytes:
        """``_whole_head(req)``: for a request of ``make_split``, the request line and the
        template's headers serialised once per line (by aiohttp's serialiser: the line checked
        as the whole head's would be first), then the call's headers (the same serialiser:
        its error for a header with CR or LF, raised as the whole head's would raise it, the
        line and the template being clean)."""
        template = req._lean_template
        if template is None:
            return _whole_head(req)
        method, url, start = self._last_line
        if url is req.url and method == req.method:
            return start + _serialize_headers("", req.headers)
        line = f"{req.method} {req.url.raw_path_qs} HTTP/1.1"
        kept = self._heads.get(line)
        if kept is None:
            # "LINE\r\nTEMPLATE\r\n\r\n" less its last four bytes: the serialisation of
            # the call's headers after an empty line begins with the "\r\n" that ends them.
            kept = _serialize_headers(line, template)[:-4]
            if len(self._heads) < _HEADS_KEPT:
                self._heads[line] = kept
        self._last_line = (req.method, req.url, kept)
        return kept + _serialize_headers("", req.headers)

    async def _attempt(
        self, req: LeanRequest, body: bytes | None, lean_read: bool
    ) -> LeanAnswer | aiohttp.ClientResponse:
        """One attempt: a connection from the pool (or a new one), the request sent, the
        answer's head read (``_request``'s ``_connect_and_send_request``), or with
        ``lean_read`` the whole answer when it arrived whole. ``body``: the bytes of a request
        of ``make_unsent`` (its payload not made yet)."""
        url = req.url
        if url is not self._key_url:
            self._key = req.connection_key
            self._key_url = url
        req._lean_key = self._key
        try:
            conn = await self._connector.connect(req, traces=_NO_TRACES, timeout=self._timeout)
        except TimeoutError as exc:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {req.url}") from exc
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(
            timer=_NO_TIMER,
            skip_payload=req.method in EMPTY_BODY_METHODS,
            read_until_eof=True,
            auto_decompress=self._auto_decompress,
            read_timeout=self._read_timeout,
            read_bufsize=self._read_bufsize,
            timeout_ceil_threshold=self._ceil,
            max_line_size=self._max_line_size,
            max_field_size=self._max_field_size,
            max_headers=self._max_headers,
        )
        resp: aiohttp.ClientResponse
        try:
            size = _write_at_once(req, protocol, body, self._head) if req._body is None else None
            if size is None:
                req.full_headers()
                req.with_payload(body)
                resp = await req.send(conn)
            else:
                if lean_read and type(protocol) is LeanHandler:
                    waiter = protocol.arm()
                    if waiter is not None:
                        try:
                            answer = await waiter
                        finally:
                            protocol.disarm()
                        if answer is not None:
                            conn.release()  # what ClientResponse does once the body ended
                            return answer
                req.full_headers()
                resp = _response(req, size)
            try:
                await resp.start(conn)
            except BaseException:
                resp.close()
                raise
        except BaseException:
            conn.close()
            raise
        return resp


class _Sent:
    """What ``ClientResponse`` reads of the stream writer of a request already written."""

    __slots__ = ("output_size",)

    def __init__(self, output_size: int) -> None:
        self.output_size = output_size


def _whole_head(req: LeanRequest) -> bytes:
    """A request's head by aiohttp's serialiser, its headers whole."""
    return _serialize_headers(f"{req.method} {req.url.raw_path_qs} HTTP/1.1", req.full_headers())


def _write_at_once(
    req: LeanRequest,
    protocol: Any,
    body: bytes | None,
    head_of: Callable[[LeanRequest], bytes] = _whole_head,
) -> int | None:
    """What ``ClientRequest.send`` writes for a request whose head and body aiohttp's stream
    writer would write in one ``transport.write`` with nothing left to wait for: the same
    bytes (aiohttp's own head serialiser), the same read timeout started; the size written.
    None when aiohttp's writer would do anything else (a closing transport, paused writing, a
    body large enough to drain or to go out in ``writelines``): then aiohttp's ``send`` does
    it."""
    if req.method == hdrs.METH_CONNECT:
        return None  # its request target is the authority
    transport = protocol.transport
    if transport is None or transport.is_closing() or protocol.writing_paused:
        return None
    head = head_of(req)
    if body is None:
        protocol.start_timeout()  # aiohttp starts it before writing a request without body
        transport.write(head)
        return len(head)
    size = len(head) + len(body)
    if size > _DRAIN_LIMIT or (size >= MIN_PAYLOAD_FOR_WRITELINES and not SKIP_WRITELINES):
        return None
    transport.write(head + body)
    protocol.start_timeout()
    return size


def _response(req: LeanRequest, size: int) -> aiohttp.ClientResponse:
    """The response object ``ClientRequest.send`` makes for a request of ``size`` bytes
    written."""
    resp = aiohttp.ClientResponse(
        req.method,
        req.original_url,
        writer=None,
        continue100=None,
        timer=_NO_TIMER,
        request_info=req.request_info,
        traces=_NO_TRACES,
        loop=req.loop,
        session=req._session,
        stream_writer=_Sent(size),  # type: ignore[arg-type]
    )
    req.response = resp
    return resp
