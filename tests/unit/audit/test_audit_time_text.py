"""A record's time stamp (``utc_now_text``) is the text the former code wrote, to the byte.

The writer stamps every record with ``utc_now_text``; its microseconds are now written from a
table of three-digit halves instead of ``f"{micro:06d}"``. For clock readings all over the
range (the first and last microsecond of a second, of a millisecond, seconds that change and
come back, dates far apart) the text must be the former one and ``format_time`` of the same
instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import record
from gateway.audit.record import format_time, utc_now_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _former(ns: int) -> str:
    """The former ``utc_now_text`` for a clock reading of ``ns``."""
    second, micro = divmod(ns // 1000, 1_000_000)
    prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{micro:06d}Z"


def _read(monkeypatch: pytest.MonkeyPatch, ns: int) -> str:
    monkeypatch.setattr(record, "_time", SimpleNamespace(time_ns=lambda: ns))
    return utc_now_text()


_EDGES = (0, 1, 999, 1000, 1001, 999_000, 999_999, 500_000, 123_456, 100_000, 10_000)


@settings(max_examples=500, deadline=None)
@given(
    readings=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=253_402_300_799 * 10**9),  # to 9999-12-31
            st.tuples(
                st.integers(min_value=1_700_000_000, max_value=1_700_000_003),
                st.sampled_from(_EDGES),
                st.integers(0, 999),
            ).map(lambda t: (t[0] * 1_000_000 + t[1]) * 1000 + t[2]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_time_text_is_the_former_text(readings: list[int]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(record, "_second_text", (-1, ""))
        for ns in readings:  # seconds that change, repeat and come back: the cache's cases
            text = _read(monkeypatch, ns)
            assert text == _former(ns)
            assert text == format_time(EPOCH + timedelta(microseconds=ns // 1000))
            assert len(text) == 27


def test_the_real_clock_gives_the_format() -> None:
    text = utc_now_text()
    assert datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").year >= 2026
