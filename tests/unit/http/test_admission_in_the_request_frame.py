"""The call endpoint's direct dispatch does the admission's work in the request middleware's
frame: the same refusals, the same accounting of requests and body bytes in flight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from gateway.adapter import Adapter, Call, FakeAdapter, Reply, SystemSpec
from gateway.app import create_app
from gateway.http.admission import ADMISSION, Admission, admission_middleware
from gateway.http.chain import request_middleware
from gateway.http.dispatch import dispatched_directly
from gateway.http.keys import PRINCIPAL, REQUEST_ID
from gateway.settings import AdmissionSettings, SystemSettings
from tests.subject_fixtures import TEST_SUBJECT_KEYS
from tests.unit.http.test_admission import CALLS, _bounded
from tests.unit.http.test_admission import CountingVerifier as Verifier
from tests.unit.http.test_app import auth, call_body


class Backend:
    """Answers at once, holds calls while ``hold`` is set, fails while ``fail`` is set."""

    def __init__(self) -> None:
        self.hold = False
        self.fail = False
        self.release = asyncio.Event()
        self.arrived = 0
        self._arrival = asyncio.Event()
        self.adapter = FakeAdapter(self.handle)

    async def handle(self, call: Call) -> Reply:
        self.arrived += 1
        self._arrival.set()
        if self.fail:
            raise RuntimeError("a bug in an adapter")
        if self.hold:
            await self.release.wait()
        return Reply({"result": {"yxbz": True}})

    async def until_arrived(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.arrived < count:
                self._arrival.clear()
                await self._arrival.wait()


async def _client(
    tmp_path: Path, backend: Backend, verifier: Verifier, **admission: int
) -> AsyncIterator[TestClient[Any, Any]]:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        _bounded(tmp_path, **admission),
        verifier=verifier,
        open_adapter=open_adapter,
        subjects=TEST_SUBJECT_KEYS,
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        # The first call of a path goes aiohttp's way and teaches the path: later ones are
        # dispatched directly, through the request middleware given the admission.
        first = await client.post(CALLS, json=call_body(), headers=auth())
        assert first.status == 200, await first.text()
        assert dispatched_directly(app)
        yield client


async def _overloaded(response: Any, retry_after: str) -> None:
    assert response.status == 503, await response.text()
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == retry_after
    body = await response.json(content_type=None)
    assert body["code"] == "gateway.overloaded"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "RateLimit-Policy" not in response.headers  # refused before the rate limit


async def test_beyond_the_bound_a_directly_dispatched_call_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    backend, verifier = Backend(), Verifier()
    async for client in _client(tmp_path, backend, verifier, max_in_flight=2, retry_after=3):
        admission = client.app[ADMISSION]
        assert admission.in_flight == 0
        backend.hold = True
        held = [
            asyncio.create_task(client.post(CALLS, json=call_body(), headers=auth()))
            for _ in range(2)
        ]
        await backend.until_arrived(3)
        assert admission.in_flight == 2
        assert admission.body_bytes > 0
        checked = verifier.checked
        await _overloaded(await client.post(CALLS, json=call_body(), headers=auth()), "3")
        assert verifier.checked == checked  # no token check for it
        assert backend.arrived == 3
        metrics = await (await client.get("/metrics")).text()
        assert 'tongban_overloaded_total{bound="requests"} 1.0' in metrics
        # A refused call is no served request: not in the request metrics.
        assert 'status="503"' not in metrics
        backend.release.set()
        for task in held:
            response = await task
            assert response.status == 200, await response.text()
            assert response.headers["X-Request-ID"]
        assert admission.in_flight == 0
        assert admission.body_bytes == 0


async def test_body_bytes_in_flight_are_bounded_on_the_direct_path(tmp_path: Path) -> None:
    backend, verifier = Backend(), Verifier()
    settings: dict[str, int] = {
        "max_in_flight": 50,
        "max_body_bytes_in_flight": 2900,
        "retry_after": 7,
    }
    async for client in _client(tmp_path, backend, verifier, **settings):
        admission = client.app[ADMISSION]
        big = (json.dumps(call_body()) + " " * 1500)[:1500].encode()
        headers = {**auth(), "Content-Type": "application/json"}
        backend.hold = True
        held = asyncio.create_task(client.post(CALLS, data=big, headers=headers))
        await backend.until_arrived(2)
        assert admission.body_bytes == 1500
        await _overloaded(await client.post(CALLS, data=big, headers=headers), "7")
        assert admission.in_flight == 1
        backend.release.set()
        assert (await held).status == 200
        assert (admission.in_flight, admission.body_bytes) == (0, 0)


async def test_a_failing_or_refused_call_leaves_nothing_in_flight(tmp_path: Path) -> None:
    backend, verifier = Backend(), Verifier()
    async for client in _client(tmp_path, backend, verifier, max_in_flight=2):
        admission = client.app[ADMISSION]
        backend.fail = True
        failed = await client.post(CALLS, json=call_body(), headers=auth())
        assert failed.status >= 500
        assert failed.content_type == "application/problem+json"
        refused = await client.post(CALLS, json=call_body(), headers=auth("nonsense"))
        assert refused.status == 401
        assert (await refused.json(content_type=None))["request_id"] == refused.headers[
            "X-Request-ID"
        ]
        assert (admission.in_flight, admission.body_bytes) == (0, 0)


@pytest.mark.parametrize("path", [CALLS, "/api/v1/services"])
async def test_a_late_connection_gets_the_same_refusal_in_the_request_frame(path: str) -> None:
    """A connection accepted beyond the connection bound: one 503, then closed; the handler
    never runs, nothing is counted in flight, as in ``admission_middleware``."""
    answers = []
    ran: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ran.append(True)
        return web.Response(text="no")

    for fused in (True, False):
        admission = Admission(AdmissionSettings(retry_after=5), max_body_bytes=2048)
        protocol: Any = mock.Mock()
        admission.late(protocol)
        app = web.Application()
        request = make_mocked_request("POST", path, app=app, protocol=protocol)
        if fused:
            answer = await request_middleware(request, handler, admission=admission)
        else:
            app[ADMISSION] = admission
            answer = await admission_middleware(request, handler)
        assert not ran
        assert admission.in_flight == 0
        assert not answer.keep_alive
        assert isinstance(answer, web.Response)
        assert answer.body is not None
        body = json.loads(bytes(answer.body))  # type: ignore[arg-type]
        answers.append(
            (answer.status, answer.headers["Retry-After"], body["code"], answer.content_type)
        )
    assert answers[0] == answers[1] == (503, "5", "gateway.overloaded", "application/problem+json")


async def test_the_private_fields_read_are_what_the_properties_give() -> None:
    """The request's dict, protocol and method, the match info's route and app: read behind
    aiohttp's properties and mapping methods (gateway/http/middlewares.py, chain.py)."""
    app = web.Application()
    route = app.router.add_post("/x/{y}", _never)
    request = make_mocked_request("POST", "/x/1", app=app)
    request[REQUEST_ID] = "r-1"
    assert request._state[REQUEST_ID] == "r-1"
    assert request._state.get(PRINCIPAL) is request.get(PRINCIPAL) is None
    assert request._protocol is request.protocol
    assert request._method == request.method
    assert request._read_bytes is None
    assert await request.read() == b""
    info = await app.router.resolve(request)
    assert info._route is info.route is route
    info.add_app(app)
    assert info._current_app is info.current_app is app


async def _never(request: web.Request) -> web.StreamResponse:
    raise AssertionError("not called")
