"""The routed calls' events and records on the writer's lean path are those of the generic one.

``call_event_of`` (a call's event, its ``extra`` encoded without the canonical walk when every
value is a plain string or a list of them) gives the event ``AuditEvent(...)`` gives, or the same
error; ``CallAuditor`` builds each ``extra`` with its keys in code-point order, so that its text
is the canonical one; ``record_encoder`` (one body dictionary reused for every record of a
chain) writes the bytes of ``canonical_bytes(record_body(...))`` whatever the record before it
held; and the lookup row the writer makes with each record is ``event_lookup_row``'s and the
row read back from the record's text."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.adapter import Call, CallContext, Reply
from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
from gateway.audit.canonical import GENESIS_HASH, canonical_bytes, chain_hash
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import event_lookup_row, lookup_row
from gateway.audit.record import (
    AuditEvent,
    EventType,
    call_event_of,
    record_body,
    record_encoder,
    record_text,
)
from gateway.audit.store import ChainHead, StoredCheckpoint, StoredRecord
from gateway.audit.writer import AuditWriter
from tests.unit.audit.kept_writer import KeptWriter

FIELDS = [f.name for f in dataclasses.fields(AuditEvent) if f.init]
ORDERED = [n for n in FIELDS if n != "time"]  # call_event_of's parameters
TIME = "2026-12-07T06:00:00.000000Z"


def _made(make: Any) -> Any:
    try:
        return make()
    except Exception as exc:
        return (type(exc), str(exc))


def _same_event(lean: Any, generic: Any) -> None:
    if isinstance(generic, tuple):
        assert lean == generic
        return
    assert isinstance(lean, AuditEvent)
    assert lean == generic
    assert orjson_text(lean) == orjson_text(generic)
    assert record_text(lean, "gw", 3, TIME, "sha256", "0" * 64) == record_text(
        generic, "gw", 3, TIME, "sha256", "0" * 64
    )
    assert lean.subjects == generic.subjects
    assert lean.extra == generic.extra


def _both(values: dict[str, Any]) -> tuple[Any, Any]:
    args: list[Any] = [values.get(n, {} if n == "extra" else None) for n in ORDERED]
    lean: Any = call_event_of
    keywords = dict(zip(ORDERED, args, strict=True))
    return _made(lambda: lean(*args)), _made(lambda: AuditEvent(**keywords))


def test_the_order_is_the_fields_without_the_time() -> None:
    assert list(inspect.signature(call_event_of).parameters) == ORDERED


_plain = st.text(max_size=6)
_odd = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.just("\ud800"), st.tuples(_plain)
)
_values = st.one_of(_plain, st.lists(_plain, max_size=3), _odd, st.lists(_odd, max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.dictionaries(st.text(max_size=6), _values, max_size=4), principal=_plain)
def test_a_call_event_is_the_keyword_form_s_for_any_extra_in_key_order(
    extra: dict[str, Any], principal: str
) -> None:
    ordered = dict(sorted(extra.items()))  # the callers' promise: keys in code-point order
    lean, generic = _both(
        {"type": EventType.SERVICE_CALL_COMPLETED, "principal": principal, "extra": ordered}
    )
    _same_event(lean, generic)
    if isinstance(lean, AuditEvent) and ordered:
        assert orjson_text(lean) == canonical_bytes(ordered)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(extra=st.dictionaries(st.text(max_size=6), _values, min_size=2, max_size=5))
def test_keys_in_any_order_give_the_canonical_text(extra: dict[str, Any]) -> None:
    backwards = dict(sorted(extra.items(), reverse=True))
    lean, generic = _both({"type": EventType.SERVICE_CALL_REQUESTED, "extra": backwards})
    _same_event(lean, generic)
    if isinstance(lean, AuditEvent):
        assert orjson_text(lean) == canonical_bytes(extra)


def orjson_text(event: AuditEvent) -> bytes:
    """The canonical text of ``extra`` the event captured when it was made."""
    return orjson.dumps(event.extra_json)


@pytest.mark.parametrize(
    "extra",
    [
        {"k": "x" * 3000},  # too long: the same ValueError
        {"s": "\ud800"},  # a lone surrogate
        {"subjects": ["pk-1", "\udc00"]},
        {"score": 0.5},
        {"n": 2**60},
        {"subjects": ("pk-1",)},  # a tuple: the generic path, the same event
        {"subjects": ["pk-1", "pk-1", "", "x" * 129, "pk-2"]},
    ],
)
def test_odd_extras_go_the_generic_way(extra: dict[str, Any]) -> None:
    lean, generic = _both({"type": EventType.SERVICE_CALL_REQUESTED, "extra": extra})
    _same_event(lean, generic)


def test_bad_fields_fail_as_the_keyword_form_does() -> None:
    for bad in ({"principal": 7}, {"attempts": -1}, {"latency_ms": 1.5}, {"type": "nope"}):
        values = {"type": EventType.SERVICE_CALL_COMPLETED, "extra": {"breaker": "x"}, **bad}
        lean, generic = _both(values)
        assert isinstance(generic, tuple)
        assert lean == generic


@pytest.mark.parametrize(
    ("grant", "idempotency_key", "subjects"),
    list(itertools.product([None, "cg-1"], [None, "ik-1"], [(), ("pk-1",), ("pk-2", "pk-1")])),
)
async def test_a_call_s_extras_are_written_in_canonical_order(
    grant: str | None, idempotency_key: str | None, subjects: tuple[str, ...]
) -> None:
    context = CallContext(
        request_id="r-1",
        purpose="p",
        service="svc",
        receiving_province="63",
        handling_province="61",
        principal="pw-1",
        actor="pw-1",
        level="L3",
        authorisation_ref=grant,
        idempotency_key=idempotency_key,
        subjects=subjects,
    )
    call = Call("Echo", {}, context)
    kept = KeptWriter()
    auditor = CallAuditor(kept)  # type: ignore[arg-type]
    route = RouteAudit("svc", "lookup", "sys", "Echo", "required")
    await auditor.requested(call, route)
    reply = Reply({}, 200, "sha256:1", "sha256:2")
    await auditor.completed(call, route, CallOutcome(1, 2.4, "closed", reply=reply))
    requested, completed = kept.events
    assert requested.extra == {
        "system_operation": "Echo",
        **({"subjects": list(subjects)} if subjects else {}),
        **({"grant": grant} if grant else {}),
        **({"idempotency_key": idempotency_key} if idempotency_key else {}),
    }
    assert completed.extra == {
        "breaker": "closed",
        **({"subjects": list(subjects)} if subjects else {}),
        **({"grant": grant} if grant else {}),
    }
    for event in (requested, completed):
        assert orjson_text(event) == canonical_bytes(event.extra)  # sorted, as canonical
        assert list(event.extra) == sorted(event.extra)
        generic = AuditEvent(
            **{n: getattr(event, n) for n in FIELDS if n != "extra"}, extra=dict(event.extra)
        )
        assert record_text(event, "gw", 1, TIME, "sha256", GENESIS_HASH) == record_text(
            generic, "gw", 1, TIME, "sha256", GENESIS_HASH
        )


_full = AuditEvent(
    type=EventType.SERVICE_CALL_COMPLETED,
    request_id="r",
    case_id="c",
    actor="a",
    principal="p",
    identity_level="L3",
    client="cl",
    service="s",
    receiving_province="63",
    handling_province="61",
    system="sy",
    operation="o",
    purpose="pu",
    outcome="ok",
    error_code="e",
    attempts=3,
    latency_ms=9,
    request_digest="sha256:1",
    response_digest="sha256:2",
    extra={"breaker": "closed", "subjects": ["青海"]},
)
_empty = AuditEvent(type=EventType.LOGIN)


@pytest.mark.parametrize("alg", ["sha256", "sm3"])
def test_the_reused_body_leaves_nothing_of_the_record_before(alg: str) -> None:
    encode = record_encoder("gw-a", alg)
    for sequence, event in enumerate([_full, _empty, _full, _empty, _full], start=1):
        expected = canonical_bytes(record_body(event, "gw-a", sequence, TIME, alg, "ab" * 32))
        assert encode(event, sequence, TIME, "ab" * 32) == expected


class _Capturing:
    """A store that keeps what the writer appends (the records with their lookup rows)."""

    def __init__(self) -> None:
        self.records: list[StoredRecord] = []

    async def register_chain(self, chain: str, created: str) -> None:
        return None

    async def head(self, chain: str) -> ChainHead | None:
        return None

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        return None

    async def heads(self) -> dict[str, ChainHead]:
        return {}

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        self.records.extend(records)

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        return None


async def test_the_writer_s_records_are_the_generic_ones() -> None:
    store = _Capturing()
    moment = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    writer = AuditWriter(
        store,  # type: ignore[arg-type]
        chain="gw-a",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        clock=lambda: moment,
    )
    await writer.start()
    events = [_full, _empty, dataclasses.replace(_full, actor=None, case_id=None), _full]
    try:
        for event in events:
            await writer.append(event)
    finally:
        await writer.aclose()
    prev = GENESIS_HASH
    for sequence, (event, record) in enumerate(zip(events, store.records, strict=True), 1):
        time = "2026-12-07T06:00:00.000000Z"
        body = record_body(event, "gw-a", sequence, time, "sha256", prev)
        assert record.text.encode() == canonical_bytes(body)
        assert record.hash == chain_hash("sha256", prev, canonical_bytes(body))
        assert record.lookup == event_lookup_row(event, "gw-a", sequence, time)
        assert record.lookup == lookup_row(dataclasses.replace(record, lookup=None))
        assert type(record.lookup[3]) is str
        prev = record.hash
