"""``LeanSender.fetch_call``: the call's headers given apart from the sender's template, the
request line and the template's headers serialised once per line (``adapters/lean_send.py``,
``LeanRequest.make_split`` and ``LeanSender._head``).

Every test sends the same request by ``fetch_call``, by ``fetch`` with the whole headers
(``sender.headers(call)``) and by ``session.request``, against one raw back-end, and compares
the bytes the back-end read and what the caller saw (or the error's type and text); for an
answer read by aiohttp's path, the request's headers as the response reports them too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from yarl import URL

from adapters import lean_send
from adapters.lean_read import LeanAnswer
from adapters.lean_send import LeanRequest, LeanSender
from tests.adapters.test_lean_read import Back, Reply, _ok, _seen, _session, back

__all__ = ["back"]  # the raw back-end fixture, shared

_CALL = {
    "X-Fixed": "1",
    "X-Request-ID": "r-1",
    "X-Purpose": "%E6%A0%B8%E9%AA%8C",
    "Content-Type": "application/json",
}
_NAMES = (*_CALL, "X-Extra")


async def _read(answer: LeanAnswer | aiohttp.ClientResponse) -> tuple[Any, ...]:
    if isinstance(answer, LeanAnswer):
        return (*_seen(answer, answer.body), "whole")
    try:
        body = await answer.read()
        info = answer.request_info
        return (*_seen(answer, body), info.method, list(info.headers.items()))
    finally:
        answer.release()
        await answer.wait_for_close()


async def _three(
    back: Back, method: str, target: str, call: dict[str, str], body: bytes | None
) -> list[tuple[tuple[Any, ...], list[bytes]]]:
    """What ``fetch_call``, ``fetch`` and ``session.request`` each saw, and the requests the
    back-end read of each; every way on a session of its own."""
    url = URL(f"http://127.0.0.1:{back.port}{target}", encoded=True)
    seen = []
    for way in ("split", "whole", "aiohttp"):
        session = _session()
        start = len(back.requests)
        try:
            sender = LeanSender.for_(session, url.origin(), (*call, "X-Extra"))
            assert sender is not None
            try:
                if way == "split":
                    outcome = await _read(await sender.fetch_call(method, url, call, body))
                elif way == "whole":
                    outcome = await _read(
                        await sender.fetch(method, url, sender.headers(call), body)
                    )
                else:
                    async with session.request(
                        method, url, headers=call, data=body, allow_redirects=False
                    ) as response:
                        outcome = _seen(response, await response.read())
            except Exception as exc:  # compared by type and text
                outcome = ("error", type(exc), str(exc))
        finally:
            await session.close()
        seen.append((outcome, back.requests[start:]))
    return seen


def _same(seen: list[tuple[tuple[Any, ...], list[bytes]]]) -> None:
    (split, split_bytes), (whole, whole_bytes), (plain, plain_bytes) = seen
    assert split_bytes == whole_bytes == plain_bytes
    assert split == whole
    if split[0] == "error":
        assert split == plain
    else:
        assert split[:8] == plain[:8]


_JSON_BODY = b'{"zjhm":"1"}'


@pytest.mark.parametrize(
    ("method", "target", "call", "body"),
    [
        ("POST", "/api/echo", _CALL, _JSON_BODY),
        ("PUT", "/api/p/1", _CALL, _JSON_BODY),
        ("PATCH", "/api/p/1", _CALL, _JSON_BODY),
        ("POST", "/api/echo", _CALL, None),  # Content-Length 0, its type given
        ("POST", "/api/echo", {"X-Fixed": "1"}, _JSON_BODY),  # no type: the whole path's
        ("POST", "/api/echo", {"X-Fixed": "1"}, None),
        ("POST", "/api/echo", {"content-type": "application/json"}, _JSON_BODY),
        ("GET", "/api/p?a=1&b=%E4%B8%AD", {"X-Fixed": "1"}, None),
        ("GET", "/", {}, None),
        ("DELETE", "/api/p/1", {"X-Fixed": "1"}, None),  # Content-Length 0
        ("HEAD", "/api/p/1", {}, None),
        ("POST", "/api/echo", _CALL, b"x" * 3000),
        ("POST", "/api/echo", _CALL, b"x" * 70_000),  # aiohttp's send, the whole headers
    ],
)
async def test_the_same_bytes_and_answers(
    back: Back, method: str, target: str, call: dict[str, str], body: bytes | None
) -> None:
    if method == "HEAD":
        back.answer = lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    given = dict(call)
    seen = await _three(back, method, target, call, body)
    _same(seen)
    assert call == given  # fetch_call does not change the call's headers
    assert seen[0][1][0].startswith(f"{method} {target} HTTP/1.1\r\nHost: ".encode())


@pytest.mark.parametrize(
    "reply",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n", _ok()],  # read by aiohttp's path
        [_ok()[:40], _ok()[40:]],  # the head in two writes
        [_ok(b"0123456789")[:-5], b"56789"],  # the body in a second write
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
        b"not http\r\n\r\n",
        None,  # closed without an answer
    ],
)
async def test_answers_read_by_either_path(back: Back, reply: Reply) -> None:
    """An answer that aiohttp's path reads reports the request's whole headers
    (``request_info``): the template's before the call's, as the whole path's."""
    back.answer = lambda _: reply
    _same(await _three(back, "POST", "/api/echo", _CALL, _JSON_BODY))


async def test_a_header_with_a_line_break_is_refused_alike(back: Back) -> None:
    seen = await _three(back, "POST", "/api/echo", {**_CALL, "X-Extra": "a\r\nInjected: 1"}, b"{}")
    _same(seen)
    assert seen[0][0][:2] == ("error", ValueError)
    assert back.requests == []


