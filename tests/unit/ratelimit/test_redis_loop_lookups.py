"""The Redis rate-limit store's queued draws ask for no event loop per call.

A draw that comes while a step is on the wire is queued on a future, and a sender task carries
the queued draws; both are made on the storage's loop, kept (``KeptLoop``): on Python 3.11 each
``asyncio.get_running_loop()`` is a ``getpid`` system call. What must hold: after a first round
of queued calls, more rounds ask for no loop, and each call is answered as before.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.ratelimit import redis_storage
from gateway.ratelimit.redis_storage import RedisBudgetStorage
from tests.loop_lookups import count_loop_lookups

pytestmark = pytest.mark.redis


async def test_queued_draws_ask_for_no_loop_after_the_first(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = count_loop_lookups(monkeypatch, redis_storage)
    store = RedisBudgetStorage("async+redis://127.0.0.1:6379/0", key_prefix=prefix)
    budget = [(store.window_keys("person"), 1000, 3600, 1)]
    try:

        async def round_of(calls: int) -> list[list[int]]:
            drawn = await asyncio.gather(*(store.acquire_all(budget) for _ in range(calls)))
            return [answer.granted for answer in drawn]

        assert await round_of(6) == [[1]] * 6  # one alone, five queued behind it
        first = spy.lookups
        assert first <= 1
        for _ in range(3):
            assert await round_of(6) == [[1]] * 6
        assert spy.lookups == first
    finally:
        await store.bridge.storage.aclose()  # type: ignore[attr-defined]
