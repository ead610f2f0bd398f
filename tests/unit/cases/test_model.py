"""The state machine table, status derivation and step planning: pure logic."""

from __future__ import annotations

import pytest

from gateway.cases.lifecycle import route_between
from gateway.cases.model import (
    TRANSITIONS,
    CaseStatus,
    IllegalTransition,
    PartStatus,
    body_digest,
    check_transition,
    derive_status,
    part_moves_on,
)

S = CaseStatus
P = PartStatus


def test_every_status_is_in_the_table_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(CaseStatus)
    assert TRANSITIONS[S.CLOSED] == frozenset()
    for targets in TRANSITIONS.values():
        assert targets <= set(CaseStatus)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.CLOSED, S.RECEIVED),
        (S.RECEIVED, S.PROCESSING),  # 办件转办 is never skipped
        (S.RESULT_DELIVERED, S.PROCESSING),
        (S.NOT_ACCEPTED, S.FORWARDED),
        # A dead letter is an operator's (only an unwound linked case closes from it).
        (S.DEAD_LETTERED, S.RESULT_DELIVERED),
        (S.COMPENSATING, S.CLOSED),  # unwinding ends in the failed part's outcome first
        (S.COMPENSATING, S.PROCESSING),
    ],
)
def test_illegal_moves_are_refused(current: CaseStatus, target: CaseStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, target)


def test_quick_answers_pass_through_the_explicit_steps() -> None:
    assert route_between(S.RECEIVED, S.RESULT_DELIVERED) == [S.FORWARDED, S.RESULT_DELIVERED]
    assert route_between(S.ORIGINALS_CHECKED, S.PROCESSING) == [S.FORWARDED, S.PROCESSING]
    assert route_between(S.FORWARDED, S.PROCESSING) == [S.PROCESSING]
    with pytest.raises(IllegalTransition):
        route_between(S.CLOSED, S.FORWARDED)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([P.PENDING, P.PENDING], S.RECEIVED),
        ([P.FORWARDED, P.PENDING], S.FORWARDED),
        ([P.DONE, P.PROCESSING], S.PROCESSING),
        ([P.DONE, P.DONE], S.RESULT_DELIVERED),
        ([P.DONE, P.NOT_ACCEPTED], S.NOT_ACCEPTED),
        ([P.DONE, P.RETURNED], S.RETURNED),
        ([P.FORWARDED, P.SUPPLEMENT_REQUESTED], S.SUPPLEMENT_REQUESTED),
        ([P.DONE, P.OUTCOME_UNKNOWN], S.OUTCOME_UNKNOWN),
        ([P.NOT_ACCEPTED, P.DEAD_LETTERED], S.DEAD_LETTERED),
    ],
)
def test_a_joint_case_takes_its_status_from_its_parts(
    parts: list[PartStatus], expected: CaseStatus
) -> None:
    assert derive_status(S.RECEIVED, parts) == expected


def test_a_window_case_waits_as_originals_checked() -> None:
    assert derive_status(S.DEAD_LETTERED, [P.PENDING], S.ORIGINALS_CHECKED) == (S.ORIGINALS_CHECKED)
    assert derive_status(S.CLOSED, [P.PENDING]) == S.CLOSED


def test_answers_never_move_a_part_backwards() -> None:
    assert part_moves_on(P.FORWARDED, P.PROCESSING)
    assert not part_moves_on(P.PROCESSING, P.FORWARDED)
    assert not part_moves_on(P.DONE, P.PROCESSING)
    assert part_moves_on(P.OUTCOME_UNKNOWN, P.FORWARDED)
    assert not part_moves_on(P.NOT_ACCEPTED, P.DONE)


def test_body_digest_ignores_key_order() -> None:
    assert body_digest({"a": 1, "b": {"c": 2, "d": 3}}) == body_digest(
        {"b": {"d": 3, "c": 2}, "a": 1}
    )
    assert body_digest({"a": 1}) != body_digest({"a": 2})
