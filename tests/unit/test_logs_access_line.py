"""The access line written in one step (``access_line``) is the line structlog's chain writes for
``log.info("request_completed", ...)``: the same bytes but for the time stamp, masked alike, on
the same stream in call order; and anything the one step does not cover goes through the chain."""

from __future__ import annotations

import datetime
import io
import json
import random
import re
import threading
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from gateway import logs
from gateway.logs import access_line, bind_request_id, configure_logging, register_secret

ID = "630102199003071234"  # shape of a resident ID; fictional
STAMP = re.compile(rb'"timestamp":"([^"]*)"')


class _Unserialisable:
    def __repr__(self) -> str:
        return "<unserialisable>"


FIELD_SETS: list[dict[str, Any]] = [
    {},
    {"client": "portal", "service": "degree-verification", "outcome": "ok", "attempts": 1},
    {"error_code": "backend.timeout", "client_aborted": True, "breaker": "closed"},
    {"client": f"holder {ID}", "system": "call 13800001111", "case_id": "c-1"},
    {"name": "王小明", "token": "abc", "password": "hunter2", "Authorization": "Bearer x"},
    {"nested": {"client_secret": "s3cret", "note": f"id {ID}", "deep": [{"xm": "李四"}]}},
    {"list": ["13912345678", 3, None, 2.5], "tuple": ("a", ID)},
    {"odd": _Unserialisable(), "number": 2**40, "ratio": 0.1 + 0.2, "utf": "陕西"},
    {"service": "secret-in-text rotated-key-0001 here"},
    {"Token": 12, "XM": "张三", "Applicant_Name": "李四四", "count": None, "flag": False},
    {"api_key": None, "signature": 1.5, "holder_name": "王五", "aac003": 7},
]


def _structlog_line(log: Any, method: str, route: str, status: int, ms: float, **kw: Any) -> None:
    log.info("request_completed", method=method, route=route, status=status, duration_ms=ms, **kw)


def _lines(stream: io.BytesIO) -> list[bytes]:
    return stream.getvalue().splitlines()


def _same_but_stamp(one: bytes, other: bytes) -> None:
    assert STAMP.sub(b'"timestamp":"T"', one) == STAMP.sub(b'"timestamp":"T"', other)
    for line in (one, other):
        found = STAMP.search(line)
        assert found is not None
        stamp = found.group(1).decode()
        assert stamp.endswith("Z")
        parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert parsed.tzinfo is not None
        assert parsed.utcoffset() == datetime.timedelta(0)
    assert list(json.loads(one)) == list(json.loads(other))  # the keys in the same order


class _NoChain:
    """A logger that must not be used: the one step wrote the line itself."""

    def info(self, *_args: Any, **_kw: Any) -> None:
        raise AssertionError("the access line went through structlog's chain")


@pytest.mark.parametrize("fields", FIELD_SETS)
def test_the_one_step_line_is_the_chain_line(fields: dict[str, Any]) -> None:
    register_secret("rotated-key-0001")
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("tongban.http")
    for request_id in ("0123456789abcdef0123456789abcdef", "client-id:13912345678", ID):
        bind_request_id(request_id)
        access_line(_NoChain(), "POST", "/api/v1/services/{service}/calls", 200, 3.41, fields)
        _structlog_line(log, "POST", "/api/v1/services/{service}/calls", 200, 3.41, **fields)
    lines = _lines(stream)
    assert len(lines) == 6
    for one_step, chain in zip(lines[::2], lines[1::2], strict=True):
        _same_but_stamp(one_step, chain)
    text = stream.getvalue().decode()
    for leaked in (ID, "13912345678", "13800001111", "王小明", "李四", "hunter2", "s3cret"):
        assert leaked not in text
    assert "rotated-key-0001" not in text
    parsed = json.loads(lines[0])
    assert parsed["event"] == "request_completed"
    assert parsed["level"] == "info"
    assert parsed["request_id"] == "0123456789abcdef0123456789abcdef"


def test_without_a_request_id_neither_line_has_one() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)

    def lines_outside_a_request() -> None:
        access_line(_NoChain(), "GET", "unmatched", 404, 0.1, {})
        _structlog_line(structlog.get_logger("t"), "GET", "unmatched", 404, 0.1)

    thread = threading.Thread(target=lines_outside_a_request)  # a new thread: an empty context
    thread.start()
    thread.join()
    one_step, chain = _lines(stream)
    _same_but_stamp(one_step, chain)
    assert "request_id" not in json.loads(one_step)


def test_lines_keep_their_order_on_the_stream() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger("t")
    bind_request_id("r-1")
    log.warning("first")
    access_line(_NoChain(), "GET", "/x", 200, 1.0, {})
    log.warning("third")
    events = [json.loads(line)["event"] for line in _lines(stream)]
    assert events == ["first", "request_completed", "third"]
    assert logs._json_lines is not None
    assert logs._json_lines.out._lock is structlog.BytesLogger(stream)._lock  # one lock


