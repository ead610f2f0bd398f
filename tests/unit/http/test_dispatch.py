"""The call endpoint's direct dispatch answers as aiohttp's dispatch does, byte for byte."""

from __future__ import annotations

import asyncio
import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import http_writer, web, web_app, web_middlewares, web_protocol, web_urldispatcher
from aiohttp.test_utils import TestServer, make_mocked_request

import gateway.http.dispatch as dispatch
from gateway.adapter import Adapter, SystemSpec
from gateway.app import create_app
from gateway.http.dispatch import dispatched_directly
from gateway.settings import SystemSettings
from tests.source_pins import source_digest as _digest
from tests.subject_fixtures import TEST_SUBJECT_KEYS
from tests.unit.http.test_app import ISSUER, L2, Backend, _settings, call_body

CALLS = "/api/v1/services/degree-verification/calls"


def _call(
    rid: str,
    path: str = CALLS,
    *,
    method: str = "POST",
    extra: str = "",
    body: bytes | None = None,
    version: str = "1.1",
) -> bytes:
    data = orjson.dumps(call_body()) if body is None else body
    return (
        f"{method} {path} HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {L2}\r\n"
        f"X-Request-ID: {rid}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def _last(rid: str) -> bytes:
    return _call(rid, extra="Connection: close\r\n")


SEQUENCES: dict[str, list[bytes]] = {
    # one connection each; the first call of a path goes aiohttp's way and teaches the path
    "keep-alive calls": [_call("a1") + _call("a2") + _call("a3") + _last("a4")],
    "pipelined in one write": [b"".join(_call(f"p{i}") for i in range(4)) + _last("p9")],
    "connections in turn": [_last("c1"), _last("c2"), _last("c3")],
    "Expect: 100-continue": [
        _last("e0"),
        _call("e1", extra="Expect: 100-continue\r\n") + _last("e2"),
    ],
    "other methods and paths": [
        _last("m0"),
        _call("m1", method="GET")
        + _call("m2", method="PUT")
        + _call("m3", "/api/v1/services/degree-verification/calls/")
        + _call("m4", "/api/v1/services/a/b/calls")
        + _call("m5", "/api/v1/services/nope/calls")
        + _call("m6", "/api/v1/services/degree-verification")
        + _last("m7"),
    ],
    "encoded paths": [
        _last("u0"),
        _call("u1", "/api/v1/services/degree%2Dverification/calls")
        + _call("u2", "/api/v1/services/degree%2Fverification/calls")
        + _call("u3", "/api/v1/services/degree-verification/calls?x=1")
        + _call("u4", "/api/v1/services//calls")
        + _last("u5"),
    ],
    "refusals": [
        _last("r0"),
        _call("r1", body=b"{")
        + _call("r2", body=b"[]")
        + _call("r3", extra="Authorization: Bearer nope\r\n")
        + _call("r4", body=orjson.dumps(call_body(receiving_province="99")))
        + _last("r5"),
    ],
    "HTTP/1.0": [_last("h0"), _call("h1", version="1.0")],
    "HEAD": [_last("d0"), _call("d1", method="HEAD") + _last("d2")],
}


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    chunks = []
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5.0):
            chunks.append(chunk)
    except TimeoutError:
        pass
    writer.close()
    return re.sub(rb"\r\nDate: [^\r]+", b"\r\nDate: -", b"".join(chunks))


def _metrics(text: str) -> list[str]:
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(("tongban_http_requests_total", "tongban_backend_calls_total"))
    )


def _access_lines(lines: list[MutableMapping[str, Any]]) -> list[dict[str, Any]]:
    kept = []
    for line in lines:
        if line.get("event") == "request_completed":
            kept.append({k: v for k, v in line.items() if k != "duration_ms"})
    return kept


async def _run(tmp_path: Path, sequence: list[bytes], direct: bool) -> tuple[Any, ...]:
    backend = Backend()

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        _settings(tmp_path),
        verifier=ISSUER,
        open_adapter=open_adapter,
        subjects=TEST_SUBJECT_KEYS,
    )
    async with TestServer(app, host="127.0.0.1") as server:
        assert dispatched_directly(app) is direct
        with structlog.testing.capture_logs() as lines:
            assert server.port is not None
            wire = [await _exchange(server.port, raw) for raw in sequence]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/metrics") as answer,
        ):
            metrics = _metrics(await answer.text())
    calls = [(c.operation, c.payload, c.context.request_id) for c in backend.adapter.calls]
    return wire, metrics, _access_lines(lines), calls


