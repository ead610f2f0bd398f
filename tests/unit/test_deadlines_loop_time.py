"""A deadline falls due ``seconds`` after its start on its loop's own clock (``loop.time()``:
asyncio's, or another a loop keeps), on a loop found again after another; and none is started
outside a task, even once the deadlines know their loop (they then look for the current task
of that loop without asking which loop runs)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.deadlines import Deadlines


class _ShiftedLoop(asyncio.SelectorEventLoop):
    """A loop whose clock runs an hour ahead of ``time.monotonic()``."""

    def time(self) -> float:
        return time.monotonic() + 3600.0


def _run(factory: type[asyncio.AbstractEventLoop] | None, deadlines: Deadlines) -> None:
    async def check() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            before = loop.time()
            with deadlines.start() as deadline:
                after = loop.time()
                assert before + 0.05 <= deadline.when <= after + 0.05
        with pytest.raises(TimeoutError), deadlines.start():
            await asyncio.sleep(5)

        # A callback of the loop is no task: refused, though the deadlines know this loop.
        refused: list[BaseException] = []

        def callback() -> None:
            try:
                deadlines.start()
            except RuntimeError as exc:
                refused.append(exc)

        loop.call_soon(callback)
        await asyncio.sleep(0)
        assert len(refused) == 1

    if factory is None:
        asyncio.run(check())
    else:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(check())


@pytest.mark.parametrize(
    "factories",
    [(None, _ShiftedLoop), (_ShiftedLoop, None), (None, None), (_ShiftedLoop, _ShiftedLoop)],
)
def test_a_deadline_falls_due_on_its_loop_s_clock(
    factories: tuple[type[asyncio.AbstractEventLoop] | None, ...],
) -> None:
    deadlines = Deadlines(0.05)
    for factory in factories:
        _run(factory, deadlines)
    deadlines.close()
