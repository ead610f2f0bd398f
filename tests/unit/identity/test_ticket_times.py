"""A signed-ticket platform's issue time is a moment or nothing: ``float()`` also reads "NaN"
and "inf", and a NaN age passes every comparison with the allowed window."""

from __future__ import annotations

import pytest

from gateway.identity.upstream_ticket import _issued_at


@pytest.mark.parametrize("text", ["NaN", "nan", "-nan", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("form", ["epoch", "epoch_ms"])
def test_no_moment_is_no_issue_time(text: str, form: str) -> None:
    assert _issued_at(text, form) is None


def test_seconds_and_milliseconds_still_read() -> None:
    assert _issued_at("1765000000", "epoch") == 1765000000.0
    assert _issued_at("1765000000500", "epoch_ms") == 1765000000.5
