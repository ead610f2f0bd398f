"""Which event loop a server process runs on: asyncio's own, or uvloop.

``server.event_loop`` in gateway.yaml: ``asyncio`` (the default) keeps the standard library's
loop; ``uvloop`` insists on uvloop (a start-up without it fails with one plain message);
``auto`` takes uvloop when it can be imported and asyncio's loop otherwise. uvloop runs the
same coroutines (aiohttp, aiosqlite's threads, asyncpg, signal handlers); it is not the default
because it measured no lower CPU per routed call on this gateway than asyncio's loop
(docs/performance.md has the figures).

The choice has to be made before the loop exists, so before the configuration is loaded
inside it: ``configured_choice`` reads only that one key of gateway.yaml, and leaves every
judgement of the file (unreadable, invalid value) to the full load that follows, which reports
it the usual way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
CHOICES: tuple[str, ...] = get_args(EventLoopChoice)
DEFAULT: EventLoopChoice = "asyncio"
"""The loop when gateway.yaml names none (ServerSettings.event_loop's default)."""

T = TypeVar("T")


class KeptLoop:
    """The running event loop, asked for once and kept while it runs: on Python 3.11 every
    ``asyncio.get_running_loop()`` is a ``getpid`` system call, and an object that schedules on
    its loop at every call (the audit writer, admission's delay probe, the rate-limit file's
    draws) would make several per routed call. A loop that has stopped is not kept: the next
    call asks again (a test's new loop, a restarted server's). Only for objects used on their
    loop's thread: a loop running in another thread would pass for this one's."""

    __slots__ = ("_loop",)

    def __init__(self, *, now: bool = False) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        if now:  # made on its loop: keep it from the start (none running: at the first call)
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop


class Bell:
    """``asyncio.Event`` for one waiter on a ``KeptLoop``'s loop: ``set``, ``clear``,
    ``is_set`` and ``wait`` as the event's. The event asks for the running loop at every
    ``wait`` (a ``getpid`` system call on Python 3.11) and keeps a queue of waiters; a task that
    sleeps on its bell between every piece of work (the audit writer) needs neither. Only one
    task may wait at a time (a second ``wait`` meanwhile raises ``RuntimeError``)."""

    __slots__ = ("_loop", "_rung", "_waiter")

    def __init__(self, loop: KeptLoop) -> None:
        self._loop = loop
        self._rung = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._rung

    def set(self) -> None:
        if self._rung:
            return
        self._rung = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._rung = False

    async def wait(self) -> None:
        if self._rung:
            return
        if self._waiter is not None:
            raise RuntimeError("a bell has one waiter")
        waiter = self._waiter = self._loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class EventLoopUnavailable(RuntimeError):
    """``event_loop: uvloop`` was asked for and uvloop is not installed."""


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> Literal["uvloop", "asyncio"]:
    """The loop ``choice`` means on this installation."""
    if choice == "asyncio":
        return "asyncio"
    if choice == "uvloop":
        if not uvloop_installed():
            raise EventLoopUnavailable(
                "server.event_loop is uvloop but uvloop is not installed "
                "(pip install uvloop, or set event_loop: asyncio or auto)"
            )
        return "uvloop"
    return "uvloop" if uvloop_installed() else "asyncio"


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of the kind ``choice`` resolves to."""
    if resolve(choice) == "uvloop":
        import uvloop  # noqa: PLC0415 - optional

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T], choice: str = DEFAULT) -> T:
    """``asyncio.run`` on the loop ``choice`` resolves to."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        coro.close()  # never awaited: say so quietly instead of a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def configured_choice(config_dir: Path) -> str:
    """``server.event_loop`` of ``config_dir``/gateway.yaml, or the default when it is not set
    or cannot be read here (the full configuration load reports what is wrong with it)."""
    try:
        data = yaml.safe_load((config_dir / "gateway.yaml").read_text("utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError):
        return DEFAULT
    server = data.get("server") if isinstance(data, dict) else None
    choice = server.get("event_loop") if isinstance(server, dict) else None
    return choice if isinstance(choice, str) and choice in CHOICES else DEFAULT
