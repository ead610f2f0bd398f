"""Case transitions as audit records: the hook the case core calls, and its AuditWriter face.

Taking a case in is fail-closed (a required append before the case is written: no audit, no
case); later transitions are buffered appends, so an audit outage never stalls delivery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.audit.record import AuditEvent, EventType
from gateway.audit.recorder import EventRecorder, MemoryRecorder, WriterRecorder
from gateway.cases.model import Case
from gateway.cases.store import TransitionDraft

CaseAudit = EventRecorder
WriterCaseAudit = WriterRecorder
MemoryCaseAudit = MemoryRecorder


def transition_events(
    case: Case,
    drafts: Sequence[TransitionDraft],
    *,
    request_id: str | None = None,
    attempts: int | None = None,
    error_code: str | None = None,
    request_digest: str | None = None,
    response_digest: str | None = None,
    operation: str | None = None,
) -> Iterable[AuditEvent]:
    """One CASE_TRANSITION record per timeline line; identifiers and digests, never data."""
    for draft in drafts:
        part = case.part(draft.part) if draft.part is not None else None
        extra: dict[str, int | str | bool] = {
            "from": draft.from_status.value,
            "mode": case.mode.value,
        }
        if part is not None:
            extra["part"] = part.number
        if draft.part_status is not None:
            extra["part_status"] = draft.part_status.value
        if draft.reason:
            extra["reason"] = draft.reason[:200]
        yield AuditEvent(
            type=EventType.CASE_TRANSITION,
            request_id=request_id,
            case_id=case.case_id,
            actor=draft.actor or case.actor,
            principal=case.subject,
            identity_level=case.level,
            client=case.client_id,
            service=case.service,
            receiving_province=case.receiving_province,
            handling_province=part.handling_province if part else ",".join(case.handling_provinces),
            system=part.system if part else None,
            operation=operation or (part.operation if part else None),
            purpose=case.purpose,
            outcome=draft.to_status.value,
            error_code=error_code,
            attempts=attempts,
            request_digest=request_digest,
            response_digest=response_digest,
            extra=extra,
        )
