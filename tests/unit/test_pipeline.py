from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.adapter import Call, FakeAdapter, Reply
from gateway.breaker import CircuitBreaker
from gateway.deadlines import Deadlines
from gateway.errors import (
    BackendError,
    BackendFault,
    BackendRateLimited,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    CircuitOpen,
    SystemBusy,
)
from gateway.pipeline import CallTrace, Next, SystemRuntime, build_stack
from gateway.settings import RetryPolicy, SystemSettings
from tests.calls import CONTEXT


class Waits:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def system(**overrides: object) -> SystemSettings:
    data: dict[str, object] = {
        "name": {"zh": "测试", "en": "Test"},
        "province": "61",
        "protocol": "rest",
        "address": "http://127.0.0.1:1",
        "retry": {
            "max_attempts": 3,
            "initial_backoff": 0.1,
            "max_backoff": 1,
            "jitter": 0,
            "max_retry_after": 5,
        },
        "breaker": {"failure_threshold": 5, "reset_timeout": 30},
        "timeouts": {"attempt": 0.2, "deadline": 10},
    }
    data.update(overrides)
    return SystemSettings.model_validate(data)


def failing(*errors: BackendError) -> Callable[[Call], Reply]:
    queue = list(errors)

    def handler(call: Call) -> Reply:
        if queue:
            raise queue.pop(0)
        return Reply({"ok": True})

    return handler


def stack_for(
    adapter: FakeAdapter,
    policy: RetryPolicy,
    sleep: Waits,
    settings: SystemSettings | None = None,
    breaker: CircuitBreaker | None = None,
    slots: int = 4,
) -> Next:
    settings = settings or system()
    runtime = SystemRuntime(
        "sys",
        settings,
        adapter,
        breaker
        or CircuitBreaker(
            "sys",
            failure_threshold=settings.breaker.failure_threshold,
            reset_timeout=settings.breaker.reset_timeout,
        ),
        asyncio.Semaphore(slots),
    )
    return build_stack(runtime, policy=policy, sleep=sleep)


async def test_safe_operation_retries_server_errors_until_success() -> None:
    adapter = FakeAdapter(
        failing(BackendServerError(reached_backend=True), BackendServerError(reached_backend=True))
    )
    waits = Waits()
    trace = CallTrace()
    reply = await stack_for(adapter, "safe", waits)(Call("op", {}, CONTEXT), trace)
    assert reply.data == {"ok": True}
    assert trace.attempts == 3
    assert len(adapter.calls) == 3
    assert waits.waits == [pytest.approx(0.1), pytest.approx(0.2)]


async def test_attempt_cap_is_respected() -> None:
    adapter = FakeAdapter(failing(*[BackendServerError(reached_backend=True)] * 5))
    trace = CallTrace()
    with pytest.raises(BackendServerError):
        await stack_for(adapter, "safe", Waits())(Call("op", {}, CONTEXT), trace)
    assert trace.attempts == 3


async def test_never_policy_does_not_resend_what_may_have_been_processed() -> None:
    adapter = FakeAdapter(failing(BackendTimeout(reached_backend=True)))
    trace = CallTrace()
    with pytest.raises(BackendTimeout):
        await stack_for(adapter, "never", Waits())(Call("op", {}, CONTEXT), trace)
    assert len(adapter.calls) == 1


async def test_never_policy_retries_what_never_left() -> None:
    adapter = FakeAdapter(failing(BackendUnavailable(reached_backend=False)))
    trace = CallTrace()
    await stack_for(adapter, "never", Waits())(Call("op", {}, CONTEXT), trace)
    assert trace.attempts == 2


@pytest.mark.parametrize(
    "error",
    [BackendRejected(reached_backend=True), BackendFault(fault_side="client")],
)
async def test_refusals_are_not_retried(error: BackendError) -> None:
    adapter = FakeAdapter(failing(error))
    with pytest.raises(type(error)):
        await stack_for(adapter, "safe", Waits())(Call("op", {}, CONTEXT), CallTrace())
    assert len(adapter.calls) == 1


async def test_retry_after_is_honoured_and_too_long_fails_at_once() -> None:
    waits = Waits()
    adapter = FakeAdapter(failing(BackendRateLimited(reached_backend=True, retry_after=2.5)))
    await stack_for(adapter, "safe", waits)(Call("op", {}, CONTEXT), CallTrace())
    assert waits.waits == [2.5]

    adapter = FakeAdapter(failing(BackendRateLimited(reached_backend=True, retry_after=60)))
    with pytest.raises(BackendRateLimited):
        await stack_for(adapter, "safe", Waits())(Call("op", {}, CONTEXT), CallTrace())
    assert len(adapter.calls) == 1


async def test_deadline_stops_retrying() -> None:
    settings = system(
        retry={"max_attempts": 10, "initial_backoff": 4, "max_backoff": 4, "jitter": 0},
        timeouts={"attempt": 0.2, "deadline": 1},
    )
    adapter = FakeAdapter(failing(*[BackendServerError(reached_backend=True)] * 10))
    with pytest.raises(BackendServerError):
        await stack_for(adapter, "safe", Waits(), settings)(Call("op", {}, CONTEXT), CallTrace())
    assert len(adapter.calls) == 1


async def test_attempt_timeout_becomes_backend_timeout() -> None:
    async def slow(call: Call) -> Reply:
        await asyncio.sleep(5)
        return Reply({})

    trace = CallTrace()
    with pytest.raises(BackendTimeout) as info:
        await stack_for(FakeAdapter(slow), "never", Waits())(Call("op", {}, CONTEXT), trace)
    assert info.value.reached_backend is True
    assert trace.attempts == 1


