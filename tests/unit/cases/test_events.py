"""Event sinks: a JSON Lines file and a signed webhook; failures are EventSinkError."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.cases.events import EventSinkError, JsonlEventSink, WebhookEventSink

EVENT = {"type": "case_closed", "case_id": "TB63X", "detail": {"rating": {"invite": True}}}


async def test_jsonl_sink_appends_one_line_per_event(tmp_path: Path) -> None:
    sink = JsonlEventSink(tmp_path / "events" / "case-events.jsonl")
    await sink.send(EVENT)
    await sink.send({**EVENT, "type": "case_received"})
    lines = (tmp_path / "events" / "case-events.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["type"] for line in lines] == ["case_closed", "case_received"]
    await sink.aclose()


async def test_webhook_sink_signs_the_body_and_refuses_non_2xx() -> None:
    seen: list[httpx.Request] = []
    answers = iter([202, 503])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(next(answers))

    sink = WebhookEventSink(
        "http://127.0.0.1:9/events", secret="s" * 32, transport=httpx.MockTransport(handler)
    )
    try:
        await sink.send(EVENT)
        with pytest.raises(EventSinkError):
            await sink.send(EVENT)
    finally:
        await sink.aclose()
    body = seen[0].content
    expected = hmac.new(b"s" * 32, body, hashlib.sha256).hexdigest()
    assert seen[0].headers["X-Tongban-Signature"] == f"sha256={expected}"
    assert orjson.loads(body) == EVENT
