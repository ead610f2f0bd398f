"""Planning steps: turn "this part now stands here" into a checked ``Step`` for the store.

Every status change of a case goes through ``plan_step``: it derives the case status from the
parts, checks the move against the transition table, writes one timeline line per part change,
emits the status-change event, and closes a case whose result is delivered or refused (with the
好差评 rating event and the payload erased). Pure functions, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.cases.model import (
    FINAL_OUTCOMES,
    TRANSITIONS,
    Case,
    CaseEvent,
    CaseStatus,
    PartStatus,
    check_transition,
    derive_status,
)
from gateway.cases.store import (
    EntryKind,
    FinishEntry,
    NewEntry,
    OutboxEntry,
    PartChange,
    Step,
    TransitionDraft,
)

S = CaseStatus


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def case_event(case: Case, type_: str, status: CaseStatus, at: str, **detail: object) -> CaseEvent:
    return CaseEvent(
        type=type_,
        case_id=case.case_id,
        service=case.service,
        status=status.value,
        at=at,
        subject=case.subject,
        receiving_province=case.receiving_province,
        handling_provinces=tuple(case.handling_provinces),
        detail=detail,
    )


def plan_step(
    case: Case,
    changes: Sequence[PartChange],
    *,
    at: str,
    now: float,
    reason: str | None = None,
    actor: str | None = None,
    finish: FinishEntry | None = None,
    schedule: Sequence[NewEntry] = (),
    revive: Sequence[int] = (),
    callback: tuple[str, int] | None = None,
    target: CaseStatus | None = None,
) -> Step:
    """The step that applies ``changes`` to ``case``; IllegalTransition if the table forbids it.

    ``target`` forces the case status (an operator's replay); otherwise it is derived.
    """
    parts = {p.number: p.status for p in case.parts}
    for change in changes:
        parts[change.part] = change.status
    current = case.status
    status = target or derive_status(current, [parts[n] for n in sorted(parts)], case.intake_status)
    hops = route_between(current, status)
    drafts: list[TransitionDraft] = []
    events: list[CaseEvent] = []
    before = current
    for hop in hops[:-1]:
        # A back-end that answers "done" at once still took the case through 办件转办.
        drafts.append(TransitionDraft(before, hop, None, None, actor, "passed through"))
        events.append(case_event(case, "case_status_changed", hop, at, previous=before.value))
        before = hop
    drafts += [
        TransitionDraft(before, status, c.part, c.status, actor, c.error_code or reason)
        for c in changes
    ]
    if status != before and not changes:
        drafts.append(TransitionDraft(before, status, None, None, actor, reason))
    if status != before:
        events.append(case_event(case, "case_status_changed", status, at, previous=before.value))
    for change in changes:
        if change.status == PartStatus.SUPPLEMENT_REQUESTED and change.supplement is not None:
            # 补齐补正: the applicant is told what is missing, and by when.
            asked = change.supplement
            events.append(
                case_event(
                    case,
                    "case_supplement_requested",
                    status,
                    at,
                    part=change.part,
                    materials=list(asked.materials),
                    message=asked.message,
                    deadline=asked.deadline,
                )
            )
    erase = False
    if status == S.RESULT_DELIVERED or (status in FINAL_OUTCOMES and status != current):
        check_transition(status, S.CLOSED)
        drafts.append(TransitionDraft(status, S.CLOSED, None, None, None, f"closed after {status}"))
        events.append(
            case_event(
                case,
                "case_closed",
                S.CLOSED,
                at,
                outcome=status.value,
                # 好差评: the rating channel invites the applicant to rate this case.
                rating={"invite": True, "channel": "haochaping"},
            )
        )
        status = S.CLOSED
        erase = True
    return Step(
        case_id=case.case_id,
        expected_version=case.version,
        status=status,
        at=at,
        parts=tuple(changes),
        transitions=tuple(drafts),
        events=tuple(events),
        schedule=tuple(schedule),
        finish=finish,
        revive=tuple(revive),
        erase_data=erase,
        callback=callback,
        now=now,
    )


def route_between(current: CaseStatus, target: CaseStatus) -> list[CaseStatus]:
    """The statuses from ``current`` to ``target``: one hop when the table allows it, else
    through forwarded / processing (the explicit steps a quick answer skipped over)."""
    if target == current:
        return []
    if target in TRANSITIONS[current]:
        return [target]
    for first, second in ((S.FORWARDED, None), (S.PROCESSING, None), (S.FORWARDED, S.PROCESSING)):
        hops = [first] if second is None else [first, second]
        chain = [current, *hops, target]
        if all(b in TRANSITIONS[a] for a, b in itertools.pairwise(chain)):
            return [*hops, target]
    check_transition(current, target)  # raises IllegalTransition
    return [target]


class NotReplayable(ValueError):
    """The case has nothing dead-lettered to replay."""


def plan_replay(
    case: Case, dead: Sequence[OutboxEntry], *, at: str, now: float, actor: str
) -> Step:
    """An operator's replay: dead entries back to pending, their parts back to where delivery
    stopped (a send to pending, a reconciliation to outcome_unknown), the case status derived."""
    mine = [e for e in dead if e.case_id == case.case_id and e.state == "dead"]
    if not mine:
        raise NotReplayable(case.case_id)
    changes: list[PartChange] = []
    for entry in mine:
        if entry.part is None:
            continue
        back = PartStatus.OUTCOME_UNKNOWN if entry.kind == EntryKind.RECONCILE else None
        if entry.kind in (EntryKind.DELIVER, EntryKind.SUPPLEMENT):
            back = PartStatus.PENDING
        if back is not None and case.part(entry.part).status == PartStatus.DEAD_LETTERED:
            changes.append(PartChange(entry.part, back))
    return plan_step(
        case,
        changes,
        at=at,
        now=now,
        reason="replayed by an operator",
        actor=actor,
        revive=[e.entry_id for e in mine],
    )
