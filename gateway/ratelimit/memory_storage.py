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
"""

from __future__ import annotations

import time
from math import floor

from limits.aio.storage import MemoryStorage

SWEEP_INTERVAL = 1.0
"""Seconds between two passes that drop expired counters."""


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
