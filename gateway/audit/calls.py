"""The audit records of routed calls: one before the call reaches a back-end, one after.

"No audit, no call": for a service whose audit mode is ``required``, the request record must be
durably committed before the adapter is called: exactly one durable commit in the call's path.
The outcome record is queued for the writer's next group commit while the answer goes out
(``audit_outcome: buffered``, the default); a service may ask for its answer to wait until the
outcome is committed too (``audit_outcome: durable``). ``buffered`` services (read-only queries)
wait for no commit at all: both records wait in the writer's bounded buffer. Records carry
digests of what went over the wire, never payloads (用而不存).

Why the outcome need not hold the answer: the durable request record already proves the call
was made, by whom, for whom and why, before anything reached the back-end; the outcome adds how
it ended, and it is committed milliseconds later in order on the same chain. Only a process
death in those milliseconds loses it, and a request record without its outcome then reads as
"outcome unknown", never as "no call". A service whose answer must not exist without its
recorded outcome says ``audit_outcome: durable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from gateway.adapter import Call, Reply
from gateway.audit.record import (
    AuditEvent,
    EventType,
    call_event_of,
    call_outcome_of,
    call_request_of,
)
from gateway.audit.writer import AuditWriter
from gateway.errors import AuditUnavailable
from gateway.frozen import made_in_one_step

AuditMode = Literal["required", "buffered"]
OutcomeMode = Literal["buffered", "durable"]

log = structlog.get_logger("tongban.audit")


@dataclass(frozen=True, slots=True)
class RouteAudit:
    """What the audit needs to know about a route, fixed at start-up."""

    service: str
    operation: str
    system: str
    system_operation: str
    mode: AuditMode
    outcome: OutcomeMode = "buffered"


@made_in_one_step
@dataclass(frozen=True)
class CallOutcome:
    attempts: int
    latency_ms: float
    breaker_state: str
    error_code: str | None = None
    reply: Reply | None = None


def _event(
    kind: EventType,
    call: Call,
    route: RouteAudit,
    extra: dict[str, object],
    outcome: CallOutcome | None = None,
) -> AuditEvent:
    """The call's event: its fields in record order to ``call_event_of``, which checks them as
    ``AuditEvent(...)`` does. ``extra`` has its keys in code-point order (the canonical
    order), so that its canonical text needs no sorting."""
    context = call.context
    actor = context.actor if context.actor != context.principal else None
    if outcome is None:
        result = error_code = attempts = latency_ms = request_digest = response_digest = None
    else:
        error_code = outcome.error_code
        result = "ok" if error_code is None else "error"
        attempts = outcome.attempts
        latency_ms = round(outcome.latency_ms)
        reply = outcome.reply
        request_digest = reply.request_digest if reply else None
        response_digest = reply.response_digest if reply else None
    return call_event_of(
        kind, context.request_id, context.case_id, actor, context.principal, context.level,
        context.client, route.service, context.receiving_province, context.handling_province,
        route.system, route.operation, context.purpose, result, error_code, attempts,
        latency_ms, request_digest, response_digest, extra,
    )  # fmt: skip


class CallAuditor:
    """Turns a call's two moments into audit events on this instance's chain."""

    def __init__(self, writer: AuditWriter) -> None:
        self._writer = writer

    async def requested(self, call: Call, route: RouteAudit) -> AuditEvent:
        """Record the call's request; returns its event, for ``completed`` to take the fields
        the two records share from (the caller keeps it for the call: no state is kept here,
        so a call that never ends leaves nothing behind)."""
        context = call.context
        # The request record's ``extra``, its keys in code-point order (the canonical order).
        extra: dict[str, object] = {}
        if context.authorisation_ref:
            extra["grant"] = context.authorisation_ref
        if context.idempotency_key:
            extra["idempotency_key"] = context.idempotency_key
        if context.subjects:
            extra["subjects"] = list(context.subjects)
        extra["system_operation"] = route.system_operation
        principal = context.principal
        actor = context.actor
        event = call_request_of(
            context.request_id, context.case_id, actor if actor != principal else None,
            principal, context.level, context.client, route.service,
            context.receiving_province, context.handling_province, route.system,
            route.operation, context.purpose, extra,
        )  # fmt: skip
        if event is None:  # a value the lean path does not take as it is: checked as ever
            event = _event(EventType.SERVICE_CALL_REQUESTED, call, route, extra)
        if route.mode == "required":
            await self._writer.append(event)  # returns once the batch is durably committed
        else:
            self._writer.append_nowait(event)
        return event

    async def completed(
        self,
        call: Call,
        route: RouteAudit,
        outcome: CallOutcome,
        requested: AuditEvent | None = None,
    ) -> None:
        """Record the call's outcome. ``requested``: the event ``requested`` returned for this
        call and route, whose checked fields the outcome's event takes as they are
        (``call_outcome_of``); without it, or when it is not this call's, the event is made
        from the call's context as the request's was."""
        context = call.context
        # The outcome record's ``extra``, its keys in code-point order.
        extra: dict[str, object] = {"breaker": outcome.breaker_state}
        if context.authorisation_ref:
            extra["grant"] = context.authorisation_ref
        if context.subjects:
            extra["subjects"] = list(context.subjects)
        event: AuditEvent | None = None
        if requested is not None and requested.request_id is context.request_id:
            error_code = outcome.error_code
            reply = outcome.reply
            if reply is None:
                request_digest = response_digest = None
            else:
                request_digest = reply.request_digest
                response_digest = reply.response_digest
            event = call_outcome_of(
                requested, "ok" if error_code is None else "error", error_code,
                outcome.attempts, round(outcome.latency_ms), request_digest, response_digest,
                extra,
            )  # fmt: skip
        if event is None:
            event = _event(EventType.SERVICE_CALL_COMPLETED, call, route, extra, outcome)
        if route.outcome == "durable":
            await self._writer.append(event)  # the answer waits for this commit too
            return
        if route.mode == "buffered":
            self._writer.append_nowait(event)  # ``append(event, mode="buffered")``, no coroutine
            return
        try:
            self._writer.append_nowait(event)
        except AuditUnavailable:
            # The call was made and its request record is durable: the answer goes out, and
            # the missing outcome is said here (a full buffer or a failed chain; the next
            # call's request record fails closed anyway).
            log.error(
                "audit_outcome_not_recorded",
                request_id=call.context.request_id,
                service=route.service,
            )