@pytest.mark.parametrize("name", list(SEQUENCES))
async def test_the_same_bytes_metrics_and_access_lines(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = await _run(tmp_path / "direct", SEQUENCES[name], direct=True)
    monkeypatch.setattr(dispatch, "_plain_router", lambda app: False)
    general = await _run(tmp_path / "general", SEQUENCES[name], direct=False)
    wire, metrics, lines, calls = general
    assert all(w.startswith(b"HTTP/1.") for w in wire)
    assert lines
    assert metrics
    assert direct[0] == wire
    assert direct[1] == metrics
    assert direct[2] == lines
    assert direct[3] == calls


async def test_known_paths_skip_the_resolver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    resolve = web_urldispatcher.UrlDispatcher.resolve

    async def spy(self: Any, request: web.Request) -> Any:
        resolved.append(request.path)
        return await resolve(self, request)

    monkeypatch.setattr(web_urldispatcher.UrlDispatcher, "resolve", spy)
    wire, _, _, calls = await _run(
        tmp_path, [_call("k1") + _call("k2") + _call("k3", method="GET") + _last("k4")], True
    )
    assert wire[0].count(b"HTTP/1.1 200 OK") == 3
    assert len(calls) == 3
    # the first call and the GET (and the metrics page) are resolved; the known path is not
    assert resolved == [CALLS, CALLS, "/metrics"]


async def test_a_full_table_starts_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_PATHS_KEPT", 1)
    resolved: list[str] = []
    resolve = web_urldispatcher.UrlDispatcher.resolve

    async def spy(self: Any, request: web.Request) -> Any:
        resolved.append(request.path)
        return await resolve(self, request)

    monkeypatch.setattr(web_urldispatcher.UrlDispatcher, "resolve", spy)
    nope = "/api/v1/services/nope/calls"
    wire, _, _, _ = await _run(
        tmp_path, [_call("t1") + _call("t2", nope) + _call("t3") + _last("t4")], True
    )
    assert wire[0].count(b"HTTP/1.1 200 OK") == 3
    assert resolved == [CALLS, nope, CALLS, "/metrics"]


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("not called")


async def test_an_app_with_a_sub_application_keeps_aiohttps_dispatch(tmp_path: Path) -> None:
    backend = Backend()

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        _settings(tmp_path), verifier=ISSUER, open_adapter=open_adapter, subjects=TEST_SUBJECT_KEYS
    )
    app.add_subapp("/sub", web.Application())
    async with TestServer(app, host="127.0.0.1"):
        assert not dispatched_directly(app)


# --- the aiohttp code the dispatch and the lean answer stand in for ---------------------------

_STOOD_IN_FOR: dict[str, Any] = {
    "Application._handle": web.Application._handle,
    "Application._make_handler": web.Application._make_handler,
    "Application._prepare_middleware": web.Application._prepare_middleware,
    "Application.pre_freeze": web.Application.pre_freeze,
    "web_app._build_middlewares": web_app._build_middlewares,
    "web_middlewares._fix_request_current_app": web_middlewares._fix_request_current_app,
    "UrlDispatcher.resolve": web_urldispatcher.UrlDispatcher.resolve,
    "UrlMappingMatchInfo.__init__": web_urldispatcher.UrlMappingMatchInfo.__init__,
    "UrlMappingMatchInfo.add_app": web_urldispatcher.UrlMappingMatchInfo.add_app,
    "UrlMappingMatchInfo.freeze": web_urldispatcher.UrlMappingMatchInfo.freeze,
    "Resource.resolve": web_urldispatcher.Resource.resolve,
    "Response.__init__": web.Response.__init__,
    "Response._start": web.Response._start,
    "Response.write_eof": web.Response.write_eof,
    "StreamResponse.__init__": web.StreamResponse.__init__,
    "StreamResponse.prepare": web.StreamResponse.prepare,
    "StreamResponse._start": web.StreamResponse._start,
    "StreamResponse._prepare_headers": web.StreamResponse._prepare_headers,
    "StreamResponse._write_headers": web.StreamResponse._write_headers,
    "StreamResponse.write_eof": web.StreamResponse.write_eof,
    "Request._prepare_hook": web.Request._prepare_hook,
    "StreamWriter.write_eof": http_writer.StreamWriter.write_eof,
    "StreamWriter._send_headers_with_payload": http_writer.StreamWriter._send_headers_with_payload,
    "RequestHandler.finish_response": web_protocol.RequestHandler.finish_response,
}

