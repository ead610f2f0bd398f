"""Shared deadlines (``Deadlines``) for blocks that come one after another, as the audit
writer's store calls do: ``asyncio.timeout``'s rules, one loop timer. The loop's clock is
replaced by one the test moves, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gateway.deadlines import Deadlines


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(asyncio.get_running_loop(), "time", clock)
    return clock


@pytest.fixture
async def timers(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop times timers were armed for."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting)
    return armed


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_call_past_its_deadline_ends_in_timeout_error(clock: Clock) -> None:
    deadline = Deadlines(2.0)
    hung = asyncio.Event()

    async def call() -> None:
        with deadline.start():
            await hung.wait()

    task = asyncio.create_task(call())
    await _turns()
    clock.now = 1001.9
    await _turns()
    assert not task.done()
    clock.now = 1002.0
    with pytest.raises(TimeoutError):
        await task
    assert task.cancelling() == 0  # the cancellation it asked for was taken back


async def test_each_call_ends_at_its_own_deadline_not_the_first_ones(
    clock: Clock, timers: list[float]
) -> None:
    deadline = Deadlines(2.0)
    with deadline.start():
        await asyncio.sleep(0)  # arms the timer for 1002.0
    clock.now = 1001.0
    hung = asyncio.Event()

    async def call() -> None:
        with deadline.start():
            await hung.wait()  # its deadline: 1003.0

    task = asyncio.create_task(call())
    await _turns()
    clock.now = 1002.0  # the timer of the first call fires: the second one goes on
    await _turns()
    assert not task.done()
    assert timers == [1002.0, 1003.0]  # armed again, for the call in flight
    clock.now = 1003.0
    with pytest.raises(TimeoutError):
        await task


async def test_calls_one_after_another_share_one_timer(timers: list[float]) -> None:
    deadline = Deadlines(30.0)
    for _ in range(100):
        with deadline.start():
            await asyncio.sleep(0)
    assert len(timers) == 1
    deadline.close()


async def test_a_call_that_ends_in_time_is_left_alone(clock: Clock) -> None:
    deadline = Deadlines(2.0)

    async def call() -> str:
        with deadline.start():
            await asyncio.sleep(0)
        return "done"

    assert await call() == "done"
    clock.now = 1005.0  # the timer fires with no call in flight
    await _turns()
    assert await call() == "done"


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(clock: Clock) -> None:
    deadline = Deadlines(2.0)
    hung = asyncio.Event()

    async def call() -> None:
        with deadline.start():
            await hung.wait()

    task = asyncio.create_task(call())
    await _turns()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The deadline is free again: the next call is capped as usual.
    clock.now = 1001.0
    task = asyncio.create_task(call())
    await _turns()
    clock.now = 1003.0
    with pytest.raises(TimeoutError):
        await task


async def test_a_cancellation_from_elsewhere_after_the_expiry_stays_one(clock: Clock) -> None:
    deadline = Deadlines(2.0)

    async def call() -> None:
        with deadline.start():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                # Someone else cancels too while the block still runs (as asyncio.timeout).
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                await asyncio.sleep(0)

    task = asyncio.create_task(call())
    await _turns()
    clock.now = 1002.0
    with pytest.raises(asyncio.CancelledError):
        await task
