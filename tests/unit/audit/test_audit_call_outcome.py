"""A routed call's outcome event made from its request event is the event made from the call.

``CallAuditor.completed`` given the event ``requested`` returned (``call_outcome_of``: the twelve
shared fields and the subjects taken from the request event, only the outcome's own values
checked) must give the event, the captured ``extra`` text and the record text that
``completed`` without it gives (``call_event_of`` on the call's context), or the same error;
the state shared between the two records lives in the caller's coroutine only, so a call that
ends without an outcome (cancelled, or a failure that is not a GatewayError) leaves nothing
behind, and another call's request event is never taken for this one's."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapter import Call, CallContext, Reply
from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
from gateway.audit.canonical import GENESIS_HASH, canonical_bytes
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import (
    SHARED_CALL_FIELDS,
    AuditEvent,
    EventType,
    call_event_of,
    call_outcome_of,
    record_body,
    record_text,
)
from gateway.audit.store import StoredRecord
from gateway.audit.writer import AuditWriter
from gateway.errors import BackendError
from gateway.pipeline import CallTrace, with_audit
from tests.unit.audit.kept_writer import KeptWriter

TIME = "2026-12-07T06:00:00.000000Z"


class Code(enum.StrEnum):
    TIMEOUT = "backend.timeout"


def _made(make: Any) -> Any:
    try:
        return make()
    except Exception as exc:
        return (type(exc), str(exc))


def _same(lean: Any, generic: Any) -> None:
    """The same event to the byte, or the same error."""
    if not isinstance(generic, AuditEvent):
        assert lean == generic
        return
    assert isinstance(lean, AuditEvent)
    assert lean == generic
    assert orjson.dumps(lean.extra_json) == orjson.dumps(generic.extra_json)
    assert lean.subjects == generic.subjects
    assert lean.time is None
    assert generic.time is None
    for sequence, prev in ((1, GENESIS_HASH), (7, "ab" * 32)):
        # (a lone surrogate in a digest is refused by the writer when it encodes the record)
        text = _made(lambda s=sequence, p=prev: record_text(lean, "gw", s, TIME, "sha256", p))
        assert text == _made(
            lambda s=sequence, p=prev: record_text(generic, "gw", s, TIME, "sha256", p)
        )
        if isinstance(text, bytes):
            body = record_body(generic, "gw", sequence, TIME, "sha256", prev)
            assert text == canonical_bytes(body)


async def _outcome_both(
    call: Call, route: RouteAudit, outcome: CallOutcome
) -> tuple[Any, Any, AuditEvent | None]:
    """The outcome event ``completed`` makes with the request event and without it (or the
    error each raises), and the request event."""
    kept = KeptWriter()
    auditor = CallAuditor(kept)  # type: ignore[arg-type]
    requested = await auditor.requested(call, route)
    assert kept.events == [requested]

    async def completed(with_request: bool) -> AuditEvent:
        await auditor.completed(call, route, outcome, requested if with_request else None)
        return kept.events.pop()

    results: list[Any] = []
    for with_request in (True, False):
        try:
            results.append(await completed(with_request))
        except Exception as exc:
            results.append((type(exc), str(exc)))
    return results[0], results[1], requested


_text = st.text(max_size=8)
_optional = st.one_of(st.none(), _text)
_subject = st.one_of(_text, st.just("x" * 129), st.just("\ud800"))


@st.composite
def _calls(draw: st.DrawFn) -> tuple[Call, RouteAudit, CallOutcome]:
    principal = draw(_text)
    context = CallContext(
        request_id=draw(_text),
        purpose=draw(_text),
        service=draw(_text),
        receiving_province=draw(_text),
        handling_province=draw(_text),
        principal=principal,
        actor=draw(st.one_of(st.just(principal), _text)),
        level=draw(_text),
        case_id=draw(_optional),
        authorisation_ref=draw(_optional),
        idempotency_key=draw(_optional),
        client=draw(_optional),
        subjects=tuple(draw(st.lists(_subject, max_size=3))),
    )
    route = RouteAudit(draw(_text), draw(_text), draw(_text), draw(_text), "required")
    digest = st.one_of(st.none(), _text, st.just("\ud800"), st.integers(), st.just(Code.TIMEOUT))
    reply = draw(st.one_of(st.none(), st.builds(Reply, st.just({}), st.just(200), digest, digest)))
    made: Any = CallOutcome  # odd values too: the generic way refuses them as before
    outcome = made(
        draw(st.one_of(st.integers(min_value=-2, max_value=2**54), st.booleans())),
        draw(st.one_of(st.floats(min_value=0, max_value=1e6), st.integers(-3, 10**6))),
        draw(st.one_of(_text, st.just("\ud800"), st.just(Code.TIMEOUT), st.integers())),
        draw(st.one_of(st.none(), _text, st.just(Code.TIMEOUT), st.integers(), st.just(""))),
        reply,
    )
    return Call("Op", {}, context), route, outcome


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_calls())
async def test_the_outcome_from_the_request_event_is_the_outcome_from_the_call(
    case: tuple[Call, RouteAudit, CallOutcome],
) -> None:
    call, route, outcome = case
    try:
        lean, generic, _requested = await _outcome_both(call, route, outcome)
    except ValueError:
        return  # the request event itself is refused: no outcome to make
    _same(lean, generic)


def test_the_outcome_is_call_event_of_s_event_with_the_request_s_fields() -> None:
    shared = {name: f"{name}-v" for name in SHARED_CALL_FIELDS}
    event_of: Any = call_event_of
    requested = event_of(
        EventType.SERVICE_CALL_REQUESTED, *shared.values(), None, None, None, None, None,
        None, {"subjects": ["pk-1"], "system_operation": "Op"},
    )  # fmt: skip
    own: list[Any] = ["ok", None, 2, 13, "sha256:1", "sha256:2", {"breaker": "closed",
                      "subjects": ["pk-1"]}]  # fmt: skip
    lean = call_outcome_of(requested, *own)
    generic = event_of(EventType.SERVICE_CALL_COMPLETED, *shared.values(), *own)
    _same(lean, generic)
    assert lean is not None
    assert lean.subjects is requested.subjects
    # the shared fields are the dataclass's, in record order, and none of the outcome's own
    fields = [f.name for f in dataclasses.fields(AuditEvent)]
    assert list(SHARED_CALL_FIELDS) == fields[1 : 1 + len(SHARED_CALL_FIELDS)]
    assert fields[1 + len(SHARED_CALL_FIELDS)] == "outcome"


@pytest.mark.parametrize(
    ("own", "why"),
    [
        (["ok", 7, 1, 1, None, None, {"breaker": "x"}], "an error code that is not text"),
        (["ok", Code.TIMEOUT, 1, 1, None, None, {"breaker": "x"}], "a StrEnum member"),
        (["ok", None, -1, 1, None, None, {"breaker": "x"}], "a negative count"),
        (["ok", None, True, 1, None, None, {"breaker": "x"}], "a boolean count"),
        (["ok", None, 1, 2**60, None, None, {"breaker": "x"}], "a count out of range"),
        (["ok", None, 1, 1, None, None, {"breaker": 0.5}], "a float in extra"),
        (["ok", None, 1, 1, None, None, {"breaker": "x" * 3000}], "too long an extra"),
        (["ok", None, 1, 1, None, None, {"breaker": "\ud800"}], "a lone surrogate"),
        (["ok", None, 1, 1, None, None, {"breaker": "x", "subjects": ["pk-2"]}], "others"),
        (["ok", None, 1, 1, None, None, {}], "an empty extra"),
    ],
)
def test_what_the_lean_way_does_not_take_goes_the_generic_way(own: list[Any], why: str) -> None:
    requested = call_event_of(
        EventType.SERVICE_CALL_REQUESTED, "r", None, None, "p", "L3", None, "s", "63", "61",
        "sy", "op", "pu", None, None, None, None, None, None, {"subjects": ["pk-1"]},
    )  # fmt: skip
    assert call_outcome_of(requested, *own) is None, why


def _context(request_id: str, principal: str) -> CallContext:
    return CallContext(
        request_id=request_id,
        purpose="benchmark",
        service="svc",
        receiving_province="63",
        handling_province="61",
        principal=principal,
        actor=principal,
        level="L3",
        client="portal",
        subjects=(f"pk-{principal}",),
    )


async def test_another_call_s_request_event_is_not_taken_for_this_one_s() -> None:
    kept = KeptWriter()
    auditor = CallAuditor(kept)  # type: ignore[arg-type]
    route = RouteAudit("svc", "lookup", "sys", "Echo", "required")
    first = Call("Echo", {}, _context("r-1", "pw-1"))
    second = Call("Echo", {}, _context("r-2", "pw-2"))
    requested = await auditor.requested(first, route)
    await auditor.completed(second, route, CallOutcome(1, 2.0, "closed"), requested)
    outcome = kept.events[-1]
    assert (outcome.request_id, outcome.principal, outcome.extra["subjects"]) == (
        "r-2",
        "pw-2",
        ["pk-pw-2"],
    )
    assert outcome.subjects == ("pk-pw-2",)


@pytest.mark.parametrize("ending", ["cancelled", "a bug"])
async def test_a_call_ending_without_an_outcome_leaves_nothing_behind(ending: str) -> None:
    kept = KeptWriter()
    auditor = CallAuditor(kept)  # type: ignore[arg-type]
    route = RouteAudit("svc", "lookup", "sys", "Echo", "required")
    started = asyncio.Event()

    async def hanging(call: Call, trace: CallTrace) -> Reply:
        started.set()
        if ending == "a bug":
            raise KeyError("not a GatewayError: no outcome record")
        await asyncio.Event().wait()
        raise AssertionError("never")

    first = Call("Echo", {}, _context("r-1", "pw-1"))
    task = asyncio.ensure_future(with_audit(hanging, auditor, route)(first, CallTrace()))
    await started.wait()
    if ending == "cancelled":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(KeyError):
            await task
    assert [e.type for e in kept.events] == [EventType.SERVICE_CALL_REQUESTED]
    assert vars(auditor) == {"_writer": kept}  # nothing kept for the call that did not end

    async def failing(call: Call, trace: CallTrace) -> Reply:
        trace.attempts = 1
        raise BackendError("no answer", reached_backend=True)

    async def answering(call: Call, trace: CallTrace) -> Reply:
        trace.attempts = 1
        return Reply({}, 200, "sha256:1", "sha256:2")

    for number, backend in enumerate((answering, failing), 2):
        call = Call("Echo", {}, _context(f"r-{number}", f"pw-{number}"))
        with_error = backend is failing
        try:
            await with_audit(backend, auditor, route)(call, CallTrace())
        except BackendError:
            assert with_error
        request, outcome = kept.events[-2:]
        generic = call_event_of(
            EventType.SERVICE_CALL_COMPLETED, f"r-{number}", None, None, f"pw-{number}", "L3",
            "portal", "svc", "63", "61", "sys", "lookup", "benchmark",
            "error" if with_error else "ok", "backend.error" if with_error else None, 1,
            outcome.latency_ms, None if with_error else "sha256:1",
            None if with_error else "sha256:2",
            {"breaker": "closed", "subjects": [f"pk-pw-{number}"]},
        )  # fmt: skip
        _same(outcome, generic)
        assert request.request_id == f"r-{number}"
    assert vars(auditor) == {"_writer": kept}


class _Capturing:
    """A store that keeps the records it is handed."""

    def __init__(self) -> None:
        self.records: list[StoredRecord] = []

    async def register_chain(self, chain: str, created: str) -> None:
        return None

    async def head(self, chain: str) -> None:
        return None

    async def last_checkpoint(self, chain: str) -> None:
        return None

    async def heads(self) -> dict[str, Any]:
        return {}

    async def append(self, records: Any, checkpoint: Any = None) -> None:
        self.records.extend(records)

    async def append_checkpoint(self, checkpoint: Any) -> None:
        return None


async def test_the_writer_s_stored_records_are_those_of_the_constructor() -> None:
    store = _Capturing()
    writer = AuditWriter(
        store,  # type: ignore[arg-type]
        chain="gw-a",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
    )
    await writer.start()
    kept = CallAuditor(writer)
    route = RouteAudit("svc", "lookup", "sys", "Echo", "required")
    call = Call("Echo", {}, _context("r-1", "pw-1"))
    try:
        requested = await kept.requested(call, route)
        await kept.completed(call, route, CallOutcome(1, 2.0, "closed"), requested)
        await writer.flush()
    finally:
        await writer.aclose()
    assert len(store.records) == 2
    for record in store.records:
        made = StoredRecord(
            record.chain, record.sequence, record.time, record.text, record.hash,
            record.lookup, record.subjects,
        )  # fmt: skip
        assert type(record) is StoredRecord
        assert record == made
        assert hash(record) == hash(made)
        assert repr(record) == repr(made)
        assert list(vars(record).items()) == list(vars(made).items())
        assert [type(v) for v in vars(record).values()] == [type(v) for v in vars(made).values()]
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.text = "{}"  # type: ignore[misc]
    assert store.records[0].subjects == store.records[1].subjects == ("pk-pw-1",)
