"""A free slot of a system's concurrency limit taken without ``acquire`` when nobody waits: the
slot is held while the attempt is on the wire and given back after it, callers that find
none free still queue behind those already waiting (first come, first served), wait at most
``queue_timeout``, and a semaphore of another kind is asked through its methods."""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Literal

import pytest

from gateway.adapter import Call, FakeAdapter, Reply
from gateway.breaker import CircuitBreaker
from gateway.errors import SystemBusy
from gateway.pipeline import CallTrace, Next, SystemRuntime, _plain_semaphore, build_stack
from tests.calls import CONTEXT
from tests.unit.test_pipeline import Waits, system


class _Gate:
    """An adapter's handler: each call waits for its own release, and says what it saw."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.entered: list[str] = []
        self.free_seen: list[int] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def __call__(self, call: Call) -> Reply:
        name = str(call.payload["name"])
        self.entered.append(name)
        self.free_seen.append(self.slots._value)
        gate = self.gates.setdefault(name, asyncio.Event())
        await gate.wait()
        return Reply({"name": name})

    def release(self, name: str) -> None:
        self.gates.setdefault(name, asyncio.Event()).set()


def _stack(slots: asyncio.Semaphore, gate: _Gate, **overrides: Any) -> Next:
    settings = system(timeouts={"attempt": 5, "deadline": 10}, **overrides)
    breaker = CircuitBreaker("sys", failure_threshold=5, reset_timeout=30)
    runtime = SystemRuntime("sys", settings, FakeAdapter(gate), breaker, slots)
    return build_stack(runtime, policy="safe", sleep=Waits())


def _call(stack: Next, name: str) -> asyncio.Task[Reply]:
    return asyncio.ensure_future(stack(Call("op", {"name": name}, CONTEXT), CallTrace()))


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_free_slot_is_held_during_the_attempt_and_given_back() -> None:
    slots = asyncio.Semaphore(3)
    assert _plain_semaphore(slots)
    gate = _Gate(slots)
    stack = _stack(slots, gate)
    first, second = _call(stack, "a"), _call(stack, "b")
    await _turns()
    assert gate.free_seen == [2, 1]
    gate.release("a")
    gate.release("b")
    assert (await first).data == {"name": "a"}
    assert (await second).data == {"name": "b"}
    assert slots._value == 3
    assert not slots.locked()


async def test_a_free_slot_someone_was_woken_for_is_left_to_them() -> None:
    """Between a release and the woken waiter's turn, the slot is free but its waiter still in
    the queue: a caller arriving then waits (``locked()`` says so), as before."""
    slots = asyncio.Semaphore(1)
    gate = _Gate(slots)
    stack = _stack(slots, gate, queue_timeout=0.05)
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    woken.set_result(None)  # released to it, not yet run
    slots._waiters = collections.deque([woken])
    assert slots.locked()
    with pytest.raises(SystemBusy):
        await _call(stack, "c")
    assert gate.entered == []
    assert slots._value == 1
    slots._waiters.clear()
    gate.release("d")
    assert (await _call(stack, "d")).data == {"name": "d"}
    assert gate.free_seen == [0]


async def test_no_free_slot_within_the_queue_timeout_is_system_busy() -> None:
    slots = asyncio.Semaphore(1)
    gate = _Gate(slots)
    stack = _stack(slots, gate, queue_timeout=0.01)
    holder = _call(stack, "a")
    await _turns()
    with pytest.raises(SystemBusy):
        await _call(stack, "b")
    gate.release("a")
    await holder
    assert slots._value == 1
    assert not slots._waiters


async def test_a_cancelled_waiter_does_not_keep_a_free_slot_from_a_caller() -> None:
    slots = asyncio.Semaphore(1)
    gate = _Gate(slots)
    stack = _stack(slots, gate, queue_timeout=5)
    holder = _call(stack, "a")
    await _turns()
    waiting = _call(stack, "b")
    await _turns()
    waiting.cancel()
    gate.release("a")
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.release("c")
    assert (await _call(stack, "c")).data == {"name": "c"}
    assert slots._value == 1


class _Counted(asyncio.Semaphore):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.acquired = 0

    async def acquire(self) -> Literal[True]:
        self.acquired += 1
        return await super().acquire()


async def test_a_semaphore_of_another_kind_is_asked_through_its_methods() -> None:
    slots = _Counted(2)
    assert not _plain_semaphore(slots)
    gate = _Gate(slots)
    gate.release("a")
    await _stack(slots, gate)(Call("op", {"name": "a"}, CONTEXT), CallTrace())
    assert slots.acquired == 1
    assert slots._value == 2


async def test_a_slot_given_back_wakes_the_first_waiter() -> None:
    slots = asyncio.Semaphore(1)
    gate = _Gate(slots)
    stack = _stack(slots, gate, queue_timeout=5)
    calls = [_call(stack, name) for name in ("a", "b", "c")]
    await _turns()
    assert gate.entered == ["a"]
    gate.release("a")
    await calls[0]
    await _turns()
    assert gate.entered == ["a", "b"]
    gate.release("b")
    gate.release("c")
    await asyncio.gather(*calls)
    assert gate.entered == ["a", "b", "c"]
    assert slots._value == 1
    assert not slots._waiters