async def test_attempt_deadline_turns_its_own_expiry_into_timeout_error() -> None:
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(TimeoutError), Deadlines(0.01).start() as deadline:
        await asyncio.sleep(5)
    assert deadline.expired
    # The cancellation it caused is taken back: the task carries on as if never cancelled.
    assert task.cancelling() == 0
    await asyncio.sleep(0)


async def test_attempt_deadline_lets_another_cancellation_through() -> None:
    entered = asyncio.Event()

    async def attempt() -> None:
        with Deadlines(5).start():
            entered.set()
            await asyncio.sleep(5)

    running = asyncio.ensure_future(attempt())
    await entered.wait()
    running.cancel()  # the client gone, the server stopping: not a timeout
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_attempt_deadline_cancelled_from_outside_after_expiry_stays_cancelled() -> None:
    # Both at once (the deadline fired and the task was cancelled by someone else too): the
    # other cancellation wins, as with asyncio.timeout.
    async def attempt() -> None:
        with Deadlines(0.01).start():
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(attempt())


async def test_shared_deadlines_each_cap_their_own_attempt() -> None:
    # Attempts of one system share one timer; each still ends at its own deadline, in the
    # order they started, and an attempt that ended in time is never cancelled.
    deadlines = Deadlines(0.2)
    ended: list[str] = []

    async def attempt(name: str, started: asyncio.Event, finish: bool) -> None:
        try:
            with deadlines.start():
                started.set()
                await asyncio.sleep(0 if finish else 5)
            ended.append(f"{name} done")
        except TimeoutError:
            ended.append(f"{name} timed out")

    running = []
    for name, finish in (("a", False), ("b", True), ("c", False), ("d", True)):
        started = asyncio.Event()
        running.append(asyncio.ensure_future(attempt(name, started, finish)))
        await started.wait()  # each starts after the one before
    await asyncio.gather(*running)
    assert ended == ["b done", "d done", "a timed out", "c timed out"]
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_shared_deadlines_forget_attempts_that_ended() -> None:
    deadlines = Deadlines(60)
    for _ in range(500):
        with deadlines.start():
            await asyncio.sleep(0)
    slow = deadlines.start()  # one attempt still open at the front holds the queue back
    for _ in range(500):
        with deadlines.start():
            await asyncio.sleep(0)
    assert len(deadlines._queue) <= 64 + 2
    slow.__exit__(None, None, None)


async def test_breaker_opens_and_then_fails_fast_without_calling() -> None:
    settings = system(
        breaker={"failure_threshold": 2, "reset_timeout": 30}, retry={"max_attempts": 1}
    )
    adapter = FakeAdapter(failing(*[BackendServerError(reached_backend=True)] * 5))
    stack = stack_for(adapter, "safe", Waits(), settings)
    for _ in range(2):
        with pytest.raises(BackendServerError):
            await stack(Call("op", {}, CONTEXT), CallTrace())
    trace = CallTrace()
    with pytest.raises(CircuitOpen):
        await stack(Call("op", {}, CONTEXT), trace)
    assert len(adapter.calls) == 2
    assert trace.breaker_state == "open"


async def test_concurrency_limit_refuses_when_no_slot_frees_in_time() -> None:
    release = asyncio.Event()

    async def held(call: Call) -> Reply:
        await release.wait()
        return Reply({})

    settings = system(concurrency_limit=1, queue_timeout=0.05, timeouts={"attempt": 5})
    stack = stack_for(FakeAdapter(held), "safe", Waits(), settings, slots=1)
    first = asyncio.ensure_future(stack(Call("op", {}, CONTEXT), CallTrace()))
    await asyncio.sleep(0.01)
    with pytest.raises(SystemBusy):
        await stack(Call("op", {}, CONTEXT), CallTrace())
    release.set()
    await first


async def test_a_call_refused_on_every_attempt_never_reached_the_back_end() -> None:
    adapter = FakeAdapter(failing(*[BackendUnavailable(reached_backend=False)] * 3))
    trace = CallTrace()
    with pytest.raises(BackendUnavailable):
        await stack_for(adapter, "safe", Waits())(Call("op", {}, CONTEXT), trace)
    assert trace.attempts == 3
    assert trace.reached is False


async def test_one_attempt_that_may_have_reached_the_back_end_marks_the_call() -> None:
    # A server error first (the request may have been processed), then refusals: reached.
    adapter = FakeAdapter(
        failing(
            BackendServerError(reached_backend=True),
            BackendUnavailable(reached_backend=False),
            BackendUnavailable(reached_backend=False),
        )
    )
    trace = CallTrace()
    with pytest.raises(BackendUnavailable):
        await stack_for(adapter, "safe", Waits())(Call("op", {}, CONTEXT), trace)
    assert trace.attempts == 3
    assert trace.reached is True


async def test_an_answered_call_reached_the_back_end_and_an_open_circuit_did_not() -> None:
    trace = CallTrace()
    await stack_for(FakeAdapter(failing()), "safe", Waits())(Call("op", {}, CONTEXT), trace)
    assert trace.reached is True
    breaker = CircuitBreaker("sys", failure_threshold=1, reset_timeout=60)
    breaker.record_failure("test")
    refused = CallTrace()
    with pytest.raises(CircuitOpen):
        await stack_for(FakeAdapter(failing()), "safe", Waits(), breaker=breaker)(
            Call("op", {}, CONTEXT), refused
        )
    assert refused.reached is False
