"""A refusal's Retry-After from the windows the store answered with is the library's figure."""

from __future__ import annotations

import math
import random
import time

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.ratelimit.draws import Window, retry_after


class FixedWindows(MemoryStorage):
    """A storage whose windows are whatever the test says."""

    window: Window = (0, 0.0, 0, 0.0)

    async def get_sliding_window(self, key: str, expiry: int) -> Window:
        return self.window


async def test_the_same_retry_after_as_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_765_000_000.5)
    storage = FixedWindows()
    strategy = SlidingWindowCounterRateLimiter(storage)
    rng = random.Random(7)
    for _ in range(2000):
        item = rng.choice([parse("3/second"), parse("300/minute"), parse("6000/hour")])
        expiry = item.get_expiry()
        storage.window = (
            rng.choice([0, 1, 2, 7, item.amount]),
            rng.choice([0.0, rng.uniform(0, expiry)]),
            rng.choice([0, 1, 5, item.amount]),
            rng.uniform(expiry, 2 * expiry),
        )
        stats = await strategy.get_window_stats(item, "client", "portal")
        library = max(math.ceil(stats.reset_time - time.time()), 1)
        assert retry_after(storage.window, expiry) == library
    if storage.timer is not None:
        storage.timer.cancel()
