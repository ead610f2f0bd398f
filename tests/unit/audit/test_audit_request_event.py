"""A routed call's request event made on the lean path is the event the generic path made.

``CallAuditor.requested`` builds the request record's ``extra`` itself and makes the event with
``call_request_of`` (the twelve text fields checked written out, one frame); the former code
built ``extra`` in ``_requested_extra`` and made the event with ``call_event_of`` through
``_fill``. Over generated calls (any text, optional fields absent or present, StrEnum members,
integers and lone surrogates where text is expected, subjects of every length) the event, its
captured ``extra`` text, its subjects, the record text, the chain's hashes and the records a
real writer stores must be those of the former code, or the error the same."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapter import Call, CallContext
from gateway.audit.calls import CallAuditor, RouteAudit
from gateway.audit.canonical import GENESIS_HASH, canonical_bytes, chain_hash
from gateway.audit.record import (
    AuditEvent,
    EventType,
    call_event_of,
    call_request_of,
    record_body,
    record_text,
)
from tests.unit.audit.kept_writer import KeptWriter

TIME = "2026-12-07T06:00:00.000000Z"


class Level(enum.StrEnum):
    L3 = "L3"


def _former_extra(call: Call, route: RouteAudit) -> dict[str, object]:
    """The request record's ``extra`` as the former ``_requested_extra`` built it."""
    extra: dict[str, object] = {}
    context = call.context
    if context.authorisation_ref:
        extra["grant"] = context.authorisation_ref
    if context.idempotency_key:
        extra["idempotency_key"] = context.idempotency_key
    if context.subjects:
        extra["subjects"] = list(context.subjects)
    extra["system_operation"] = route.system_operation
    return extra


def _former_event(call: Call, route: RouteAudit) -> AuditEvent:
    """The request event as the former ``_event`` made it (``call_event_of``)."""
    context = call.context
    actor = context.actor if context.actor != context.principal else None
    return call_event_of(
        EventType.SERVICE_CALL_REQUESTED, context.request_id, context.case_id, actor,
        context.principal, context.level, context.client, route.service,
        context.receiving_province, context.handling_province, route.system, route.operation,
        context.purpose, None, None, None, None, None, None, _former_extra(call, route),
    )  # fmt: skip


def _made(make: Any) -> Any:
    try:
        return make()
    except Exception as exc:
        return (type(exc), str(exc))


def _same(lean: Any, former: Any) -> None:
    """The same event to the byte (record text and chain hashes included), or the same error."""
    if not isinstance(former, AuditEvent):
        assert lean == former
        return
    assert isinstance(lean, AuditEvent)
    assert lean == former
    for field in dataclasses.fields(AuditEvent):
        if field.name != "extra_json":
            value = getattr(lean, field.name)
            assert value == getattr(former, field.name)
            assert type(value) is type(getattr(former, field.name))
    assert orjson.dumps(lean.extra_json) == orjson.dumps(former.extra_json)
    assert lean.subjects == former.subjects
    assert type(lean.type) is EventType
    assert lean.time is None
    assert former.time is None
    for sequence, prev in ((1, GENESIS_HASH), (7, "ab" * 32)):
        for alg in ("sha256", "sm3"):
            text = _made(lambda s=sequence, p=prev, a=alg: record_text(lean, "gw", s, TIME, a, p))
            assert text == _made(
                lambda s=sequence, p=prev, a=alg: record_text(former, "gw", s, TIME, a, p)
            )
            if isinstance(text, bytes):
                body = record_body(former, "gw", sequence, TIME, alg, prev)
                assert text == canonical_bytes(body)
                assert chain_hash(alg, prev, text) == chain_hash(alg, prev, canonical_bytes(body))


async def _requested(call: Call, route: RouteAudit) -> Any:
    kept = KeptWriter()
    try:
        event = await CallAuditor(kept).requested(call, route)  # type: ignore[arg-type]
    except Exception as exc:
        return (type(exc), str(exc))
    assert kept.events == [event]
    return event


_text = st.text(max_size=8)
_odd = st.one_of(_text, st.just(Level.L3), st.integers(-2, 2), st.just("\ud800"))
_optional = st.one_of(st.none(), _text)
_subject = st.one_of(_text, st.just("x" * 129), st.just("\ud800"), st.just("s" * 700))


