"""Admission: beyond its bound a worker refuses at once, and touches nothing for the refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.adapter import Adapter, Call, FakeAdapter, Reply, SystemSpec
from gateway.app import create_app
from gateway.http import admission as admission_module
from gateway.http.admission import ADMISSION, Admission
from gateway.http.keys import STATE
from gateway.identity.devtokens import DevTokenIssuer
from gateway.principal import Principal
from gateway.serve import limit_connections_of
from gateway.settings import AdmissionSettings, GatewaySettings, Settings, SystemSettings
from tests.subject_fixtures import TEST_SUBJECT_KEYS
from tests.unit.http.test_app import _settings, auth, call_body

ISSUER = DevTokenIssuer(b"k" * 32)
CALLS = "/api/v1/services/degree-verification/calls"


class CountingVerifier:
    """The token check is the first store-like work of an /api request: count its uses."""

    def __init__(self) -> None:
        self.checked = 0

    async def verify(self, token: str) -> Principal:
        self.checked += 1
        return await ISSUER.verify(token)


class HeldBackend:
    """A back-end that holds every call until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived = 0
        self._arrival = asyncio.Event()
        self.adapter = FakeAdapter(self.handle)

    async def handle(self, call: Call) -> Reply:
        self.arrived += 1
        self._arrival.set()
        await self.release.wait()
        return Reply({"result": {"yxbz": True}})

    async def until_arrived(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.arrived < count:
                self._arrival.clear()
                await self._arrival.wait()


def _bounded(tmp_path: Path, **admission: int) -> Settings:
    settings = _settings(tmp_path)
    gateway = GatewaySettings.model_validate(
        {"server": {"max_body_bytes": 2048}, "admission": admission}
    )
    return Settings(
        settings.config_dir, gateway, settings.systems, settings.services, settings.routes
    )


@pytest.fixture
def backend() -> HeldBackend:
    return HeldBackend()


@pytest.fixture
def verifier() -> CountingVerifier:
    return CountingVerifier()


async def _client(
    settings: Settings, backend: HeldBackend, verifier: CountingVerifier
) -> AsyncIterator[TestClient[Any, Any]]:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        settings, verifier=verifier, open_adapter=open_adapter, subjects=TEST_SUBJECT_KEYS
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


@pytest.fixture
async def two_slots(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in _client(_bounded(tmp_path, max_in_flight=2), backend, verifier):
        yield client


@pytest.fixture
async def few_bytes(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = _bounded(tmp_path, max_in_flight=50, max_body_bytes_in_flight=2900, retry_after=7)
    async for client in _client(settings, backend, verifier):
        yield client


async def _audit_records(client: TestClient[Any, Any]) -> int:
    writer = client.app[STATE].audit
    assert writer is not None
    assert await writer.settle()
    return int(writer.stats.records)


async def _overloaded(response: Any, retry_after: str = "1") -> dict[str, Any]:
    assert response.status == 503, await response.text()
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == retry_after
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == "gateway.overloaded"
    assert body["status"] == 503
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


async def test_beyond_the_bound_a_call_is_refused_before_any_work(
    two_slots: TestClient[Any, Any], backend: HeldBackend, verifier: CountingVerifier
) -> None:
    client = two_slots
    held = [
        asyncio.create_task(client.post(CALLS, json=call_body(), headers=auth())) for _ in range(2)
    ]
    await backend.until_arrived(2)
    checked, records = verifier.checked, await _audit_records(client)

    refused = await client.post(CALLS, json=call_body(), headers=auth())
    await _overloaded(refused)
    # Nothing was done for it: no token check, no audit record, no back-end call.
    assert verifier.checked == checked
    assert await _audit_records(client) == records
    assert backend.arrived == 2
    # A cheap GET is refused too: the bound counts requests, not kinds of request.
    await _overloaded(await client.get("/api/v1/services", headers=auth()))
    # Health, readiness and metrics still answer, and metrics count the refusals.
    assert (await client.get("/healthz")).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'tongban_overloaded_total{bound="requests"} 2.0' in metrics

    backend.release.set()
    for task in held:
        response = await task
        assert response.status == 200, await response.text()
    # The slots are free again.
    again = await client.post(CALLS, json=call_body(), headers=auth())
    assert again.status == 200, await again.text()
    assert backend.arrived == 3


async def test_body_bytes_in_flight_are_bounded_too(
    few_bytes: TestClient[Any, Any], backend: HeldBackend, verifier: CountingVerifier
) -> None:
    client = few_bytes
    # 1,500 bytes: a call padded with whitespace, still valid JSON.
    big = (json.dumps(call_body()) + " " * 1500)[:1500].encode()
    assert len(big) == 1500
    headers = {**auth(), "Content-Type": "application/json"}
    held = asyncio.create_task(client.post(CALLS, data=big, headers=headers))
    await backend.until_arrived(1)
    checked = verifier.checked

    await _overloaded(await client.post(CALLS, data=big, headers=headers), retry_after="7")
    assert verifier.checked == checked
    assert backend.arrived == 1

    # A body of unknown length reserves the most a body may be (2048): also too much now.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"purpose": "x"}'

    streamed = await client.post(CALLS, data=chunks(), headers=headers)
    await _overloaded(streamed, retry_after="7")
    # Requests without a body, or with a small one, still fit.
    listing = await client.get("/api/v1/services", headers=auth())
    assert listing.status == 200
    small = await client.post(CALLS, json=call_body(data={"holder_id": "1"}), headers=auth())
    assert small.status == 422  # admitted, and refused by the schema instead
    metrics = await (await client.get("/metrics")).text()
    assert 'tongban_overloaded_total{bound="body_bytes"} 2.0' in metrics

    backend.release.set()
    assert (await held).status == 200
    # Released: the same large body is admitted now.
    assert (await client.post(CALLS, data=big, headers=headers)).status == 200


async def _get_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    await writer.drain()
    return await reader.readuntil(b'{"status":"ok"}')


async def _busy(writer: asyncio.StreamWriter) -> None:
    """Start a request's head on a connection: it is no longer idle (a partial request)."""
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()


async def _finish_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The rest of the head ``_busy`` started, and its answer."""
    writer.write(b"Host: gw\r\n\r\n")
    await writer.drain()
    return await reader.readuntil(b'{"status":"ok"}')


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ask: bytes) -> bytes:
    """Everything the server sends for one request until it closes the connection."""
    try:
        writer.write(ask)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def _serve_bounded(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier, **admission: int
) -> tuple[web.Application, web.AppRunner, int]:
    """The gateway on a real loopback socket with its admission (the connection bound and the
    door), as ``serve`` runs it."""

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    app = create_app(
        _bounded(tmp_path, **admission),
        verifier=verifier,
        open_adapter=open_adapter,
        subjects=TEST_SUBJECT_KEYS,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    limit_connections_of(app, runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return app, runner, runner.addresses[0][1]


async def test_connections_beyond_the_bound_get_one_refusal_then_close(
    tmp_path: Path,
    backend: HeldBackend,
    verifier: CountingVerifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission_module, "_LATE_CONNECTION_GRACE", 0.2)
    app, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_connections=2)
    try:
        # Two connections are held (each has answered a request, so each was accepted), each
        # busy with its next request's head (idle ones would be closed to make room).
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in held:
            assert b"200 OK" in await _get_healthz(reader, writer)
            await _busy(writer)
        checked = verifier.checked
        records = await _audit_records_of(app)
        admission = app[ADMISSION]
        # While its loop runs late, the worker resets a connection beyond the bound at once.
        admission.delay.last = 0.5
        late = b""
        with contextlib.suppress(ConnectionResetError):
            late = await _answer(
                *await asyncio.open_connection("127.0.0.1", port),
                b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
            )
        assert late == b""
        admission.delay.last = 0.0
        # On time, a third gets one clean refusal, told the connection closes, and is closed after it.
        body = json.dumps(call_body()).encode()
        ask = (
            f"POST {CALLS} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        answer = await _answer(*await asyncio.open_connection("127.0.0.1", port), ask)
        head, _, problem = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert b"\r\nConnection: close" in head
        assert b"\r\nRetry-After: 1" in head
        assert json.loads(problem)["code"] == "gateway.overloaded"
        # Nothing was done for it: no token check, no audit record, no back-end call.
        assert verifier.checked == checked
        assert await _audit_records_of(app) == records
        assert backend.arrived == 0
        # Health still answers on such a connection (once, then it closes).
        health = await _answer(
            *await asyncio.open_connection("127.0.0.1", port),
            b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        )
        assert health.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in health
        # One that sends nothing is not held: it is closed after a short grace.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
        # The held ones still work, and once one of them goes, a new connection is taken.
        assert b"200 OK" in await _finish_healthz(*held[0])
        held[1][1].close()
        await held[1][1].wait_closed()
        async with asyncio.timeout(10):
            # The server has no event for a connection gone: look until it has noticed.
            while len(runner.server.connections) > 1:  # type: ignore[union-attr]  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        again = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*again)
        metrics = await _get_metrics(*again)
        assert 'tongban_overloaded_total{bound="connections"} 4.0' in metrics
        for _, w in (held[0], again):
            w.close()
    finally:
        await runner.cleanup()


async def test_beyond_the_answered_late_connections_a_connection_is_aborted(
    tmp_path: Path,
    backend: HeldBackend,
    verifier: CountingVerifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection storm cannot make the worker hold unbounded memory: past the bound, only a
    few connections are kept to be answered (8 here); the rest are closed unread."""

    monkeypatch.setattr(admission_module, "_LATE_CONNECTION_GRACE", 60.0)
    app, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_connections=1)
    admission = app[ADMISSION]
    opened = []
    try:
        held = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*held)
        await _busy(held[1])  # not idle: not closed to make room
        # Eight silent connections beyond the bound: kept, each waiting to be answered once.
        for _ in range(8):
            opened.append(await asyncio.open_connection("127.0.0.1", port))
        async with asyncio.timeout(10):
            while admission.late_count < 8:  # noqa: ASYNC110 - accepted by the server's loop
                await asyncio.sleep(0.01)
        # The next one is closed unread: no answer at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append((reader, writer))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        # One of the kept ones still gets its clean refusal.
        late_reader, late_writer = opened[0]
        answer = await _answer(
            late_reader, late_writer, b"GET /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert admission.late_count == 7
        opened.append(held)
    finally:
        for _, w in opened:
            w.close()
        await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):
            return await reader.read() == b""
    return True


async def test_at_the_bound_the_connection_idle_longest_makes_room(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> None:
    """A client pool's idle keep-alive connections do not keep a new client out: at the
    connection bound the connection idle longest is closed, and the new one is served."""
    _, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_connections=2)
    try:
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*first)
        assert b"200 OK" in await _get_healthz(*second)  # both idle now, the first the longest
        third = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*third)
        assert await _closed_by_server(first[0])
        # The other idle one is kept, and works; nothing was refused.
        assert b"200 OK" in await _get_healthz(*second)
        metrics = await _get_metrics(*third)
        assert 'tongban_overloaded_total{bound="connections"}' not in metrics
        for _, w in (first, second, third):
            w.close()
    finally:
        await runner.cleanup()


