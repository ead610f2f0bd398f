"""The per-route call stack, assembled once at start-up from configuration, one line per layer.

    audit → retry → circuit breaker → concurrency limit → per-attempt timeout → adapter

Each layer is a plain async function wrapping the next (KrakenD's ``newStack`` shape), except
that the three layers of one attempt (breaker, limit, timeout) are one coroutine
(``one_attempt``): fewer frames for the call's task to be resumed through. A ``CallTrace``
travels with the call and records what the layers did, for metrics and audit. This module
never imports aiohttp and never reads configuration at call time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from gateway.adapter import Adapter, Call, Reply
from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.deadlines import Deadlines
from gateway.errors import (
    BackendError,
    BackendFault,
    BackendRejected,
    BackendTimeout,
    CircuitOpen,
    GatewayError,
    SystemBusy,
    is_retryable,
)
from gateway.settings import RetryPolicy, RetrySettings, SystemSettings

Sleep = Callable[[float], Awaitable[None]]
_CLOSED = BreakerState.CLOSED.value


@dataclass(slots=True)
class CallTrace:
    """What happened to one call inside the stack; filled in by the layers."""

    attempts: int = 0
    reached: bool = False
    """Whether an attempt may have reached the back-end: set when an attempt hands its request
    to the adapter, and left as it was by one that certainly did not send it (a BackendError
    with ``reached_backend`` False: connection refused, ...). The circuit breaker's and the
    concurrency limit's refusals never get that far."""
    breaker_state: str = BreakerState.CLOSED.value
    error_code: str | None = None
    waits: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


Next = Callable[[Call, CallTrace], Awaitable[Reply]]


class CallObserver(Protocol):
    """Told about every retry; metrics implement it."""

    def retried(self, system: str, error_code: str) -> None: ...


@dataclass(slots=True)
class SystemRuntime:
    """Shared, long-lived state of one provincial system: its adapter, breaker and slots."""

    id: str
    settings: SystemSettings
    adapter: Adapter
    breaker: CircuitBreaker
    slots: asyncio.Semaphore


def is_refusal(error: BackendError) -> bool:
    """The system understood the request and refused it (4xx, a SOAP client fault): it is
    healthy, and it did not act on the request."""
    if isinstance(error, BackendRejected):
        return True
    return isinstance(error, BackendFault) and error.fault_side == "client"


def _counts_as_failure(error: BackendError) -> bool:
    return not is_refusal(error)


def failure_cause(error: BackendError) -> str:
    """What a failure was, for operators: the stable code and the error's safe detail; a paused
    call names the failure that paused the system instead of the pause itself."""
    if isinstance(error, CircuitOpen) and error.cause:
        return error.cause
    return f"{error.code}: {error.detail}"[:300]


def one_attempt(runtime: SystemRuntime) -> Next:
    """One attempt at the system, three layers in one coroutine (outermost first):

    - circuit breaker: a paused system is not called (CircuitOpen); the attempt's end is
      recorded (a failure, a success, or neither when it was cancelled);
    - concurrency limit: a slot of the system's ``concurrency_limit`` is held while the attempt
      is on the wire; with none free, the wait is capped at ``queue_timeout`` (SystemBusy);
    - per-attempt timeout: a hard cap on one attempt (the request may have reached the
      back-end when it fires), then the adapter.

    One coroutine rather than one per layer: the request's task is resumed through every frame
    on its stack each time it wakes, and these layers have nothing to do in between."""
    adapter, breaker, slots = runtime.adapter, runtime.breaker, runtime.slots
    seconds = runtime.settings.timeouts.attempt
    queue_timeout = runtime.settings.queue_timeout
    deadlines = Deadlines(seconds)
    plain = _plain_semaphore(slots)

    async def attempt(call: Call, trace: CallTrace) -> Reply:
        if not breaker.closed:  # a closed breaker admits every call: before_call returns
            try:
                breaker.before_call()
            except CircuitOpen:
                trace.breaker_state = breaker.state_value
                raise
        try:
            if plain and slots._value > 0 and not slots._waiters:
                # Free, nobody waiting: what acquire() takes at once (it asks locked() first,
                # as the branch below would, each a generator over the waiters).
                slots._value -= 1
            elif slots.locked():
                try:
                    async with asyncio.timeout(queue_timeout):
                        await slots.acquire()
                except TimeoutError:
                    raise SystemBusy(
                        "The provincial system's call limit is reached; try again."
                    ) from None
            else:
                # A free slot is taken without suspending: no queue timer to arm and cancel.
                await slots.acquire()
            reached_before, trace.reached = trace.reached, True  # the request may leave now
            try:
                with deadlines.start():
                    reply = await adapter.call(call)
            except TimeoutError:
                raise BackendTimeout(
                    f"No answer within {seconds:g} s.", reached_backend=True
                ) from None
            except BackendError as exc:
                if not exc.reached_backend:
                    trace.reached = reached_before  # this attempt certainly sent nothing
                raise
            finally:
                if plain and not slots._waiters:
                    slots._value += 1  # release() with nobody to wake
                else:
                    slots.release()
        except BackendError as exc:
            if _counts_as_failure(exc):
                breaker.record_failure(failure_cause(exc))
            else:
                breaker.record_success()
            raise
        except BaseException:
            breaker.record_neutral()
            raise
        else:
            # record_success, when it has something to change (a failure counted, not closed)
            if breaker._failures or not breaker.closed:
                breaker.record_success()
            return reply
        finally:
            # state_value, read without its property while closed (the closed state's value)
            trace.breaker_state = _CLOSED if breaker.closed else breaker.state_value

    return attempt


