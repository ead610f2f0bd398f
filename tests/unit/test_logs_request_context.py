"""A request's log context (``bind_request_id``): what ``clear_contextvars`` and
``bind_contextvars(request_id=...)`` left, every line of the request carries its id, and nothing
a request bound reaches the next one, on the same connection (the same task) too."""

from __future__ import annotations

import contextvars
import io
import json
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.http.keys import METRICS
from gateway.http.middlewares import request_context_middleware
from gateway.logs import bind_request_id, configure_logging
from gateway.metrics import Metrics

Step = Callable[[], object]

SEQUENCES: list[list[Step]] = [
    [],
    [lambda: structlog.contextvars.bind_contextvars(request_id="old")],
    [lambda: structlog.contextvars.bind_contextvars(a=1, b="two", request_id="old")],
    [
        lambda: structlog.contextvars.bind_contextvars(c=3),
        lambda: structlog.contextvars.unbind_contextvars("c"),
    ],
    [
        lambda: structlog.contextvars.bind_contextvars(d=None),  # bound to None is still bound
        structlog.contextvars.clear_contextvars,
        lambda: structlog.contextvars.bind_contextvars(e=[1]),
    ],
    [lambda: bind_request_id("first"), lambda: structlog.contextvars.bind_contextvars(f=6)],
]


def _after(steps: list[Step], begin: Callable[[str], None]) -> dict[str, object]:
    def run() -> dict[str, object]:
        for step in steps:
            step()
        begin("r-9")
        return structlog.contextvars.get_contextvars()

    return contextvars.Context().run(run)


def _structlog_begin(request_id: str) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)


def test_binding_the_request_id_leaves_what_clear_and_bind_left() -> None:
    for steps in SEQUENCES:
        expected = _after(steps, _structlog_begin)
        assert expected == {"request_id": "r-9"}
        assert _after(steps, bind_request_id) == expected


def test_a_key_first_bound_after_the_request_id_is_cleared_too() -> None:
    def run() -> dict[str, object]:
        bind_request_id("one")
        structlog.contextvars.bind_contextvars(**{"key_never_bound_before_9f2": "x"})
        bind_request_id("two")
        return structlog.contextvars.get_contextvars()

    assert contextvars.Context().run(run) == {"request_id": "two"}


async def _handler(request: web.Request) -> web.Response:
    log = structlog.get_logger("t")
    log.warning("handled_before", query=request.query_string)
    if "bind" in request.query:
        structlog.contextvars.bind_contextvars(leaked=request.query["bind"])
    log.warning("handled_after")
    return web.Response(text="ok")


async def test_no_request_sees_what_an_earlier_one_bound() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    app = web.Application(middlewares=[request_context_middleware])
    app[METRICS] = Metrics()
    app.router.add_get("/x", _handler)
    async with TestClient(TestServer(app)) as client:
        for number, query in enumerate(("bind=one", "", "bind=two", "")):
            answer = await client.get(f"/x?{query}", headers={"X-Request-ID": f"req-{number}"})
            assert answer.status == 200
            assert answer.headers["X-Request-ID"] == f"req-{number}"
        connections = client.session.connector._conns  # type: ignore[union-attr]
        assert sum(len(held) for held in connections.values()) == 1  # one kept-alive connection
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_request: dict[str, list[dict[str, object]]] = {}
    for line in lines:
        by_request.setdefault(str(line["request_id"]), []).append(line)
    assert sorted(by_request) == ["req-0", "req-1", "req-2", "req-3"]
    for request_id, written in by_request.items():
        events = [line["event"] for line in written]
        assert events == ["handled_before", "handled_after", "request_completed"], request_id
        before = written[0]
        assert "leaked" not in before
    assert by_request["req-0"][1]["leaked"] == "one" == by_request["req-0"][2]["leaked"]
    assert "leaked" not in by_request["req-1"][1]
    assert "leaked" not in by_request["req-1"][2]
    assert by_request["req-2"][2]["leaked"] == "two"
    assert "leaked" not in by_request["req-3"][2]


def test_requests_in_one_context_do_not_share_what_they_bound() -> None:
    """As when a server runs a connection's requests one after the other in one task."""
    from aiohttp.test_utils import make_mocked_request  # noqa: PLC0415

    from gateway.http.middlewares import open_request  # noqa: PLC0415

    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)

    def two_requests() -> None:
        log = structlog.get_logger("t")
        open_request(make_mocked_request("GET", "/x", headers={"X-Request-ID": "a-1"}))
        structlog.contextvars.bind_contextvars(leaked="a", case_id="c-1")
        log.warning("in_first")
        open_request(make_mocked_request("GET", "/x", headers={"X-Request-ID": "b-2"}))
        log.warning("in_second")
        open_request(make_mocked_request("GET", "/x"))  # an id of the gateway's own
        log.warning("in_third")

    contextvars.Context().run(two_requests)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "a-1"
    assert first["leaked"] == "a"
    assert second["request_id"] == "b-2"
    assert "leaked" not in second
    assert "case_id" not in second
    assert len(str(third["request_id"])) == 32
    assert "leaked" not in third