PINNED = {
    "Application._handle": "1294b2b208b126cb",
    "Application._make_handler": "63e4c1bdd0e8983b",
    "Application._prepare_middleware": "09a760050629ddbc",
    "Application.pre_freeze": "c380a22d69327b01",
    "web_app._build_middlewares": "be63acb59597d9b8",
    "web_middlewares._fix_request_current_app": "4c86c08447971719",
    "UrlDispatcher.resolve": "259c48022a93030c",
    "UrlMappingMatchInfo.__init__": "f851e5cb478e6509",
    "UrlMappingMatchInfo.add_app": "40eee70e103adff9",
    "UrlMappingMatchInfo.freeze": "04adcc3e1f28ed62",
    "Resource.resolve": "61f147f661d99188",
    "Response.__init__": "a6a7497dd6dce4f2",
    "Response._start": "5b9473c63ff522b4",
    "Response.write_eof": "67abfc368fa8cbcb",
    "StreamResponse.__init__": "4526b12af19f1293",
    "StreamResponse.prepare": "9c6c49cc07222eef",
    "StreamResponse._start": "7e03ebd82e7f9f98",
    "StreamResponse._prepare_headers": "92807d25d9c397cd",
    "StreamResponse._write_headers": "0280580268bc7e84",
    "StreamResponse.write_eof": "12b174e4cfe3bb7e",
    "Request._prepare_hook": "7a57630528793e4b",
    "StreamWriter.write_eof": "c7e545df80b9eb68",
    "StreamWriter._send_headers_with_payload": "ba7ce5cef94031cd",
    "RequestHandler.finish_response": "b7eb53db8f4b30ca",
}


def test_the_aiohttp_code_stood_in_for_is_unchanged() -> None:
    changed = {name for name, f in _STOOD_IN_FOR.items() if _digest(f) != PINNED[name]}
    assert not changed, (
        f"aiohttp {aiohttp.__version__} changed {sorted(changed)}: check gateway/http/dispatch.py "
        "and gateway/http/answer.py against the new code before updating PINNED"
    )


def test_the_match_info_set_at_once_is_the_one_aiohttp_builds() -> None:
    """What the direct dispatch puts on a request is what ``UrlMappingMatchInfo(match, route)``,
    ``add_app(app)`` and ``freeze()`` leave: every slot and the dict, and frozen alike."""
    app = web.Application()
    route = app.router.add_post("/s/{service}/calls", _never)
    match = {"service": "degree-verification"}
    built = web_urldispatcher.UrlMappingMatchInfo(match, route)
    built.add_app(app)
    built.freeze()
    call = dispatch.CallDispatch(app, route, _never)
    call._paths["/s/degree-verification/calls"] = match
    request = make_mocked_request("POST", "/s/degree-verification/calls", app=app)
    chain: Any = call(request)
    chain.close()  # the chain's coroutine, not awaited
    info = request._match_info
    assert info is not None
    assert type(info) is type(built)
    assert dict(info) == dict(built)
    assert info is not match
    slots = web_urldispatcher.UrlMappingMatchInfo.__slots__
    assert {n: getattr(info, n) for n in slots} == {n: getattr(built, n) for n in slots}
    assert info.apps == (app,)
    assert info.current_app is app
    assert info.route is route
    with pytest.raises(RuntimeError):
        info.add_app(web.Application())


async def test_the_private_attributes_used_exist(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/", _never)
    # read by the lean answer (answer.py) behind their properties
    head = make_mocked_request("HEAD", "/", version=aiohttp.HttpVersion10, app=app)
    assert (head._version, head._method) == (head.version, head.method)
    assert app._on_response_prepare is app.on_response_prepare
    head_info = head._match_info
    assert head_info is not None
    assert head_info._apps == list(head_info.apps)
    assert hasattr(app, "_subapps")
    assert hasattr(app.router, "_matched_sub_app_resources")
    assert "_handle" not in vars(app)  # the method, which an attribute can stand in for
    assert "_match_info" in web.Request.ATTRS
    assert "_payload_writer" in web.BaseRequest.__init__.__code__.co_names
    assert http_writer._serialize_headers is not None
    response = web.Response()
    for name in ("_keep_alive", "_eof_sent", "_body_length", "_payload_writer", "_req"):
        assert hasattr(response, name), name
