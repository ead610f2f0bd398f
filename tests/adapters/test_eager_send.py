"""The request body written as the request is sent (adapters/eager_send.py).

On Python 3.11 aiohttp writes a body in a task of its own, one loop turn after the request's
head is ready; the adapters' sessions start that writer eagerly, as aiohttp does on 3.12. What
must hold: the same bytes reach the back-end (a small body at once, a large one that has to
wait for the socket to drain in full and in order), no writer task is left for a small body,
the loop's task factory is put back, and the factory's coroutine handling (finished at once,
suspended, cancelled, failed) is a task's.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters import eager_send
from adapters.eager_send import REQUEST_CLASS, EagerBodyRequest, eager_task

PY311 = sys.version_info < (3, 12)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A back-end answering each POST with its body's length and SHA-256, read slowly when
    asked (``?slow=1``: so that a large request body cannot be written at once)."""

    async def digest(request: web.Request) -> web.Response:
        if request.query.get("slow"):
            await asyncio.sleep(0.05)
        body = await request.read()
        return web.json_response({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/digest", digest)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/digest"))


class _Recording:
    """Request classes that note the writer task aiohttp keeps after ``send``."""

    def __init__(self) -> None:
        self.writers: list[object] = []

    def subclass(self, base: type[aiohttp.ClientRequest]) -> type[aiohttp.ClientRequest]:
        seen = self.writers

        class Recording(base):  # type: ignore[misc, valid-type]
            async def send(self, conn: Any) -> aiohttp.ClientResponse:
                response: aiohttp.ClientResponse = await super().send(conn)
                seen.append(self._writer)
                return response

        return Recording


def _small_send_buffer(addr: Any) -> socket.socket:
    """A client socket whose kernel buffer takes a few KiB only: a large body cannot leave in
    one write, and the writer has to wait for the back-end to read."""
    family, kind, proto = addr[0], addr[1], addr[2]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock


async def _post(
    url: str, body: bytes, request_class: type[aiohttp.ClientRequest], *, small: bool = False
) -> Any:
    connector = aiohttp.TCPConnector(socket_factory=_small_send_buffer if small else None)
    async with (
        aiohttp.ClientSession(connector=connector, request_class=request_class) as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as answer,
    ):
        assert answer.status == 200
        return await answer.json()


def test_the_adapters_use_the_eager_request_class_where_aiohttp_does_not() -> None:
    assert (REQUEST_CLASS is EagerBodyRequest) is PY311


async def test_a_small_body_leaves_no_writer_task_and_arrives_whole(echo_url: str) -> None:
    body = b'{"zjhm": "610102199001011234"}'
    recording = _Recording()
    answer = await _post(echo_url, body, recording.subclass(EagerBodyRequest))
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert recording.writers == [None]  # written before send returned: nothing left to run
    assert asyncio.get_running_loop().get_task_factory() is None


@pytest.mark.skipif(not PY311, reason="aiohttp starts its writer eagerly itself from 3.12 on")
async def test_without_it_aiohttp_leaves_a_writer_task_on_python_3_11(echo_url: str) -> None:
    """The case the class exists for: the plain request keeps a task that has not run yet."""
    recording = _Recording()
    await _post(echo_url, b"{}", recording.subclass(aiohttp.ClientRequest))
    assert len(recording.writers) == 1
    assert isinstance(recording.writers[0], asyncio.Task)


async def test_a_body_that_must_wait_for_the_socket_arrives_whole_and_in_order(
    echo_url: str,
) -> None:
    body = bytes(range(256)) * (3 * 1024)  # 768 KiB: far beyond what one write can take
    recording = _Recording()
    answer = await _post(
        echo_url + "?slow=1", body, recording.subclass(EagerBodyRequest), small=True
    )
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if PY311:
        assert isinstance(recording.writers[0], asyncio.Task)  # went on in a task


async def test_a_factory_somebody_else_set_is_left_in_place(echo_url: str) -> None:
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def theirs(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(theirs)
    try:
        answer = await _post(echo_url, b"{}", EagerBodyRequest)
        assert loop.get_task_factory() is theirs
    finally:
        loop.set_task_factory(None)
    assert answer["length"] == 2
    assert made  # their factory made the tasks, aiohttp's writer among them on 3.11


# --- the factory itself, on a coroutine standing in for aiohttp's writer -----------------------


async def _stand_in(steps: list[str], gate: asyncio.Future[str] | None, fail: bool) -> str:
    steps.append("started")
    try:
        if fail:
            raise ValueError("write failed")
        if gate is not None:
            steps.append(await gate)
        steps.append("done")
        return "result"
    finally:
        steps.append("finally")


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eager_send, "_WRITE_BYTES", _stand_in.__code__)


def _start(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    return eager_task(asyncio.get_running_loop(), coro)


@pytest.mark.usefixtures("stand_in")
async def test_a_writer_that_finishes_at_once_is_a_done_future_not_a_task() -> None:
    steps: list[str] = []
    started = _start(_stand_in(steps, None, fail=False))
    assert steps == ["started", "done", "finally"]  # ran now, not at the loop's next turn
    assert started.done()
    assert not isinstance(started, asyncio.Task)
    assert started.result() == "result"


@pytest.mark.usefixtures("stand_in")
async def test_a_writer_that_must_wait_goes_on_in_a_task_with_what_it_waited_for() -> None:
    steps: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started = _start(_stand_in(steps, gate, fail=False))
    assert steps == ["started"]
    assert isinstance(started, asyncio.Task)
    gate.set_result("drained")
    assert await started == "result"
    assert steps == ["started", "drained", "done", "finally"]


@pytest.mark.usefixtures("stand_in")
async def test_cancelling_a_waiting_writer_cancels_it_inside() -> None:
    steps: list[str] = []
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started = _start(_stand_in(steps, gate, fail=False))
    await asyncio.sleep(0)  # the task now waits on the gate
    started.cancel()
    with pytest.raises(asyncio.CancelledError):
        await started
    assert steps == ["started", "finally"]
    assert gate.cancelled()  # as a task cancels the future its coroutine awaits


@pytest.mark.usefixtures("stand_in")
async def test_a_writer_failing_at_once_keeps_its_error_in_the_future() -> None:
    steps: list[str] = []
    started = _start(_stand_in(steps, None, fail=True))
    assert started.done()
    with pytest.raises(ValueError, match="write failed"):
        started.result()
    assert steps == ["started", "finally"]


async def test_any_other_coroutine_becomes_an_ordinary_task() -> None:
    steps: list[str] = []
    started = _start(_stand_in(steps, None, fail=False))
    assert isinstance(started, asyncio.Task)
    assert steps == []  # not run yet: the loop's next turn runs it, as ever
    assert await started == "result"
