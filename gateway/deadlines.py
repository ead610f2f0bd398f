"""Deadlines of equal length that share one loop timer.

Many awaits in the gateway are capped by the same number of seconds each time they run: one
system's attempts (``timeouts.attempt``), the audit writer's store calls (``commit_timeout``).
Started one after another, such deadlines fall due in the order they were started, so one loop
timer, armed for the earliest, serves them all. ``asyncio.timeout`` would arm and cancel a
timer per block instead: in asyncio each is a handle with a copy of the context, a place in the
loop's heap kept after its cancellation until it is due, and Python-level comparisons for every
push and pop. The rules inside a block are ``asyncio.timeout``'s.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType

from gateway.event_loop import KeptLoop


class Deadline:
    """One block's hard cap: ``asyncio.timeout``'s rules, from a shared ``Deadlines``. On
    leaving, if the deadline passed, the cancellation it asked for is taken back
    (``uncancel``), and when no other cancellation is pending the ``CancelledError`` it caused
    becomes ``TimeoutError``. A cancellation from elsewhere (the client gone, the server
    stopping) stays a cancellation."""

    __slots__ = ("_cancelling", "_expired", "_left", "_owner", "_task", "when")

    def __init__(self, owner: Deadlines, when: float, task: asyncio.Task[object]) -> None:
        self._owner = owner
        self.when = when
        self._task: asyncio.Task[object] | None = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._left = False

    def _expire(self) -> None:
        task = self._task
        if task is not None and not self._left:
            self._expired = True
            task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None  # a left deadline holds no task
        self._left = True
        # Dropped from the front of the owner's queue, with the left ones behind it; when a
        # slow block at the front holds the queue back, the left ones are dropped from all of it.
        owner = self._owner
        owner._open -= 1
        queue = owner._queue
        while queue and queue[0]._left:
            queue.popleft()
        if len(queue) > 2 * owner._open + 64:
            owner._queue = collections.deque(d for d in queue if not d._left)
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise TimeoutError from exc

    @property
    def left(self) -> bool:
        return self._left

    @property
    def expired(self) -> bool:
        """Whether the deadline passed while the block ran."""
        return self._expired


class Deadlines:
    """Deadlines that are all ``seconds`` long (one system's attempts, the audit writer's store
    calls). The timer, when it fires, expires the deadlines due by then and is armed again for
    the next one still open; deadlines left before it fires are dropped from the front of the
    queue as they leave, or when the queue grows past twice the open ones.

    ``with deadlines.start():`` caps the block at ``seconds`` from now; ``close()`` cancels the
    timer when nothing will be started again."""

    __slots__ = ("_kept", "_loop", "_open", "_queue", "_seconds", "_timer")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._queue: collections.deque[Deadline] = collections.deque()
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._kept = KeptLoop(now=True)
        """The running loop, asked for once (``KeptLoop``: on Python 3.11 each
        ``asyncio.get_running_loop()`` is a ``getpid`` system call, and a deadline starts at
        every attempt and every audit store call): now, when made on a running loop (the audit
        writer's are), else at the first ``start``."""

    def start(self) -> Deadline:
        loop = self._loop
        # The loop of the deadlines started so far, while a task of it is current: this one's
        # loop (one loop runs in a thread at a time), without asking which loop runs.
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None:
            loop = self._kept()
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("a deadline must be started inside a task")
            if loop is not self._loop:
                # Deadlines of another loop (a closed one: tests, a restarted server) are stale.
                self._loop, self._timer, self._open = loop, None, 0
                self._queue.clear()
        assert loop is not None
        deadline = Deadline(self, loop.time() + self._seconds, task)
        self._queue.append(deadline)
        self._open += 1
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._fire, deadline.when)
        return deadline

    def _fire(self, due: float) -> None:
        self._timer = None
        queue = self._queue
        while queue:
            head = queue[0]
            if head.left:
                queue.popleft()
            elif head.when <= due:
                queue.popleft()
                head._expire()
            else:
                assert self._loop is not None
                self._timer = self._loop.call_at(head.when, self._fire, head.when)
                return

    def close(self) -> None:
        """Cancel the timer (the owner stops; a block still open is no longer capped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
