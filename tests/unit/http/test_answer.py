"""JsonAnswer writes on the wire exactly what web.Response writes, whichever way it takes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from gateway.http.answer import JsonAnswer

BODY = b'{"request_id":"r-1","data":{"valid":true}}'

Make = Callable[[bytes, int], web.Response]


def _plain(body: bytes, status: int) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _lean(body: bytes, status: int) -> web.Response:
    return JsonAnswer(body, status)


_PROBLEM_HEADERS = {"X-Request-ID": "r-1", "WWW-Authenticate": 'Bearer realm="tongban"'}


def _plain_problem(body: bytes, status: int) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        content_type="application/problem+json",
        headers=_PROBLEM_HEADERS,
    )


def _lean_problem(body: bytes, status: int) -> web.Response:
    return JsonAnswer(body, status, "application/problem+json", _PROBLEM_HEADERS)


def _app(make: Make, *, signal: bool = False) -> web.Application:
    """An app answering as the gateway does: the answer made, then headers added to it by the
    middleware (request id, rate-limit fields), and some variations asked in the query."""

    async def answer(request: web.Request) -> web.StreamResponse:
        query = request.query
        response = make(BODY, int(query.get("status", "200")))
        response.headers["X-Request-ID"] = "r-1"
        response.headers["RateLimit-Policy"] = '"person";q=300;w=60'
        if "close" in query:
            response.force_close()
        if "date" in query:
            response.headers["Date"] = "Thu, 01 Jan 2026 00:00:00 GMT"
        if "length" in query:
            response.headers["Content-Length"] = str(len(BODY))
        if "compress" in query:
            response.enable_compression()
        if "cookie" in query:
            response.set_cookie("k", "v")
        if "type" in query:
            del response.headers["Content-Type"]
        if "crlf" in query:
            response.headers["X-Bad"] = "a\r\nb"
        return response

    app = web.Application()
    if signal:

        async def stamp(request: web.Request, response: web.StreamResponse) -> None:
            response.headers["X-Stamped"] = "yes"

        app.on_response_prepare.append(stamp)
    app.router.add_route("*", "/answer", answer)
    return app


async def _serve(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _exchange(port: int, raw: bytes) -> bytes:
    """What the server writes for ``raw`` until it closes the connection (or stops writing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    chunks = []
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 2.0)
            if not chunk:
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", b"".join(chunks))


def _request(query: str = "", method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"{method} /answer{query} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()
        if method != "POST"
        else f"POST /answer{query} HTTP/{version}\r\nHost: x\r\nContent-Length: 2\r\n{extra}"
        f"\r\n{{}}".encode()
    )


CLOSE = _request(extra="Connection: close\r\n")

CASES = {
    "keep-alive, then close": _request() + _request("?status=201") + CLOSE,
    "pipelined POSTs": _request(method="POST") + _request("?status=503", method="POST") + CLOSE,
    "client asks to close": _request(extra="Connection: close\r\n"),
    "answer closes": _request("?close=1"),
    "HTTP/1.0": _request(version="1.0"),
    "HTTP/1.0 keep-alive": _request(version="1.0", extra="Connection: keep-alive\r\n") + CLOSE,
    "HEAD": _request(method="HEAD") + CLOSE,
    "204 and 304": _request("?status=204") + _request("?status=304") + CLOSE,
    "Date set": _request("?date=1") + CLOSE,
    "Content-Length set": _request("?length=1") + CLOSE,
    "HEAD with Content-Length": _request("?length=1", method="HEAD") + CLOSE,
    "compressed": _request("?compress=1", extra="Accept-Encoding: gzip\r\n") + CLOSE,
    "cookie": _request("?cookie=1") + CLOSE,
    "no Content-Type": _request("?type=0") + CLOSE,
    "a header with a line break": _request("?crlf=1") + CLOSE,
}


@pytest.mark.parametrize("problem", [False, True], ids=["json", "problem"])
@pytest.mark.parametrize("signal", [False, True], ids=["no signal", "on_response_prepare"])
@pytest.mark.parametrize("case", list(CASES))
async def test_the_same_bytes_on_the_wire(case: str, signal: bool, problem: bool) -> None:
    seen: list[bytes] = []
    for make in (_plain_problem, _lean_problem) if problem else (_plain, _lean):
        async for port in _serve(_app(make, signal=signal)):
            seen.append(await _exchange(port, CASES[case]))
    plain, lean = seen
    # aiohttp refuses to send a header with a line break: the connection closes unanswered
    assert plain.startswith(b"HTTP/1.") or (case == "a header with a line break" and not plain)
    assert lean == plain


async def test_the_lean_way_is_taken_and_leaves_the_answer_as_aiohttp_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[web.StreamResponse] = []
    general_start = web.StreamResponse._start

    async def spy(self: web.StreamResponse, request: web.BaseRequest) -> object:
        started.append(self)
        return await general_start(self, request)

    monkeypatch.setattr(web.StreamResponse, "_start", spy)
    states = []
    for make in (_plain, _lean):
        answers: list[web.StreamResponse] = []

        async def keep(
            request: web.Request, make: Make = make, answers: list[web.StreamResponse] = answers
        ) -> web.StreamResponse:
            response = make(BODY, 200)
            answers.append(response)
            return response

        app = web.Application()
        app.router.add_get("/answer", keep)
        async for port in _serve(app):
            await _exchange(port, _request(extra="Connection: close\r\n"))
        (answer,) = answers
        headers = [(k, "-" if k == "Date" else v) for k, v in answer.headers.items()]
        states.append((answer.prepared, answer.keep_alive, answer.body_length, headers))
        assert answer.body_length > len(BODY)  # aiohttp counts the head in it too
        with pytest.raises(RuntimeError, match="after write_eof"):
            await answer.write(b"more")
    assert states[0] == states[1]
    assert [type(s) for s in started] == [web.Response]  # the plain one only


async def test_a_client_gone_before_the_answer_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The answer's write to a closed connection ends the request as aiohttp's would."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return JsonAnswer(BODY, 200)

    app = web.Application()
    app.router.add_get("/answer", slow)
    async for port in _serve(app):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.sleep(0.05)
        # the server still answers on a new connection
        assert (await _exchange(port, CLOSE)).startswith(b"HTTP/1.1 200 OK\r\n")
    assert "Unhandled exception" not in caplog.text