async def test_many_request_lines(back: Back) -> None:
    """A path with a call's value in it is a line of its own: past the lines a sender keeps,
    each is still serialised whole and the same."""
    session = _session()
    url = URL(f"http://127.0.0.1:{back.port}/")
    try:
        sender = LeanSender.for_(session, url.origin(), _NAMES)
        assert sender is not None
        for number in range(lean_send._HEADS_KEPT + 6):
            target = url.with_path(f"/api/persons/{number}")
            answer = await sender.fetch_call("POST", target, _CALL, _JSON_BODY)
            assert isinstance(answer, LeanAnswer)
        assert len(sender._heads) == lean_send._HEADS_KEPT
        whole = await sender.fetch("POST", target, sender.headers(_CALL), _JSON_BODY)
        assert isinstance(whole, LeanAnswer)
    finally:
        await session.close()
    assert back.requests[-1] == back.requests[-2]
    assert back.requests[0].startswith(b"POST /api/persons/0 HTTP/1.1\r\n")


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_a_dead_pooled_connection(back: Back, method: str) -> None:
    """PUT sent again on a fresh connection (the same bytes), POST not, as by aiohttp."""
    answered = 0

    def answer(_: bytes) -> Reply:
        nonlocal answered
        answered += 1
        return None if answered == 2 else _ok()

    back.answer = answer
    url = URL(f"http://127.0.0.1:{back.port}/a")
    session = _session()
    try:
        sender = LeanSender.for_(session, url.origin(), _NAMES)
        assert sender is not None
        assert isinstance(await sender.fetch_call(method, url, _CALL, b"{}"), LeanAnswer)
        try:
            again: Any = await sender.fetch_call(method, url, _CALL, b"{}")
        except aiohttp.ServerDisconnectedError:
            again = None
    finally:
        await session.close()
    if method == "PUT":
        assert isinstance(again, LeanAnswer)
        assert back.requests[0] == back.requests[1] == back.requests[2]
    else:
        assert again is None
        assert len(back.requests) == 2


async def test_a_split_request_made_whole() -> None:
    """``full_headers`` makes what ``make_unsent`` makes of the template and the call's
    headers: the same names, spelling, order and values."""
    session = _session()
    try:
        url = URL("http://127.0.0.1:1/api")
        sender = LeanSender.for_(session, url.origin(), _NAMES)
        assert sender is not None
        loop = session._loop
        for method, body in (("POST", b"{}"), ("PUT", b""), ("DELETE", None), ("GET", None)):
            split = LeanRequest.make_split(
                method, url, sender._template, _CALL, body, loop, session
            )
            whole = LeanRequest.make_unsent(method, url, sender.headers(_CALL), body, loop, session)
            assert list(split.full_headers().items()) == list(whole.headers.items())
            assert split._lean_template is None
            kept = dict(vars(split))
            kept.pop("_lean_template")
            assert list(kept) == list(vars(whole))
    finally:
        await session.close()


async def test_the_connection_key_follows_the_url(back: Back) -> None:
    """The key a sender keeps is its last URL's: a request to another address (another URL
    object) gets its own key, so its own connection, and the key is aiohttp's."""
    other = Back()
    listening = await asyncio.start_server(other.serve, "127.0.0.1", 0)
    other.port = listening.sockets[0].getsockname()[1]
    session = _session()
    try:
        first = URL(f"http://127.0.0.1:{back.port}/one")
        second = URL(f"http://127.0.0.1:{other.port}/two")
        sender = LeanSender.for_(session, first.origin(), _CALL)
        assert sender is not None
        for url in (first, second, first, URL(str(second)), first):
            assert isinstance(await sender.fetch_call("POST", url, _CALL, b"{}"), LeanAnswer)
            request = LeanRequest.make_split(
                "POST", url, sender._template, _CALL, b"{}", session._loop, session
            )
            assert sender._key == aiohttp.ClientRequest.connection_key.fget(request)  # type: ignore[attr-defined]
    finally:
        await session.close()
        listening.close()
    assert [raw.split(b" ")[1] for raw in back.requests] == [b"/one"] * 3
    assert [raw.split(b" ")[1] for raw in other.requests] == [b"/two"] * 2


async def test_a_loop_in_debug_mode(back: Back) -> None:
    """In debug mode ``LeanRequest.make`` is aiohttp's constructor (it keeps where a request
    was made), which adds its default headers to those it is given: the whole headers then,
    and the same bytes."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        _same(await _three(back, "POST", "/api/echo", _CALL, _JSON_BODY))
    finally:
        loop.set_debug(False)


async def test_one_url_object_with_several_methods(back: Back) -> None:
    """The head's start kept for the last URL object is its method's: another method to the
    same URL object has its own request line."""
    session = _session()
    url = URL(f"http://127.0.0.1:{back.port}/api/p/1")
    try:
        sender = LeanSender.for_(session, url.origin(), _CALL)
        assert sender is not None
        for method in ("POST", "POST", "PUT", "POST", "DELETE", "DELETE"):
            body = None if method == "DELETE" else b"{}"
            assert isinstance(await sender.fetch_call(method, url, _CALL, body), LeanAnswer)
            whole = await sender.fetch(method, url, sender.headers(_CALL), body)
            assert isinstance(whole, LeanAnswer)
            assert back.requests[-1] == back.requests[-2]
            assert back.requests[-1].startswith(f"{method} /api/p/1 HTTP/1.1\r\n".encode())
    finally:
        await session.close()
