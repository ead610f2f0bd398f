"""The outbound call's fast paths give what the rules they replace give.

``header_safe`` and ``add_context_headers`` check a value without the regular expression that
states the rule (``_VISIBLE_ASCII``): every value, the regular expression's answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from adapters.eager_send import REQUEST_CLASS
from adapters.outbound_request import OutboundRequest
from adapters.rest import _HEADER_SAFE, add_context_headers, header_safe
from gateway.adapter import CallContext

_RULE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


@pytest.fixture
async def echo_wire() -> AsyncIterator[Callable[..., Any]]:
    """Posts to a raw TCP server that answers 204 and keeps the request's head lines."""
    heads: list[list[str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head.decode("ascii").split("\r\n")[:-2])
        await reader.readexactly(8)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def post(request_class: type[aiohttp.ClientRequest], headers: Any) -> list[str]:
        async with (
            aiohttp.ClientSession(
                request_class=request_class,
                headers={"User-Agent": "tongban-gateway", "Accept-Encoding": "identity"},
            ) as session,
            session.post(
                f"http://127.0.0.1:{port}/api/echo", data=b'{"a": 1}', headers=headers
            ) as answer,
        ):
            assert answer.status == 204
        return heads[-1]

    try:
        yield post
    finally:
        server.close()
        await server.wait_closed()


def by_the_rule(value: str) -> str:
    return value if _RULE.fullmatch(value) else quote(value, safe=_HEADER_SAFE)


EDGES = [
    "",
    " ",
    "  ",
    "a",
    " a",
    "a ",
    " a ",
    "a b",
    "a  b",
    "~",
    "\x7f",
    "a\x7f",
    "\t",
    "a\tb",
    "a\n",
    "\x1f",
    "\x00",
    "核验",
    "核验 check",
    "é",
    "\u00a0",
    "a\u00a0",
    "\u2028",
    "person:" + "ab" * 32,
]


def test_every_edge_as_the_rule() -> None:
    for value in EDGES:
        assert header_safe(value) == by_the_rule(value), repr(value)


def test_every_single_character_as_the_rule() -> None:
    for code in range(0x3000):
        for value in (chr(code), "a" + chr(code), chr(code) + "a", "a" + chr(code) + "a"):
            assert header_safe(value) == by_the_rule(value), repr(value)


@given(st.text(alphabet=st.characters(max_codepoint=0x2100), max_size=40))
def test_any_text_as_the_rule(value: str) -> None:
    assert header_safe(value) == by_the_rule(value)


@given(st.text(alphabet=st.sampled_from(" ~a\x7f\t\x20\x21é核"), max_size=12))
def test_spaces_and_borders_as_the_rule(value: str) -> None:
    assert header_safe(value) == by_the_rule(value)


def test_context_headers_as_the_rule() -> None:
    for value in EDGES:
        context = CallContext(
            request_id="r1",
            purpose=value,
            service="s",
            receiving_province="63",
            handling_province="61",
            principal="p",
            actor="a",
            level="L2",
            client=value or None,
        )
        headers = add_context_headers({}, context)
        assert headers["X-Tongban-Purpose"] == by_the_rule(value), repr(value)
        if value:
            assert headers["X-Tongban-Client"] == by_the_rule(value), repr(value)
        else:
            assert "X-Tongban-Client" not in headers  # None: left out


# --- the request's headers, copied once (adapters/outbound_request.py) ---------------------------

HEADER_SETS: list[list[tuple[str, str]]] = [
    [],
    [("User-Agent", "tongban-gateway"), ("Accept-Encoding", "identity"), ("Accept", "*/*")],
    [("X-Request-ID", "r1"), ("x-tongban-purpose", "p"), ("Content-Type", "application/json")],
    [("X-A", "1"), ("x-a", "2"), ("X-B", "3")],  # a repeated name, spelt two ways
    [("Accept", "application/json"), ("Host", "other.example:81"), ("X-A", "1")],
    [("X-A", "1"), ("hOsT", "other.example")],
    [("Content-Length", "5"), ("Transfer-Encoding", "identity")],
]


def _made(request_class: type[aiohttp.ClientRequest], headers: object) -> list[tuple[str, str]]:
    loop = asyncio.new_event_loop()
    try:
        request = request_class(
            "POST",
            URL("http://127.0.0.1:8080/api/echo?x=1"),
            headers=headers,  # type: ignore[arg-type]
            data=b'{"a": 1}',
            loop=loop,
        )
        # The names as spelt (istr or str), their order, and the values.
        return [(str(name), value) for name, value in request.headers.items()]
    finally:
        loop.close()


def test_the_request_headers_as_aiohttp_makes_them() -> None:
    for items in HEADER_SETS:
        for headers in (CIMultiDict(items), dict(items), items):
            ours = _made(OutboundRequest, headers)
            theirs = _made(aiohttp.ClientRequest, headers)
            assert ours == theirs, items
            assert [name for name, _ in ours][:1] == ["Host"] or any(
                name.lower() == "host" for name, _ in items
            )


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The headers handed to aiohttp's own copy loop (``ClientRequest.update_headers``)."""
    calls: list[object] = []
    original = aiohttp.ClientRequest.update_headers

    def recording(self: aiohttp.ClientRequest, headers: object) -> None:
        calls.append(headers)
        original(self, headers)  # type: ignore[arg-type]

    monkeypatch.setattr(aiohttp.ClientRequest, "update_headers", recording)
    return calls


def test_a_host_of_the_callers_takes_aiohttps_own_copy(seen: list[object]) -> None:
    _made(OutboundRequest, CIMultiDict([("X-A", "1")]))
    assert seen == []  # the one C copy
    _made(OutboundRequest, CIMultiDict([("X-A", "1"), ("host", "h")]))
    assert len(seen) == 1
    _made(OutboundRequest, {"X-A": "1"})
    assert len(seen) == 2


async def test_the_wire_bytes_of_the_adapters_session(echo_wire: Callable[..., Any]) -> None:
    """The request as the back-end reads it: the same lines with the adapters' request class
    as with aiohttp's own."""
    headers = CIMultiDict([("X-Request-ID", "r1"), ("X-Tongban-Purpose", "p"), ("X-A", "1")])
    ours = await echo_wire(REQUEST_CLASS, headers)
    theirs = await echo_wire(aiohttp.ClientRequest, headers)
    assert ours == theirs
    assert ours[0] == "POST /api/echo HTTP/1.1"
    assert ours[1].startswith("Host: 127.0.0.1:")


async def test_a_session_hands_the_request_its_merged_headers(
    echo_wire: Callable[..., Any], seen: list[object]
) -> None:
    """The one C copy is the one a session's request takes (the session merges its default
    headers into a ``CIMultiDict`` of its own): aiohttp's loop is not run."""
    await echo_wire(OutboundRequest, {"X-A": "1"})
    assert seen == []
    await echo_wire(aiohttp.ClientRequest, {"X-A": "1"})
    assert len(seen) == 1
