"""The request body written at once, not in a task of its own, on Python before 3.12.

aiohttp's client writes a request's body in a task (``ClientRequest.write_bytes``). From Python
3.12 on it starts that task eagerly: the task's first step runs at once, and a body that fits
in the socket's buffer (every JSON or SOAP call of the gateway) is written, headers and body in
one ``send``, before ``ClientRequest.send`` returns; no task is left. On Python 3.11 there are
no eager tasks: the body waits for the loop's next turn, and the finished task wakes the loop
once more for its done-callbacks. Two turns of the loop per outbound call, for nothing.

``EagerBodyRequest`` gives 3.11 what aiohttp does on 3.12: while its ``send`` runs, the loop's
task factory starts ``write_bytes`` eagerly (``eager_task``). The bytes sent, their order and
aiohttp's handling of a failed write are those of aiohttp on Python 3.12; a body that does not
fit at once (a write that must wait for the socket to drain) goes on in a task from where it
stopped, as a 3.12 eager task does.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from typing import Any, Final

import aiohttp

from adapters.outbound_request import OutboundRequest

EAGER_NEEDED: Final = sys.version_info < (3, 12)
"""Whether ``EagerBodyRequest`` changes anything (Python 3.12 and later: aiohttp does it)."""

_WRITE_BYTES: Final = aiohttp.ClientRequest.write_bytes.__code__


class _Pending:
    """Awaitable that hands the future a coroutine was blocked on to the task running it."""

    __slots__ = ("future",)

    def __init__(self, future: Any) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.future)


async def _go_on(coro: Coroutine[Any, Any, Any], blocked_on: Any) -> Any:
    """The rest of ``coro``, already started and blocked on ``blocked_on``, inside a task: what
    the task sends or throws in reaches ``coro`` as if the task had run it from its start."""
    while True:
        try:
            sent = await _Pending(blocked_on)
        except BaseException as exc:  # every exception goes to the coroutine
            try:
                blocked_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            blocked_on = coro.send(sent)
        except StopIteration as stop:
            return stop.value


def eager_task(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
) -> asyncio.Future[Any]:
    """Task factory: aiohttp's body writer runs its first step now; a finished one is a done
    future (aiohttp keeps no writer then), an unfinished one goes on in a task. Any other
    coroutine becomes an ordinary task."""
    if getattr(coro, "cr_code", None) is not _WRITE_BYTES:
        return asyncio.Task(coro, loop=loop, **kwargs)
    try:
        blocked_on = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[Any] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise  # a task lets these through too
    except BaseException as exc:  # kept in the future, as a task keeps it
        failed: asyncio.Future[Any] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        return failed
    return asyncio.Task(_go_on(coro, blocked_on), loop=loop, **kwargs)


class EagerBodyRequest(OutboundRequest):
    """``ClientRequest`` whose body writer starts eagerly (see the module's text), its headers
    copied once (``adapters/outbound_request.py``)."""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        loop = self.loop
        previous = loop.get_task_factory()
        if previous is not None:  # somebody else's factory: leave the loop as it is
            return await super().send(conn)
        # typeshed types a factory as generic in its result; this one returns Future[Any].
        loop.set_task_factory(eager_task)  # type: ignore[arg-type]
        try:
            return await super().send(conn)
        finally:
            loop.set_task_factory(None)


REQUEST_CLASS: Final[type[aiohttp.ClientRequest]] = (
    EagerBodyRequest if EAGER_NEEDED else OutboundRequest
)
"""The request class of the adapters' sessions on this Python."""
