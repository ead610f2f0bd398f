"""The subject lookup rows the writer hands its store come from the event (``AuditEvent.subjects``,
taken when the event is made); records read back take them from the stored text
(``record_subjects``). Both must give the same rows for every record the writer can encode."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.query import record_subjects, subject_rows
from gateway.audit.record import AuditEvent, EventType, record_text
from gateway.audit.store import StoredRecord

TIME = "2026-12-07T06:00:00.000000Z"


def _rows_both_ways(event: AuditEvent) -> tuple[list[Any], list[Any]]:
    """The subject rows from the event, and from the text the writer encodes of it."""
    text = record_text(event, "gw-a", 7, TIME, "sha256", "0" * 64).decode()
    from_event = StoredRecord("gw-a", 7, TIME, text, "f" * 64, None, event.subjects)
    from_text = StoredRecord("gw-a", 7, TIME, text, "f" * 64)
    assert event.subjects == tuple(record_subjects(text))
    return subject_rows(from_event), subject_rows(from_text)


def _event(extra: dict[str, Any]) -> AuditEvent:
    return AuditEvent(type=EventType.SERVICE_CALL_REQUESTED, principal="pw-1", extra=extra)


def test_no_extra_and_no_subjects() -> None:
    for extra in ({}, {"breaker": "closed"}, {"other": {"subjects": ["pk-nested"]}}):
        event = _event(extra)
        assert event.subjects == ()
        by_event, by_text = _rows_both_ways(event)
        assert by_event == by_text == []


def test_subjects_in_order_each_once_at_most_sixteen() -> None:
    keys = [f"pk-{n:02d}" for n in range(20)]
    event = _event({"subjects": ["pk-05", *keys, "pk-05"]})
    by_event, by_text = _rows_both_ways(event)
    assert by_event == by_text
    assert [row[0] for row in by_event] == ["pk-05", *[k for k in keys if k != "pk-05"][:15]]
    assert by_event[0] == ("pk-05", TIME, "gw-a", 7)


def test_odd_keys() -> None:
    odd: list[Any] = [
        "",  # empty: not a key
        "x" * 128,  # the longest key
        "y" * 129,  # too long
        '"subjects":["pk-injected"]',
        "青海-63",
        "tab\tand\nnewline\\",
        1,
        True,
        None,
        ["pk-in-a-list"],
        {"pk": "in-an-object"},
    ]
    event = _event({"subjects": odd, "grant": "cg_1"})
    by_event, by_text = _rows_both_ways(event)
    assert by_event == by_text
    assert [row[0] for row in by_event] == [
        "x" * 128,
        '"subjects":["pk-injected"]',
        "青海-63",
        "tab\tand\nnewline\\",
    ]


def test_subjects_that_are_not_an_array() -> None:
    for value in ("pk-alone", 7, None, {"pk-a": "pk-b"}, True):
        by_event, by_text = _rows_both_ways(_event({"subjects": value}))
        assert by_event == by_text == []


def test_a_tuple_is_written_as_an_array_and_read_as_one() -> None:
    by_event, by_text = _rows_both_ways(_event({"subjects": ("pk-a", "pk-b", "pk-a")}))
    assert by_event == by_text
    assert [row[0] for row in by_event] == ["pk-a", "pk-b"]


def test_extra_changed_after_the_event_was_made_changes_no_row() -> None:
    extra: dict[str, Any] = {"subjects": ["pk-a"]}
    event = _event(extra)
    extra["subjects"].append("pk-late")
    extra["subjects"] = ["pk-other"]
    by_event, by_text = _rows_both_ways(event)
    assert by_event == by_text == [("pk-a", TIME, "gw-a", 7)]


_keys = st.one_of(
    st.text(max_size=140),
    st.sampled_from(["pk-a", "pk-b", "", "x" * 128, "y" * 129]),
    st.integers(-5, 5),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)
_subjects = st.one_of(
    st.lists(_keys, max_size=24),
    st.lists(st.sampled_from(["pk-a", "pk-b", "pk-c"]), max_size=30),
    st.tuples(_keys, _keys),
    _keys,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    subjects=st.one_of(st.just(...), _subjects),
    other=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_the_event_and_the_text_give_the_same_rows(subjects: Any, other: dict[str, str]) -> None:
    extra: dict[str, Any] = dict(other)
    if subjects is not ...:
        extra["subjects"] = subjects
    try:
        event = _event(extra)
    except ValueError:
        return  # refused when made (a lone surrogate, over 2 KiB): never recorded
    by_event, by_text = _rows_both_ways(event)
    assert by_event == by_text
