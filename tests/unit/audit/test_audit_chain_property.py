"""Property: on the pure chain, every single tamper is found at the position it was made."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.canonical import GENESIS_HASH, CanonicalError, canonical_bytes, chain_hash
from gateway.audit.record import AuditEvent, EventType, record_body, record_text
from gateway.audit.verifier import ProblemKind, check_chain

Row = tuple[int, bytes, str]

events = st.builds(
    AuditEvent,
    type=st.sampled_from(list(EventType)),
    request_id=st.none() | st.text(max_size=12),
    principal=st.none() | st.text(alphabet="abcdef0123456789", max_size=16),
    service=st.none() | st.text(max_size=8),
    handling_province=st.none() | st.sampled_from(["61", "62", "63", "32"]),
    attempts=st.none() | st.integers(0, 5),
    latency_ms=st.none() | st.integers(0, 10**6),
    extra=st.dictionaries(
        st.text(max_size=5), st.integers(-5, 5) | st.text(max_size=5), max_size=3
    ),
)


def build(chain: str, batch: list[AuditEvent], alg: str = "sha256") -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS_HASH
    for index, event in enumerate(batch, 1):
        text = canonical_bytes(
            record_body(event, chain, index, "2025-01-01T00:00:00.000000Z", alg, prev)
        )
        prev = chain_hash(alg, prev, text)
        rows.append((index, text, prev))
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(events, min_size=1, max_size=12), st.sampled_from(["sha256", "sm3"]))
def test_untouched_chain_verifies(batch: list[AuditEvent], alg: str) -> None:
    summary, problem = check_chain("c", build("c", batch, alg))
    assert problem is None
    assert summary.records == len(batch)


@settings(max_examples=150, deadline=None)
@given(st.lists(events, min_size=1, max_size=12), st.data())
def test_any_byte_change_is_found_at_its_record(
    batch: list[AuditEvent], data: st.DataObject
) -> None:
    rows = build("c", batch)
    victim = data.draw(st.integers(0, len(rows) - 1))
    sequence, text, hash_ = rows[victim]
    position = data.draw(st.integers(0, len(text) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != text[position]))
    tampered = text[:position] + bytes([new_byte]) + text[position + 1 :]
    try:
        tampered.decode("utf-8")
    except UnicodeDecodeError:
        tampered = text[:position] + b"#" + text[position + 1 :]
        if tampered == text:
            return
    rows[victim] = (sequence, tampered, hash_)
    _, problem = check_chain("c", rows)
    assert problem is not None
    assert problem.sequence == sequence
    assert problem.kind in {ProblemKind.CHANGED, ProblemKind.REORDERED}


@settings(max_examples=60, deadline=None)
@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_deleting_or_swapping_is_found(batch: list[AuditEvent], data: st.DataObject) -> None:
    rows = build("c", batch)
    index = data.draw(st.integers(0, len(rows) - 2))
    deleted = rows[:index] + rows[index + 1 :]
    _, problem = check_chain("c", deleted)
    assert problem is not None
    assert (problem.sequence, problem.kind) == (index + 1, ProblemKind.MISSING)

    swapped = list(rows)
    swapped[index], swapped[index + 1] = swapped[index + 1], swapped[index]
    _, problem = check_chain("c", swapped)
    assert problem is not None
    assert problem.kind == ProblemKind.REORDERED
    assert problem.sequence in {index + 1, index + 2}


@settings(max_examples=40, deadline=None)
@given(st.lists(events, min_size=2, max_size=12), st.data())
def test_truncation_below_a_signed_head_is_found(
    batch: list[AuditEvent], data: st.DataObject
) -> None:
    rows = build("c", batch)
    keep = data.draw(st.integers(0, len(rows) - 1))
    signed = {rows[-1][0]: rows[-1][2]}
    _, problem = check_chain("c", rows[:keep], signed=signed)
    assert problem is not None
    assert (problem.sequence, problem.kind) == (keep + 1, ProblemKind.TRUNCATED)


def test_strict_mode_also_proves_canonical_form() -> None:
    # A writer bug, not tampering: the text hashes correctly but is not canonical.
    rows = build("c", [AuditEvent(type=EventType.LOGIN)])
    sequence, text, _ = rows[0]
    spaced = text.replace(b'"v":1', b'"v": 1')
    rows[0] = (sequence, spaced, chain_hash("sha256", GENESIS_HASH, spaced))
    assert check_chain("c", rows)[1] is None
    _, problem = check_chain("c", rows, strict=True)
    assert problem is not None
    assert (problem.sequence, problem.kind) == (1, ProblemKind.CHANGED)
    assert "canonical" in problem.detail


full_events = st.builds(
    AuditEvent,
    type=st.sampled_from(list(EventType)),
    request_id=st.none() | st.text(max_size=12),
    case_id=st.none() | st.text(max_size=6),
    actor=st.none() | st.text(max_size=6),
    principal=st.none() | st.text(max_size=16),
    identity_level=st.none() | st.sampled_from(["L1", "L2", "L3"]),
    client=st.none() | st.text(max_size=6),
    service=st.none() | st.text(max_size=8),
    receiving_province=st.none() | st.sampled_from(["61", "62", "63"]),
    handling_province=st.none() | st.sampled_from(["61", "62", "63", "32"]),
    system=st.none() | st.text(max_size=6),
    operation=st.none() | st.text(max_size=6),
    purpose=st.none() | st.text(max_size=6),
    outcome=st.none() | st.text(max_size=6),
    error_code=st.none() | st.text(max_size=6),
    attempts=st.none() | st.integers(0, 2**53 - 1),
    latency_ms=st.none() | st.integers(0, 10**6),
    request_digest=st.none() | st.text(max_size=8),
    response_digest=st.none() | st.text(max_size=8),
    extra=st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=6,
        ),
        max_size=4,
    ),
)


@settings(max_examples=300, deadline=None)
@given(full_events, st.integers(1, 2**40), st.sampled_from(["sha256", "sm3"]))
def test_the_writers_encoding_is_the_canonical_one(
    event: AuditEvent, sequence: int, alg: str
) -> None:
    # The writer encodes with record_text (no re-check of values already checked); the
    # verifier and any other implementation use the canonical encoding of record_body.
    try:
        expected = canonical_bytes(
            record_body(event, "c", sequence, "2025-01-01T00:00:00.000000Z", alg, GENESIS_HASH)
        )
    except CanonicalError:  # a lone surrogate: the writer refuses these too
        with pytest.raises(orjson.JSONEncodeError):
            record_text(event, "c", sequence, "2025-01-01T00:00:00.000000Z", alg, GENESIS_HASH)
        return
    assert (
        record_text(event, "c", sequence, "2025-01-01T00:00:00.000000Z", alg, GENESIS_HASH)
        == expected
    )
