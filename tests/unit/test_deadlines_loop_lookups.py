"""Shared deadlines ask for their event loop once, not per block.

On Python 3.11 every ``asyncio.get_running_loop()`` is a ``getpid`` system call, and a deadline
starts at every attempt of a routed call (``timeouts.attempt``) and at every store call of the
audit writer. ``Deadlines`` keeps the loop it found (``KeptLoop``). What must hold: after the
first block, further blocks ask for no loop, and still expire on time; on a new loop (a test's,
a restarted server's) the stale deadlines are dropped and the new loop is found.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway import deadlines as deadlines_module
from gateway.deadlines import Deadlines
from tests.loop_lookups import CountingAsyncio, count_loop_lookups


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingAsyncio:
    return count_loop_lookups(monkeypatch, deadlines_module)


async def test_blocks_after_the_first_ask_for_no_loop(counting: CountingAsyncio) -> None:
    deadlines = Deadlines(5.0)  # made on the running loop: keeps it from the start
    assert counting.lookups == 1
    with deadlines.start():
        await asyncio.sleep(0)
    first = counting.lookups
    assert first == 1

    async def block() -> None:
        with deadlines.start():
            await asyncio.sleep(0)

    await asyncio.gather(*(block() for _ in range(20)))
    for _ in range(5):
        await block()
    assert counting.lookups == first
    deadlines.close()


async def test_a_kept_loop_still_expires_a_block(counting: CountingAsyncio) -> None:
    deadlines = Deadlines(0.01)
    with deadlines.start():
        pass
    with pytest.raises(TimeoutError), deadlines.start():
        await asyncio.sleep(10)
    assert counting.lookups == 1
    deadlines.close()


def test_a_new_loop_is_found_and_stale_deadlines_dropped(counting: CountingAsyncio) -> None:
    deadlines = Deadlines(0.01)  # made with no loop running: it finds one at its first start
    made = counting.lookups

    async def expired() -> None:
        with pytest.raises(TimeoutError), deadlines.start():
            await asyncio.sleep(10)

    asyncio.run(expired())
    asyncio.run(expired())  # the first loop is closed: the second is asked for, and works
    assert counting.lookups == made + 2