def _plain_semaphore(slots: asyncio.Semaphore) -> bool:
    """Whether ``slots`` is an ``asyncio.Semaphore`` keeping its free slots in ``_value`` and
    its waiters in ``_waiters`` (CPython's, 3.11 to 3.13): a free slot is then taken by
    ``_value -= 1`` when nobody waits, which is what ``acquire`` does when ``locked()`` is
    false and nobody waits, and given back by ``_value += 1``, which is what ``release`` does
    when nobody waits to be woken. Anything else (a subclass, another implementation) is
    asked through its methods."""
    return (
        type(slots) is asyncio.Semaphore
        and type(getattr(slots, "_value", None)) is int
        and hasattr(slots, "_waiters")
    )


def may_retry(error: BaseException, policy: RetryPolicy) -> bool:
    """Retry only what could succeed, and never resend what may have been processed."""
    if not is_retryable(error):
        return False
    assert isinstance(error, BackendError)
    if policy == "never":
        return not error.reached_backend
    return True


class _WaitHonouringRetryAfter(wait_base):
    """Exponential backoff with jitter, but never shorter than the back-end's Retry-After."""

    def __init__(self, backoff: wait_base) -> None:
        self._backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self._backoff(retry_state))
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, float(retry_after))
        return wait


class _StopWhenRetryAfterTooLong(stop_base):
    def __init__(self, limit: float) -> None:
        self._limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return retry_after is not None and float(retry_after) > self._limit


Retried = Callable[[Call, CallTrace, Exception, float], Awaitable[Reply]]
"""The attempts after a retryable first failure: the call, its trace, that failure and the
moment (``time.monotonic``) the first attempt started."""


