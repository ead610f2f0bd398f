"""``limits``' in-process storage with the sliding-window draw done in one synchronous step.

``MemoryStorage.acquire_sliding_window_entry`` reads both windows and increments through six
awaited, exception-wrapped calls, takes an ``asyncio.Lock`` per key and starts a new expiry
task (a pass over every key) on nearly every increment: about 20 µs of CPU per budget, two
budgets per call. Nothing in it needs to wait: one event loop owns the counters, so without an
``await`` between reading and incrementing no other call can come in between, and the lock and
the "another hit won the race" re-check have nothing left to guard.

``acquire_now`` is the same arithmetic (same keys, same counters, same expiry times, same
answers, held to the library's by tests/unit/ratelimit/test_memory_storage.py) on the same
``storage`` / ``expirations`` dictionaries, so the library's own methods (window stats,
``test``, ``clear``) see what it wrote. Expired counters are swept at most once a second,
synchronously, instead of by a task per increment.

``draw_each`` is the limiter's per-call step: ``acquire_now`` for each budget of a call in
order, stopping at the first without room, in one Python call with one reading of the clock,
and the two window keys of a budget (``sliding_window_keys``: two f-strings and two divisions)
kept on its ``Window`` while the window lasts instead of written at every draw.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from math import floor

from limits.aio.storage import MemoryStorage

SWEEP_INTERVAL = 1.0
"""Seconds between two passes that drop expired counters."""


class Window:
    """One budget of a caller as ``draw_each`` draws it: the store key, the limit per window,
    the window's seconds, and the two window keys of the last draw with the window numbers they
    were made for (``limits``' ``sliding_window_keys`` of that time: ``key/number``)."""

    __slots__ = ("current", "current_key", "expiry", "key", "limit", "previous", "previous_key")

    def __init__(self, key: str, limit: int, expiry: int) -> None:
        self.key = key
        self.limit = limit
        self.expiry = expiry
        self.previous = self.current = -1
        self.previous_key = self.current_key = ""

    def __repr__(self) -> str:
        return f"Window({self.limit}/{self.expiry}s)"


class LocalMemoryStorage(MemoryStorage):
    """One process's counters, drawn without awaiting (see the module docstring)."""

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._next_sweep = 0.0

    def _live_count(self, key: str, now: float) -> int:
        """The counter of ``key`` (0 once expired, and then dropped), as ``get`` reads it."""
        if self.expirations.get(key, 0) <= now:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)
            return 0
        return self.storage.get(key, 0)

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Draw ``amount`` from the sliding-window budget ``key`` (``limit`` per ``expiry``
        seconds) if it has room; say whether it had."""
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous_count = self._live_count(previous_key, now)
        current_count = self._live_count(current_key, now)
        previous_ttl = (
            0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        )
        if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
            return False
        # A new counter lives twice the window: it is the previous window during the next one.
        self.storage[current_key] = current_count + amount
        if current_count == 0:
            self.expirations[current_key] = now + 2 * expiry
        if now >= self._next_sweep:
            self._sweep(now)
        return True

    def draw_each(self, windows: Sequence[Window]) -> int:
        """Draw one unit from each of ``windows`` in order, as ``acquire_now`` would one after
        the other at the same moment, stopping at the first without room: its index, or -1
        when every one had room (and was drawn)."""
        now = time.time()
        storage = self.storage
        expirations = self.expirations
        for index, window in enumerate(windows):
            expiry = window.expiry
            if window.limit < 1:
                return index
            previous = int((now - expiry) / expiry)
            current = int(now / expiry)
            if current != window.current or previous != window.previous:
                window.previous_key = f"{window.key}/{previous}"
                window.current_key = f"{window.key}/{current}"
                window.previous, window.current = previous, current
            previous_key = window.previous_key
            current_key = window.current_key
            at = expirations.get(previous_key)
            if at is not None and at > now:
                previous_count = storage.get(previous_key, 0)
            else:
                previous_count = self._live_count(previous_key, now)
            at = expirations.get(current_key)
            if at is not None and at > now:
                current_count = storage.get(current_key, 0)
            else:
                current_count = self._live_count(current_key, now)
            previous_ttl = (
                0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
            )
            if floor(previous_count * previous_ttl / expiry + current_count) + 1 > window.limit:
                return index
            storage[current_key] = current_count + 1
            if current_count == 0:
                expirations[current_key] = now + 2 * expiry
            if now >= self._next_sweep:
                self._sweep(now)
        return -1

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        expired = [key for key, at in self.expirations.items() if at <= now]
        for key in expired:
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            self.locks.pop(key, None)

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        return self.acquire_now(key, limit, expiry, amount)