async def test_at_the_bound_busy_connections_are_not_closed_to_make_room(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> None:
    """A connection with a call in progress, or with part of its next request received, is
    never closed to make room: the new connection is refused instead."""
    _, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_connections=2)
    try:
        calling = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(call_body()).encode()
        calling[1].write(
            f"POST {CALLS} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await backend.until_arrived(1)  # its call is held at the back-end
        sending = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*sending)
        await _busy(sending[1])  # part of its next request received
        late = await _answer(
            *await asyncio.open_connection("127.0.0.1", port),
            b"GET /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n",
        )
        assert late.startswith(b"HTTP/1.1 503 "), late
        assert b"\r\nConnection: close" in late
        # Both held connections still carry their requests through.
        assert b"200 OK" in await _finish_healthz(*sending)
        backend.release.set()
        async with asyncio.timeout(10):
            assert b"200 OK" in await calling[0].readuntil(b"\r\n\r\n")
        for _, w in (calling, sending):
            w.close()
    finally:
        backend.release.set()
        await runner.cleanup()


async def test_many_idle_connections_are_closed_an_eighth_at_a_time(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> None:
    """At the bound with many idle connections, an eighth of them (those idle longest) are
    closed at once, so that the arrivals that follow find room without a look each."""
    _, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_connections=16)
    opened = []
    try:
        for _ in range(16):
            opened.append(await asyncio.open_connection("127.0.0.1", port))
            assert b"200 OK" in await _get_healthz(*opened[-1])
        newcomer = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*newcomer)
        # The two idle longest are closed (16 // 8), the others kept.
        assert await _closed_by_server(opened[0][0])
        assert await _closed_by_server(opened[1][0])
        for reader, writer in opened[2:]:
            assert b"200 OK" in await _get_healthz(reader, writer)
        # The second closed one's room takes a second newcomer without closing another.
        another = await asyncio.open_connection("127.0.0.1", port)
        assert b"200 OK" in await _get_healthz(*another)
        for reader, writer in opened[2:]:
            assert b"200 OK" in await _get_healthz(reader, writer)
        opened += [newcomer, another]
    finally:
        for _, w in opened:
            w.close()
        await runner.cleanup()