def after_first_attempt(
    inner: Next,
    *,
    policy: RetryPolicy,
    settings: RetrySettings,
    deadline: float,
    system: str,
    sleep: Sleep,
    observer: CallObserver | None = None,
) -> Retried:
    """What ``with_retry`` does once the first attempt failed with an error ``may_retry``
    allows: tenacity takes over, replaying that failure as its attempt 1, so attempt numbers,
    waits, stop decisions and the deadline (shortened by the time attempt 1 took) are exactly
    those of a loop that ran tenacity from the start."""
    backoff = wait_exponential_jitter(
        multiplier=settings.initial_backoff, max=settings.max_backoff, jitter=settings.jitter
    )
    wait = _WaitHonouringRetryAfter(backoff)
    retry = retry_if_exception(lambda exc: may_retry(exc, policy))
    too_long = _StopWhenRetryAfterTooLong(settings.max_retry_after)
    max_attempts = stop_after_attempt(settings.max_attempts)

    async def retried(call: Call, trace: CallTrace, failure: Exception, started: float) -> Reply:
        first: BaseException | None = failure

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            code = getattr(error, "code", "unknown")
            trace.waits.append(state.upcoming_sleep)
            if observer is not None:
                observer.retried(system, code)

        retrying = AsyncRetrying(
            stop=(
                max_attempts | stop_before_delay(deadline - (time.monotonic() - started)) | too_long
            ),
            wait=wait,
            retry=retry,
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                trace.attempts = attempt.retry_state.attempt_number
                if first is not None:
                    replayed, first = first, None
                    raise replayed
                return await inner(call, trace)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    return retried


def with_retry(
    inner: Next,
    *,
    policy: RetryPolicy,
    settings: RetrySettings,
    deadline: float,
    system: str,
    sleep: Sleep,
    observer: CallObserver | None = None,
) -> Next:
    """Retry what ``may_retry`` allows, with backoff honouring Retry-After, within ``deadline``.

    The first attempt runs outside tenacity: most calls succeed or fail for good at once, and
    building an ``AsyncRetrying`` costs more than the rest of the stack. Only after a retryable
    first failure does tenacity take over (``after_first_attempt``).
    """
    rest = after_first_attempt(
        inner,
        policy=policy,
        settings=settings,
        deadline=deadline,
        system=system,
        sleep=sleep,
        observer=observer,
    )

    return _retried(inner, policy, rest)


def with_audit(inner: Next, auditor: CallAuditor, route: RouteAudit) -> Next:
    """Record the call before it can reach a back-end and its outcome after it (held for only
    when the service asks, gateway/audit/calls.py); a required request record that cannot be
    written stops the call (AuditUnavailable)."""

    async def audited(call: Call, trace: CallTrace) -> Reply:
        requested = await auditor.requested(call, route)
        try:
            reply = await inner(call, trace)
        except GatewayError as exc:
            outcome = CallOutcome(trace.attempts, trace.duration_ms, trace.breaker_state, exc.code)
            await auditor.completed(call, route, outcome, requested)
            raise
        outcome = CallOutcome(trace.attempts, trace.duration_ms, trace.breaker_state, reply=reply)
        await auditor.completed(call, route, outcome, requested)
        return reply

    return audited


def _audited_with_retry(
    attempt: Next, policy: RetryPolicy, rest: Retried, auditor: CallAuditor, route: RouteAudit
) -> Next:
    """``with_audit(with_retry(attempt, ...), ...)`` in one coroutine: the same records around
    the same attempts, one frame less on the call's stack (it is resumed through every frame
    each time the call wakes)."""

    async def audited(call: Call, trace: CallTrace) -> Reply:
        requested = await auditor.requested(call, route)
        try:
            started = time.monotonic()
            trace.attempts = 1
            failure: Exception | None = None
            try:
                reply = await attempt(call, trace)
            except Exception as exc:
                if not may_retry(exc, policy):
                    raise
                failure = exc
            if failure is not None:  # outside the except block, as with_retry: same chaining
                reply = await rest(call, trace, failure, started)
        except GatewayError as exc:
            outcome = CallOutcome(trace.attempts, trace.duration_ms, trace.breaker_state, exc.code)
            await auditor.completed(call, route, outcome, requested)
            raise
        outcome = CallOutcome(trace.attempts, trace.duration_ms, trace.breaker_state, reply=reply)
        await auditor.completed(call, route, outcome, requested)
        return reply

    return audited


def build_stack(
    runtime: SystemRuntime,
    *,
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
    observer: CallObserver | None = None,
    audit: tuple[CallAuditor, RouteAudit] | None = None,
) -> Next:
    """The stack for one route. Order matters: the breaker sees every attempt, the limit holds a
    slot only while an attempt is on the wire, and the timeout caps a single attempt. The audit
    layer is outermost (one pair of records per call, not per attempt); with it, the retry
    layer's first attempt runs in the audit layer's coroutine (``_audited_with_retry``)."""
    system = runtime.settings
    attempt = one_attempt(runtime)
    rest = after_first_attempt(
        attempt,
        policy=policy,
        settings=system.retry,
        deadline=system.timeouts.deadline,
        system=runtime.id,
        sleep=sleep,
        observer=observer,
    )
    if audit is not None:
        return _audited_with_retry(attempt, policy, rest, *audit)
    return _retried(attempt, policy, rest)


def _retried(attempt: Next, policy: RetryPolicy, rest: Retried) -> Next:
    async def retried(call: Call, trace: CallTrace) -> Reply:
        started = time.monotonic()
        trace.attempts = 1
        try:
            return await attempt(call, trace)
        except Exception as exc:
            if not may_retry(exc, policy):
                raise
            failure = exc
        return await rest(call, trace, failure, started)

    return retried
