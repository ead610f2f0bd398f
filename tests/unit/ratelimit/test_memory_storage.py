"""The synchronous sliding-window draw gives the library's answers, step for step.

Both storages are driven through the same sequence of draws on a shared fake clock (both read
``time.time()``): every answer, and every window the library's strategy reads back afterwards,
must be the same. Budgets are small and the clock jumps across window edges, so refusals,
recoveries, the previous window's weighting and expired counters all occur.
"""

from __future__ import annotations

import random
import time

import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.ratelimit import memory_storage
from gateway.ratelimit.memory_storage import LocalMemoryStorage


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_same_answers_as_the_library(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    clock = [1_765_000_000.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours, theirs = LocalMemoryStorage(), MemoryStorage()
    items = [parse("3/second"), parse("5/2 seconds"), parse("4/minute")]
    rng = random.Random(seed)
    answers = {True: 0, False: 0}
    for _ in range(3000):
        clock[0] += rng.choice([0.0, 0.01, 0.2, 0.7, 1.3, 7.0, 45.0])
        item = rng.choice(items)
        key = item.key_for("person", rng.choice(["a", "b", "c"]))
        amount = rng.choice([1, 1, 1, 2, 9])
        mine = await ours.acquire_sliding_window_entry(key, item.amount, item.get_expiry(), amount)
        lib = await theirs.acquire_sliding_window_entry(key, item.amount, item.get_expiry(), amount)
        assert mine == lib
        answers[mine] += 1
        assert await ours.get_sliding_window(key, item.get_expiry()) == (
            await theirs.get_sliding_window(key, item.get_expiry())
        )
    assert answers[True] > 100
    assert answers[False] > 100
    for storage in (ours, theirs):
        if storage.timer is not None:
            storage.timer.cancel()


async def test_the_strategy_reads_what_the_draw_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_765_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    storage = LocalMemoryStorage()
    strategy = SlidingWindowCounterRateLimiter(storage)
    item = parse("2/minute")
    assert await strategy.hit(item, "client", "portal")
    assert await strategy.hit(item, "client", "portal")
    assert not await strategy.hit(item, "client", "portal")
    stats = await strategy.get_window_stats(item, "client", "portal")
    assert stats.remaining == 0
    assert not await strategy.test(item, "client", "portal")
    clock[0] += 121  # both windows over: the budget is whole again
    assert await strategy.test(item, "client", "portal")
    if storage.timer is not None:
        storage.timer.cancel()


async def test_expired_counters_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_765_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    storage = LocalMemoryStorage()
    item = parse("5/second")
    for person in range(50):
        assert storage.acquire_now(item.key_for("person", str(person)), 5, 1)
    assert len(storage.storage) == 50
    clock[0] += 2 + memory_storage.SWEEP_INTERVAL
    assert storage.acquire_now(item.key_for("person", "late"), 5, 1)
    assert list(storage.storage) == [f"{item.key_for('person', 'late')}/{int(clock[0])}"]
    assert len(storage.expirations) == 1
    if storage.timer is not None:
        storage.timer.cancel()
