"""The audit writer's bell: ``asyncio.Event``'s behaviour for its one waiter, on the kept loop."""

from __future__ import annotations

import asyncio

import pytest

from gateway.event_loop import Bell, KeptLoop


async def test_a_rung_bell_is_not_waited_for_and_a_waiter_wakes_when_it_rings() -> None:
    bell = Bell(KeptLoop())
    bell.set()
    assert bell.is_set()
    await bell.wait()  # at once
    bell.clear()
    assert not bell.is_set()
    waiter = asyncio.ensure_future(bell.wait())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    bell.set()
    bell.set()  # twice: as once
    await asyncio.wait_for(waiter, 30)
    assert bell.is_set()


async def test_a_bell_has_one_waiter_and_a_cancelled_one_leaves_it_usable() -> None:
    bell = Bell(KeptLoop())
    first = asyncio.ensure_future(bell.wait())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await bell.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    again = asyncio.ensure_future(bell.wait())
    await asyncio.sleep(0)
    bell.set()
    await asyncio.wait_for(again, 30)


async def test_the_bell_does_not_ask_for_the_running_loop_at_each_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11 makes a system call of every such question; the kept loop answers."""
    loop = KeptLoop()
    bell = Bell(loop)
    loop()  # kept from here
    asked: list[int] = []
    real, real_inner = asyncio.get_running_loop, asyncio.events._get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        asked.append(1)
        return real()

    def counted_inner() -> asyncio.AbstractEventLoop | None:
        asked.append(1)
        return real_inner()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    monkeypatch.setattr(asyncio.events, "_get_running_loop", counted_inner)
    event = asyncio.Event()  # what the bell replaces: it asks at each wait
    asyncio.get_event_loop().call_soon(event.set)
    await event.wait()
    assert asked
    asked.clear()
    for _ in range(3):
        bell.clear()
        loop().call_soon(bell.set)
        await bell.wait()
    assert asked == []
