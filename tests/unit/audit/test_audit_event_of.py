"""``call_event_of`` (the routed calls' way to make an event, every field given in order) and
``AuditEvent(...)`` are one rule: the same event for good fields, the same ValueError at the
caller for a bad one; and the events ``CallAuditor`` makes are those the keyword form made."""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapter import Call, CallContext, Reply
from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
from gateway.audit.record import AuditEvent, EventType, call_event_of, record_text
from tests.unit.audit.kept_writer import KeptWriter

FIELDS = [f.name for f in dataclasses.fields(AuditEvent) if f.init]
ORDERED = [n for n in FIELDS if n != "time"]  # call_event_of's parameters
TEXT_FIELDS = [n for n in FIELDS if n not in ("type", "attempts", "latency_ms", "extra", "time")]


class Code(enum.StrEnum):
    DENIED = "denied"


def _both(values: dict[str, Any]) -> tuple[Any, Any]:
    """What each way gives for ``values``: the event, or the exception's type and text."""
    results: list[Any] = []
    makers: list[Callable[[], AuditEvent]] = [
        lambda: AuditEvent(**values),
        lambda: call_event_of(*[values.get(n, _default(n)) for n in ORDERED]),
    ]
    for make in makers:
        try:
            results.append(make())
        except Exception as exc:
            results.append((type(exc), str(exc)))
    return results[0], results[1]


def _default(name: str) -> Any:
    return {} if name == "extra" else None


def _same(values: dict[str, Any]) -> None:
    by_keywords, in_order = _both(values)
    if isinstance(by_keywords, tuple):
        assert in_order == by_keywords
        return
    assert isinstance(in_order, AuditEvent)
    assert in_order == by_keywords
    assert orjson.dumps(in_order.extra_json) == orjson.dumps(by_keywords.extra_json)
    assert in_order.subjects == by_keywords.subjects
    for name in TEXT_FIELDS:
        assert type(getattr(in_order, name)) is type(getattr(by_keywords, name))
    text = record_text(in_order, "gw", 1, "2026-12-07T06:00:00.000000Z", "sha256", "0" * 64)
    assert text == record_text(
        by_keywords, "gw", 1, "2026-12-07T06:00:00.000000Z", "sha256", "0" * 64
    )


def test_the_order_is_the_dataclass_fields_order_but_the_time() -> None:
    assert list(inspect.signature(call_event_of).parameters) == ORDERED


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "no-such-type"},
        {"principal": 12345},
        {"purpose": b"bytes"},
        {"principal": 1, "outcome": 2},
        {"response_digest": ["sha256:1"]},
        {"attempts": -1},
        {"attempts": 2**53},
        {"attempts": True},
        {"latency_ms": 1.5},
        {"attempts": "1", "latency_ms": -1},
        {"extra": {"score": 0.5}},
        {"extra": {"k": "x" * 3000}},
        {"extra": {1: "non-string key"}},
        {"extra": {"subjects": ["pk-1", 0.5]}},
        {"extra": {"subjects": ("pk-1", {"deep": [1.5]})}},
        {"extra": {"n": 2**60}},
        {"extra": {"when": object()}},
        {"extra": {"tag": Code.DENIED}},
        {"principal": 7, "extra": {"score": 0.5}},
    ],
)
def test_a_bad_field_fails_the_same_way(bad: dict[str, Any]) -> None:
    values = {"type": EventType.LOGIN, **bad}
    by_keywords, in_order = _both(values)
    assert isinstance(by_keywords, tuple), "the keyword form refuses it"
    assert in_order == by_keywords


def test_odd_but_good_fields_give_the_same_event() -> None:
    _same({"type": "login", "outcome": Code.DENIED, "error_code": Code.DENIED})
    _same({"type": EventType.LOGIN, "extra": {}})
    _same({"type": EventType.LOGIN, "extra": {"subjects": [], "nested": {"a": [True, None]}}})
    _same({"type": EventType.LOGIN, "extra": {"subjects": ("pk-1", "pk-1", "", "x" * 129)}})
    _same({"type": EventType.LOGIN, "attempts": 0, "latency_ms": 2**53 - 1})