async def _audit_records_of(app: web.Application) -> int:
    writer = app[STATE].audit
    assert writer is not None
    assert await writer.settle()
    return int(writer.stats.records)


async def _get_metrics(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    await writer.drain()
    return (await reader.read()).decode()


def _admission(**settings: float) -> Admission:
    return Admission(AdmissionSettings.model_validate(settings), 2048)


async def test_a_late_loop_lowers_the_bound_and_a_timely_one_raises_it_again() -> None:
    """The rule alone, the delays given (the probe's own measurements are not awaited)."""
    admission = _admission(max_in_flight=100, min_in_flight=10, queue_delay_target_ms=5)
    for _ in range(40):
        admission.admitted()
    # The loop ran 20 ms late on average: the bound falls below what is in flight (40), by
    # target/delay but never by more than a quarter per interval.
    assert admission.interval_ended(0.020, busy=1.0)
    assert admission.limit == 30
    admission.in_flight = 30
    assert admission.interval_ended(0.0055, busy=1.0)
    assert admission.limit == 27  # 30 x 5/5.5
    # A loop late while its thread is mostly off the CPU (other processes hold the core):
    # fewer calls would not help; the bound, reached, grows as if the loop were on time.
    assert admission.interval_ended(0.050, busy=0.3)
    assert admission.limit == 30
    # Never below min_in_flight, however late the loop.
    for _ in range(20):
        admission.interval_ended(0.5, busy=1.0)
    assert admission.limit == 10
    # On time again, and the bound reached: it grows by an eighth per interval, to the ceiling.
    admission.in_flight = 16
    assert admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 11
    for _ in range(60):
        admission.in_flight = admission.limit
        admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 100
    # Nothing in flight and nothing refused: the probe stops, and the bound is back at its
    # ceiling (whatever lowered it has passed).
    admission.in_flight = 0
    admission.limit = 20
    assert not admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 100
    admission.delay.stop()


async def test_while_refusing_the_bound_follows_a_tighter_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Demand beyond the bound: the lower target applies, the cut is deep at once, a late
    loop off the CPU holds the bound, and it stays lowered through a moment of idleness."""
    admission = _admission(
        max_in_flight=100, min_in_flight=10, queue_delay_target_ms=50, refusing_delay_target_ms=2
    )
    for _ in range(100):
        admission.admitted()
    # 10 ms late, under the 50 ms target: nothing refused, the bound stays.
    assert admission.interval_ended(0.010, busy=1.0)
    assert admission.limit == 100
    # The same delay with refusals in the interval: cut to 2/10 of what was in flight at once.
    admission.refusal("requests")
    assert admission.interval_ended(0.010, busy=1.0)
    assert admission.limit == 20
    # Still refusing, late, but the loop's thread mostly off the CPU: held, neither way.
    admission.in_flight = 20
    admission.refusal("queue_delay")
    assert admission.interval_ended(0.004, busy=0.3)
    assert admission.limit == 20
    # Refusing and on time: it grows by an eighth.
    admission.refusal("queue_delay")
    assert admission.interval_ended(0.0015, busy=1.0)
    assert admission.limit == 22
    # Idle a moment just after a refusal (under overload, in flight falls to nothing now
    # and then): the bound stays lowered.
    admission.in_flight = 0
    assert not admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 22
    # Idle with no refusal for a while (``_CALM``): back at the ceiling.
    monkeypatch.setattr(admission_module, "_CALM", 0.0)
    assert not admission.interval_ended(0.001, busy=1.0)
    assert admission.limit == 100
    admission.delay.stop()


async def test_a_few_refusals_among_many_admissions_keep_the_normal_target() -> None:
    """A burst at a moderate load: the tight target's cut would refuse more and hold itself."""
    admission = _admission(
        max_in_flight=100, min_in_flight=10, queue_delay_target_ms=50, refusing_delay_target_ms=2
    )
    for _ in range(100):
        admission.admitted()
    for _ in range(5):
        admission.refusal("requests")
    # 10 ms late: past the 2 ms target, under the 50 ms one. Five refused, a hundred admitted.
    assert admission.interval_ended(0.010, busy=1.0)
    assert admission.limit == 100
    # The next interval refuses more than it admits: now the tight target cuts.
    for _ in range(3):
        admission.refusal("requests")
    admission.admitted()
    assert admission.interval_ended(0.010, busy=1.0)
    assert admission.limit == 20
    admission.delay.stop()


def test_a_bound_not_reached_does_not_grow() -> None:
    admission = _admission(max_in_flight=100)
    admission.limit = 10
    admission.in_flight = 3
    admission.interval_ended(0.0, busy=1.0)  # the peak of the interval, 3, is far from the bound
    assert admission.limit == 10


async def test_the_delay_is_measured_on_the_loop_itself() -> None:
    """A loop kept busy (callbacks computing: a stand-in for more ready work than it can run)
    lowers the bound."""
    admission = _admission(
        max_in_flight=64, min_in_flight=1, queue_delay_target_ms=1, queue_delay_interval_ms=10
    )
    for _ in range(64):
        admission.admitted()
    loop = asyncio.get_running_loop()

    def busy() -> None:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:  # on the CPU: the loop cannot run anything else
            pass
        if admission.limit == 64:
            loop.call_soon(busy)

    loop.call_soon(busy)
    async with asyncio.timeout(10):
        while admission.limit == 64:  # noqa: ASYNC110 - the probe runs on this loop
            await asyncio.sleep(0.01)
    assert admission.limit < 64
    admission.in_flight = 0
    admission.delay.stop()


async def test_beyond_the_adapted_bound_a_call_is_refused_as_queue_delay(
    two_slots: TestClient[Any, Any], backend: HeldBackend, verifier: CountingVerifier
) -> None:
    client = two_slots
    admission = client.app[ADMISSION]
    held = asyncio.create_task(client.post(CALLS, json=call_body(), headers=auth()))
    await backend.until_arrived(1)
    admission.limit = 1  # as the delay probe sets it when the loop runs late
    checked = verifier.checked
    first = await _overloaded(await client.post(CALLS, json=call_body(), headers=auth()))
    second = await _overloaded(await client.post(CALLS, json=call_body(), headers=auth()))
    assert first["request_id"] != second["request_id"]
    assert verifier.checked == checked
    assert backend.arrived == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'tongban_overloaded_total{bound="queue_delay"} 2.0' in metrics
    backend.release.set()
    assert (await held).status == 200


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer framed by its Content-Length: its head and its body."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return head, await reader.readexactly(length)


def _refused(head: bytes, body: bytes) -> str:
    """Assert a 503 gateway.overloaded answer; its request id."""
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert b"\r\nContent-Type: application/problem+json" in head
    assert b"\r\nRetry-After: 1\r\n" in head
    assert b"\r\nDate: " in head
    problem = json.loads(body)
    assert problem["code"] == "gateway.overloaded"
    assert problem["status"] == 503
    assert f"\r\nX-Request-ID: {problem['request_id']}\r\n".encode() in head
    return str(problem["request_id"])


def _call(body: bytes, *, extra: str = "", length: int | None = None) -> bytes:
    return (
        f"POST {CALLS} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\n{extra}"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    ).encode() + body


async def test_at_its_bound_a_worker_refuses_pipelined_requests_in_order_and_keeps_framing(
    tmp_path: Path,
    backend: HeldBackend,
    verifier: CountingVerifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the bound, requests are refused as their connection parses them; each answer in
    order, each body consumed, the connection kept; what may not be refused there is handed
    on; once a slot is free, the same connection is served."""
    door = 0
    raw_refusal = Admission.raw_refusal

    def counted(self: Admission, reason: str, **kw: bool) -> bytes:
        nonlocal door
        door += 1
        return raw_refusal(self, reason, **kw)

    monkeypatch.setattr(Admission, "raw_refusal", counted)
    app, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_in_flight=2)
    url = f"http://127.0.0.1:{port}{CALLS}"
    try:
        async with ClientSession() as session:
            held = [
                asyncio.create_task(session.post(url, json=call_body(), headers=auth()))
                for _ in range(2)
            ]
            await backend.until_arrived(2)
            checked, records = verifier.checked, await _audit_records_of(app)
            body = json.dumps(call_body()).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # In one write: a call with its body, a GET, health, and a call after it.
            writer.write(
                _call(body)
                + b"GET /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n"
                + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
                + _call(body)
            )
            ids = [_refused(*await _read_answer(reader)), _refused(*await _read_answer(reader))]
            head, health = await _read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert health == b'{"status":"ok"}'
            ids.append(_refused(*await _read_answer(reader)))
            assert len(set(ids)) == 3
            assert door >= 2  # the first two at the door, the last one perhaps in the middleware
            # A body that has not fully arrived: refused once it has, the connection kept.
            writer.write(_call(body)[:-5])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(_call(body)[-5:])
            _refused(*await _read_answer(reader))
            # A HEAD gets the refusal's head only, the next request is still read right.
            writer.write(f"HEAD {CALLS} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ")
            writer.write(b"GET /api/v1/services HTTP/1.1\r\nHost: gw\r\n\r\n")
            _refused(*await _read_answer(reader))
            # Nothing was done for any of them: no token check, no audit record, no back-end.
            assert verifier.checked == checked
            assert await _audit_records_of(app) == records
            assert backend.arrived == 2
            # A slot free again: the same connection is served.
            backend.release.set()
            for task in held:
                answer = await task
                assert answer.status == 200, await answer.text()
                answer.release()
            writer.write(_call(body))
            head, answer_body = await _read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 "), head + answer_body
            assert backend.arrived == 3
            # A refused request that asks to close is answered so, then the connection closes.
            backend.release.clear()
            second = await asyncio.open_connection("127.0.0.1", port)
            held = [
                asyncio.create_task(session.post(url, json=call_body(), headers=auth()))
                for _ in range(2)
            ]
            await backend.until_arrived(5)
            closing = await _answer(*second, _call(body, extra="Connection: close\r\n"))
            head, _, problem = closing.partition(b"\r\n\r\n")
            _refused(head + b"\r\n\r\n", problem)
            assert b"\r\nConnection: close\r\n" in head + b"\r\n"
            ask = await asyncio.open_connection("127.0.0.1", port)
            metrics = await _get_metrics(*ask)
            ask[1].close()
            assert 'tongban_overloaded_total{bound="requests"} 7.0' in metrics
            backend.release.set()
            for task in held:
                (await task).release()
            writer.close()
    finally:
        await runner.cleanup()


async def _one_answer(port: int, ask: bytes) -> tuple[bytes, bytes]:
    """The answer to one request on a connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(ask)
        return await _read_answer(reader)
    finally:
        writer.close()


@dataclass
class _Pressed:
    """A worker bound to one call, that call held at the back-end, another just refused (so
    the worker is pressed), then its bound grown to two, as the delay probe grows it: one
    slot free."""

    admission: Admission
    port: int
    session: ClientSession
    url: str
    held: asyncio.Task[Any]
    """The held call."""
    body: bytes
    """A call's JSON body."""


@contextlib.asynccontextmanager
async def _pressed_worker(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> AsyncIterator[_Pressed]:
    app, runner, port = await _serve_bounded(tmp_path, backend, verifier, max_in_flight=1)
    body = json.dumps(call_body()).encode()
    try:
        async with ClientSession() as session:
            url = f"http://127.0.0.1:{port}{CALLS}"
            held = asyncio.create_task(session.post(url, json=call_body(), headers=auth()))
            await backend.until_arrived(1)
            _refused(*await _one_answer(port, _call(body)))
            admission = app[ADMISSION]
            admission.limit = 2
            yield _Pressed(admission, port, session, url, held, body)
    finally:
        await runner.cleanup()


async def test_a_free_slot_lets_one_request_of_a_turn_through_and_the_door_refuses_the_rest(
    tmp_path: Path,
    backend: HeldBackend,
    verifier: CountingVerifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that refused lately, with one slot free: of the requests its loop reads in one
    turn, the door hands on one, holding the slot for it, and refuses the others itself; none
    is refused in the middleware (which costs a request object, a task and the chain)."""
    in_middleware = 0
    refusal = Admission.refusal

    def counted(self: Admission, reason: str, **kw: bool) -> web.Response:
        nonlocal in_middleware
        in_middleware += 1
        return refusal(self, reason, **kw)

    monkeypatch.setattr(Admission, "refusal", counted)
    async with _pressed_worker(tmp_path, backend, verifier) as pressed:
        admission, port = pressed.admission, pressed.port
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, writer in connections:  # in one step: the loop reads them in one turn
            writer.write(_call(pressed.body))
        answers = [asyncio.create_task(_read_answer(reader)) for reader, _ in connections]
        await backend.until_arrived(2)
        assert admission.in_flight == 2
        backend.release.set()
        results = [await task for task in answers]
        statuses = [head.split(b" ", 2)[1] for head, _ in results]
        assert sorted(statuses) == [b"200", b"503", b"503", b"503", b"503"]
        assert in_middleware == 0
        assert admission.held == 0  # the slot went with the request it was held for
        answer = await pressed.held
        assert answer.status == 200
        answer.release()
        for _, writer in connections:
            writer.close()
        assert admission.held == 0


async def test_a_slot_held_for_a_request_is_free_again_when_its_connection_is_lost(
    tmp_path: Path, backend: HeldBackend, verifier: CountingVerifier
) -> None:
    async with _pressed_worker(tmp_path, backend, verifier) as pressed:
        admission, session, url = pressed.admission, pressed.session, pressed.url
        for _ in range(20):  # sent and dropped at once: taken in, or its slot freed
            _, writer = await asyncio.open_connection("127.0.0.1", pressed.port)
            writer.write(_call(pressed.body))
            writer.transport.abort()
        backend.release.set()
        answer = await pressed.held
        assert answer.status == 200
        answer.release()
        # Whatever became of the dropped requests, no slot stays held: the worker takes
        # in as many calls as its bound, no fewer.
        async with asyncio.timeout(10):
            while admission.in_flight or admission.held:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.01)
        backend.release.clear()
        calls = [
            asyncio.create_task(session.post(url, json=call_body(), headers=auth()))
            for _ in range(2)
        ]
        await backend.until_arrived(backend.arrived + 2)
        backend.release.set()
        for call in calls:
            answer = await call
            assert answer.status == 200, await answer.text()
            answer.release()