@st.composite
def _calls(draw: st.DrawFn) -> tuple[Call, RouteAudit]:
    principal = draw(_text)
    made: Any = CallContext  # odd values too: the generic way refuses or normalises them
    context = made(
        request_id=draw(st.one_of(_text, _odd)),
        purpose=draw(st.one_of(_text, _odd)),
        service=draw(_text),
        receiving_province=draw(st.one_of(_text, _odd)),
        handling_province=draw(_text),
        principal=principal,
        actor=draw(st.one_of(st.just(principal), _text, _odd)),
        level=draw(st.one_of(_text, _odd)),
        case_id=draw(st.one_of(_optional, _odd)),
        authorisation_ref=draw(st.one_of(_optional, _odd)),
        idempotency_key=draw(_optional),
        client=draw(st.one_of(_optional, _odd)),
        subjects=tuple(draw(st.lists(_subject, max_size=4))),
    )
    route = RouteAudit(draw(_text), draw(_text), draw(_text), draw(_odd), "required")  # type: ignore[arg-type]
    return Call("Op", {}, context), route


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_calls())
@pytest.mark.asyncio
async def test_the_request_event_is_the_former_event_or_the_same_error(
    case: tuple[Call, RouteAudit],
) -> None:
    call, route = case
    _same(await _requested(call, route), _made(lambda: _former_event(call, route)))


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.one_of(st.none(), _text), min_size=12, max_size=12),
    extra=st.dictionaries(
        st.text(max_size=4),
        st.one_of(_text, st.lists(_text, max_size=3), st.integers(), st.none()),
        max_size=4,
    ),
)
def test_call_request_of_is_call_event_of_or_leaves_it_the_call(
    texts: list[str | None], extra: dict[str, Any]
) -> None:
    request: Any = call_request_of  # the twelve texts given as a list
    generic: Any = call_event_of
    lean = request(*texts, extra)
    outcome = (None, None, None, None, None, None)
    former = _made(lambda: generic(EventType.SERVICE_CALL_REQUESTED, *texts, *outcome, extra))
    plain = all(
        type(v) is str or (type(v) is list and all(type(x) is str for x in v))
        for v in extra.values()
    )
    if lean is None:  # the caller goes the generic way: it had to
        assert not extra or not plain or isinstance(former, tuple)
        return
    assert extra
    assert plain
    _same(lean, former)


@pytest.mark.asyncio
async def test_odd_values_go_the_generic_way_with_its_errors() -> None:
    base = CallContext(
        request_id="r", purpose="p", service="s", receiving_province="63",
        handling_province="61", principal="pw", actor="pw", level="L3", subjects=("k",),
    )  # fmt: skip
    route = RouteAudit("svc", "op", "sys", "Op", "required")
    odd: dict[str, Any] = {
        "level": Level.L3,  # normalised to its plain text
        "purpose": 3,  # refused
        "client": "\ud800",  # refused when the record is encoded, as before
        "subjects": ("x" * 3000,),  # extra too long
        "authorisation_ref": 7,  # not a plain string in extra: encoded the generic way
    }
    for name, value in odd.items():
        context = CallContext(**{**vars(base), name: value})
        call = Call("Op", {}, context)
        lean = await _requested(call, route)
        _same(lean, _made(lambda c=call: _former_event(c, route)))
        if name == "level":
            assert type(lean.identity_level) is str
        if name in ("purpose", "subjects"):
            assert isinstance(lean, tuple)
            assert lean[0] is ValueError
        if name == "authorisation_ref":
            assert orjson.dumps(lean.extra_json).startswith(b'{"grant":7,')


@pytest.mark.parametrize(
    "subjects",
    ["a", "", ["a"], [""], ["x" * 128], ["x" * 129], ["a", "a"], ["a", "b"], [], "x" * 129],
)
def test_the_subjects_are_those_of_the_generic_way(subjects: object) -> None:
    """One subject is read without ``subject_keys``' frame; a text, an empty or too long one,
    several or none go through it: the same subjects as ``call_event_of``'s either way."""
    extra = {"subjects": subjects, "system_operation": "Op"}
    texts: list[str | None] = ["r", None, None, "pw", "L3", None, "s", "63", "61", "y", "o", "p"]
    request: Any = call_request_of
    generic: Any = call_event_of
    lean = request(*texts, extra)
    former = generic(EventType.SERVICE_CALL_REQUESTED, *texts, *(None,) * 6, extra)
    assert lean is not None
    _same(lean, former)
