"""What a shared store says to a call's budgets, and the Retry-After of a refusal.

``SqliteStorage.acquire_all`` and ``RedisBudgetStorage.acquire_all`` draw a call's budgets in
one step and answer with a ``Drawn``: the units granted to each budget drawn, and, when one
refused, its windows as the library's ``get_sliding_window`` would read them in a second step.
``retry_after`` is what ``SlidingWindowCounterRateLimiter.get_window_stats`` makes of them (its
reset time), so a refusal costs no second step; tests/unit/ratelimit/test_draws.py holds it to
the library's figure.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from limits.errors import StorageError

Window = tuple[int, float, int, float]
"""Previous window's count, seconds until it expires, current count, seconds until it expires."""


class Drawn(NamedTuple):
    """What a store said to one call's budgets."""

    granted: list[int]
    """Units granted to each budget drawn, in order; a refusal ends it with a 0."""
    window: Window | None = None
    """The refusing budget's windows; None when nothing refused."""


def retry_after(window: Window, expiry: int) -> int:
    """Whole seconds until a budget with these windows has room again (at least 1): the
    library's reset time (``get_window_stats``) from now, rounded up."""
    previous, previous_expires_in, current, current_expires_in = window
    reset_in = math.inf
    if previous:
        reset_in = previous_expires_in % (expiry / previous)
    if current:
        reset_in = min(reset_in, current_expires_in % expiry)
    if reset_in == math.inf:
        return 1
    return max(math.ceil(reset_in), 1)


def caller_error(exc: Exception) -> Exception:
    """A failed shared step's error (a Redis round trip, a SQLite transaction) for one of the
    calls that shared it: a ``StorageError`` of its own for each (each caller raises it, and
    raising adds to an exception's traceback), the store's error its cause; any other error
    as it is."""
    if isinstance(exc, StorageError):
        own = StorageError(exc.storage_error)
        own.__cause__ = exc.storage_error
        return own
    return exc