class _Chain:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))


@pytest.mark.parametrize("key", ["level", "timestamp", "request_id", "exc_info"])
def test_a_field_the_chain_treats_apart_goes_through_it(key: str) -> None:
    configure_logging("info", "json", stream=io.BytesIO())
    chain = _Chain()
    access_line(chain, "GET", "/x", 200, 1.0, {key: "v"})
    assert chain.calls == [
        (
            "request_completed",
            {"method": "GET", "route": "/x", "status": 200, "duration_ms": 1.0, key: "v"},
        )
    ]


@pytest.mark.parametrize("key", ["method", "event"])
def test_a_field_named_as_an_argument_still_fails_as_it_did(key: str) -> None:
    configure_logging("info", "json", stream=io.BytesIO())
    with pytest.raises(TypeError):
        access_line(structlog.get_logger("t"), "GET", "/x", 200, 1.0, {key: "v"})


def test_context_bound_besides_the_request_id_goes_through_the_chain() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    bind_request_id("r-2")
    with structlog.contextvars.bound_contextvars(tenant="t-61"):
        access_line(structlog.get_logger("t"), "GET", "/x", 200, 1.0, {})
    access_line(_NoChain(), "GET", "/x", 200, 1.0, {})  # unbound again: the one step
    first, second = (json.loads(line) for line in _lines(stream))
    assert first["tenant"] == "t-61"
    assert first["request_id"] == "r-2"
    assert "tenant" not in second
    assert second["request_id"] == "r-2"


def test_captured_logs_and_console_lines_go_through_the_chain() -> None:
    configure_logging("info", "json", stream=io.BytesIO())
    bind_request_id("r-3")
    with capture_logs() as captured:
        access_line(structlog.get_logger("t"), "GET", "/x", 200, 1.0, {"client": "c"})
    assert captured == [
        {
            "event": "request_completed",
            "log_level": "info",
            "method": "GET",
            "route": "/x",
            "status": 200,
            "duration_ms": 1.0,
            "client": "c",
        }
    ]
    text = io.StringIO()
    configure_logging("info", "console", stream=text)
    access_line(structlog.get_logger("t"), "GET", "/x", 200, 1.0, {"client": "c"})
    assert "request_completed" in text.getvalue()
    assert "request_id=r-3" in text.getvalue()


def test_a_reconfigured_structlog_is_followed() -> None:
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    other = io.BytesIO()
    structlog.configure(logger_factory=structlog.BytesLoggerFactory(file=other))
    try:
        chain = _Chain()
        access_line(chain, "GET", "/x", 200, 1.0, {})
        assert len(chain.calls) == 1
    finally:
        configure_logging("info", "json", stream=io.BytesIO())
    assert stream.getvalue() == b""


def _reference_stamp(nanoseconds: int) -> str:
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=nanoseconds // 1000
    )
    return moment.isoformat().replace("+00:00", "Z")


def test_the_stamp_is_timestampers() -> None:
    draw = random.Random(7)
    moments = [0, 999, 1_000, 1_000_000_000, 1_796_000_000_999_999_999, 1_796_000_001_000_000_000]
    moments += [draw.randrange(10**18, 4 * 10**18) for _ in range(2_000)]
    moments += [(n // 10**9) * 10**9 for n in moments[-100:]]  # whole seconds: no fraction
    for nanoseconds in sorted(moments) + moments:  # the one-second cache both ways
        assert logs._stamp(nanoseconds) == _reference_stamp(nanoseconds)
    before = datetime.datetime.now(tz=datetime.UTC)
    stamp = logs._utc_now_iso()
    after = datetime.datetime.now(tz=datetime.UTC)
    assert before <= datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


def test_a_secret_that_could_be_in_a_stamp_is_masked_there_too() -> None:
    assert logs._stamp_clean
    today = datetime.datetime.now(tz=datetime.UTC).date().isoformat()  # 10 characters
    register_secret(today)
    assert not logs._stamp_clean
    stream = io.BytesIO()
    configure_logging("info", "json", stream=stream)
    bind_request_id("r-5")
    access_line(_NoChain(), "GET", "/x", 200, 1.0, {})
    _structlog_line(structlog.get_logger("t"), "GET", "/x", 200, 1.0)
    one_step, chain = (json.loads(line) for line in _lines(stream))
    assert one_step["timestamp"].startswith("[redacted]T")
    assert chain["timestamp"].startswith("[redacted]T")
    one_step.pop("timestamp")
    chain.pop("timestamp")
    assert one_step == chain
    logs.forget_secrets_except(logs.registered_secrets() - {today})
    assert logs._stamp_clean
    register_secret("secret-with-letters-2026")
    assert logs._stamp_clean
