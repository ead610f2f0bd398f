"""With the audit layer, ``build_stack`` runs the retry layer's first attempt in the audit
layer's coroutine. What it does must be exactly what the two layers do one inside the other
(``with_audit(with_retry(one_attempt(...)))``): the same records with the same outcomes, the
same attempts and waits, the same error raised, chained to the same error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gateway.adapter import Call, FakeAdapter, Reply
from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
from gateway.breaker import CircuitBreaker
from gateway.errors import (
    AuditUnavailable,
    BackendError,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
)
from gateway.pipeline import (
    CallTrace,
    Next,
    SystemRuntime,
    build_stack,
    one_attempt,
    with_audit,
    with_retry,
)
from gateway.settings import RetryPolicy
from tests.calls import CONTEXT
from tests.unit.test_pipeline import Waits, system

ROUTE = RouteAudit(
    service="svc", operation="op", system="sys", system_operation="op", mode="required"
)


class Auditor:
    """Records what the audit layer tells it; the request record may be refused."""

    def __init__(self, refuse_request: bool = False) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.refuse_request = refuse_request
        self.event: object | None = None

    async def requested(self, call: Call, route: RouteAudit) -> object:
        await asyncio.sleep(0)
        if self.refuse_request:
            raise AuditUnavailable("the store is down")
        self.seen.append(("requested", call.operation))
        self.event = object()  # what CallAuditor returns: the request's event
        return self.event

    async def completed(
        self, call: Call, route: RouteAudit, outcome: CallOutcome, requested: object = None
    ) -> None:
        await asyncio.sleep(0)
        reply = outcome.reply.data if outcome.reply is not None else None
        # The layer hands the outcome the event its request returned (its shared fields).
        assert requested is self.event
        self.seen.append(
            ("completed", outcome.attempts, outcome.breaker_state, outcome.error_code, reply)
        )


def _handler(script: list[BaseException | None]) -> Callable[[Call], Reply]:
    queue = list(script)

    def handle(call: Call) -> Reply:
        error = queue.pop(0) if queue else None
        if error is not None:
            raise error
        return Reply({"ok": True})

    return handle


def _runtime(script: list[BaseException | None]) -> tuple[SystemRuntime, FakeAdapter]:
    settings = system()
    adapter = FakeAdapter(_handler(script))
    breaker = CircuitBreaker("sys", failure_threshold=5, reset_timeout=30)
    return SystemRuntime("sys", settings, adapter, breaker, asyncio.Semaphore(4)), adapter


def _layered(runtime: SystemRuntime, policy: RetryPolicy, sleep: Waits, auditor: Any) -> Next:
    settings = runtime.settings
    retried = with_retry(
        one_attempt(runtime),
        policy=policy,
        settings=settings.retry,
        deadline=settings.timeouts.deadline,
        system=runtime.id,
        sleep=sleep,
    )
    return with_audit(retried, auditor, ROUTE)


def _fused(runtime: SystemRuntime, policy: RetryPolicy, sleep: Waits, auditor: Any) -> Next:
    return build_stack(runtime, policy=policy, sleep=sleep, audit=(auditor, ROUTE))


async def _run(make: Any, script: list[Any], policy: RetryPolicy, refuse: bool) -> Any:
    runtime, adapter = _runtime(script)
    auditor, waits, trace = Auditor(refuse), Waits(), CallTrace()
    stack = make(runtime, policy, waits, auditor)
    raised: tuple[Any, ...] | None = None
    try:
        reply: Any = (await stack(Call("op", {}, CONTEXT), trace)).data
    except Exception as exc:
        context = exc.__context__
        raised = (type(exc), str(exc), type(context) if context is not None else None)
        reply = None
    return {
        "reply": reply,
        "raised": raised,
        "records": auditor.seen,
        "attempts": trace.attempts,
        "reached": trace.reached,
        "waits": waits.waits,
        "breaker": trace.breaker_state,
        "sent": len(adapter.calls),
    }


SCRIPTS: dict[str, list[BaseException | None]] = {
    "ok": [None],
    "retried then ok": [BackendServerError(reached_backend=True), None],
    "every attempt fails": [BackendServerError(reached_backend=True)] * 5,
    "refused, not retried": [BackendRejected(reached_backend=True)],
    "timeout": [BackendTimeout(reached_backend=True), None],
    "nothing left": [BackendUnavailable(reached_backend=False), None],
    "not a gateway error": [RuntimeError("adapter bug")],
    "retried, then not a gateway error": [
        BackendServerError(reached_backend=True),
        RuntimeError("adapter bug"),
    ],
}


@pytest.mark.parametrize("policy", ["safe", "never", "idempotent-with-key"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
async def test_the_fused_stack_does_what_the_two_layers_do(name: str, policy: RetryPolicy) -> None:
    layered = await _run(_layered, SCRIPTS[name], policy, refuse=False)
    fused = await _run(_fused, SCRIPTS[name], policy, refuse=False)
    assert fused == layered


async def test_a_refused_request_record_stops_the_call_before_any_attempt() -> None:
    layered = await _run(_layered, [None], "safe", refuse=True)
    fused = await _run(_fused, [None], "safe", refuse=True)
    assert fused == layered
    assert fused["sent"] == 0
    assert fused["attempts"] == 0
    assert fused["records"] == []


async def test_it_can_fail_a_retried_call_is_recorded_once_with_its_attempts() -> None:
    fused = await _run(_fused, SCRIPTS["retried then ok"], "safe", refuse=False)
    assert fused["records"] == [
        ("requested", "op"),
        ("completed", 2, "closed", None, {"ok": True}),
    ]
    assert fused["waits"] == [pytest.approx(0.1)]
    failed = await _run(_fused, SCRIPTS["every attempt fails"], "safe", refuse=False)
    assert failed["records"][-1][:4] == ("completed", 3, "closed", "backend.server_error")
    assert failed["raised"][0] is BackendServerError


def test_the_auditor_double_has_the_auditors_methods() -> None:
    for name in ("requested", "completed"):
        assert callable(getattr(CallAuditor, name))
        assert callable(getattr(Auditor, name))
    assert issubclass(BackendServerError, BackendError)