_text = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(list(Code)))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6), st.floats())
_extra = st.dictionaries(
    st.text(max_size=6),
    st.one_of(_scalar, st.lists(_scalar, max_size=4), st.tuples(_scalar, _scalar)),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.dictionaries(st.sampled_from(TEXT_FIELDS), _text | st.integers(), max_size=5),
    attempts=st.one_of(st.none(), st.integers(-2, 2**54)),
    extra=_extra,
)
def test_generated_fields_give_the_same_answer(
    texts: dict[str, Any], attempts: int | None, extra: dict[str, Any]
) -> None:
    _same({"type": EventType.SERVICE_CALL_COMPLETED, **texts, "attempts": attempts, "extra": extra})


@pytest.mark.parametrize("with_grant", [False, True])
async def test_the_call_events_are_those_of_the_keyword_form(with_grant: bool) -> None:
    context = CallContext(
        request_id="r-1",
        purpose="benchmark",
        service="svc",
        receiving_province="63",
        handling_province="61",
        principal="pw-1",
        actor="pw-clerk" if with_grant else "pw-1",
        level="L3",
        case_id="case-1" if with_grant else None,
        authorisation_ref="cg-1" if with_grant else None,
        idempotency_key="ik-1" if with_grant else None,
        client="portal",
        subjects=("pk-1", "pk-2") if with_grant else (),
    )
    call = Call("Echo", {"x": 1}, context)
    route = RouteAudit("svc", "lookup", "sys", "Echo", "required")
    kept = KeptWriter()
    auditor = CallAuditor(kept)  # type: ignore[arg-type]
    reply = Reply({"ok": True}, 200, "sha256:1", "sha256:2")
    await auditor.requested(call, route)
    await auditor.completed(call, route, CallOutcome(2, 12.6, "closed", reply=reply))
    await auditor.completed(call, route, CallOutcome(1, 3.2, "open", "backend.timeout"))
    common: dict[str, Any] = {
        "request_id": "r-1",
        "case_id": context.case_id,
        "actor": "pw-clerk" if with_grant else None,
        "principal": "pw-1",
        "identity_level": "L3",
        "client": "portal",
        "service": "svc",
        "receiving_province": "63",
        "handling_province": "61",
        "system": "sys",
        "operation": "lookup",
        "purpose": "benchmark",
    }
    shared: dict[str, Any] = {"subjects": ["pk-1", "pk-2"], "grant": "cg-1"} if with_grant else {}
    requested = AuditEvent(
        type=EventType.SERVICE_CALL_REQUESTED,
        **common,
        extra={
            "system_operation": "Echo",
            **shared,
            **({"idempotency_key": "ik-1"} if with_grant else {}),
        },
    )
    ok = AuditEvent(
        type=EventType.SERVICE_CALL_COMPLETED,
        **common,
        outcome="ok",
        attempts=2,
        latency_ms=13,
        request_digest="sha256:1",
        response_digest="sha256:2",
        extra={"breaker": "closed", **shared},
    )
    failed = AuditEvent(
        type=EventType.SERVICE_CALL_COMPLETED,
        **common,
        outcome="error",
        error_code="backend.timeout",
        attempts=1,
        latency_ms=3,
        extra={"breaker": "open", **shared},
    )
    assert kept.events == [requested, ok, failed]
    for made, expected in zip(kept.events, [requested, ok, failed], strict=True):
        assert orjson.dumps(made.extra_json) == orjson.dumps(expected.extra_json)
        assert made.subjects == expected.subjects == (("pk-1", "pk-2") if with_grant else ())


def test_replace_makes_the_event_again() -> None:
    # The audit sink fills a missing request id with dataclasses.replace.
    made = AuditEvent(type=EventType.LOGIN, principal="pw-1", extra={"subjects": ["pk-1"]})
    again = dataclasses.replace(made, request_id="r-1")
    assert again == AuditEvent(
        type=EventType.LOGIN, request_id="r-1", principal="pw-1", extra={"subjects": ["pk-1"]}
    )
    assert again.subjects == ("pk-1",)
    assert orjson.dumps(again.extra_json) == b'{"subjects":["pk-1"]}'
    with pytest.raises(ValueError, match="request_id must be a string"):
        dataclasses.replace(made, request_id=7)  # type: ignore[arg-type]
