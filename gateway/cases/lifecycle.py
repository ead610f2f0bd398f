"""Planning steps: turn "this part now stands here" into a checked ``Step`` for the store.

Every status change of a case goes through ``plan_step``: it derives the case status from the
parts (a linked case through ``gateway.cases.linked.settle``, which also releases, cancels and
undoes parts), checks the move against the transition table, writes one timeline line per part
change, emits the status-change event, and closes a case whose result is delivered or refused
(with the 好差评 rating event and the payload erased). Pure functions, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.cases.linked import settle
from gateway.cases.model import (
    FAILED,
    FINAL_OUTCOMES,
    TERMINAL,
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
    intake: CaseStatus | None = None,
) -> Step:
    """The step that applies ``changes`` to ``case``; IllegalTransition if the table forbids it.

    ``intake`` is where a case whose parts all wait stands (default: the case's own intake
    status; a supplement takes a case in again as received).
    """
    parts = {p.number: p.status for p in case.parts}
    for change in changes:
        parts[change.part] = change.status
    current = case.status
    intake = intake or case.intake_status
    implied: list[tuple[PartChange, str]] = []
    outcome = None
    close = False
    if case.linked and current not in TERMINAL:
        errors = {c.part: c.error_code for c in changes}
        settled = settle(case, parts, now=now, intake=intake, errors=errors)
        implied = list(settled.changes)
        schedule = (*schedule, *settled.schedule)
        status = settled.status
        close, outcome = settled.close, settled.outcome
    else:
        status = derive_status(current, [parts[n] for n in sorted(parts)], intake)
        if status in FINAL_OUTCOMES and status != current:
            # Refused: parts not yet sent never will be (多地联办 stops at the failed part).
            implied = [
                (PartChange(p.number, PartStatus.CANCELLED), f"not sent: the case is {status}")
                for p in case.parts
                if parts[p.number] in (PartStatus.PENDING, PartStatus.WAITING)
                and not case.supplements_of(p.number)
                and p.number not in case.in_flight  # its answer is recorded when it comes
            ]
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
    drafts += [TransitionDraft(before, status, c.part, c.status, None, why) for c, why in implied]
    changes = [*changes, *(c for c, _why in implied)]
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
    closing = close or (
        not case.linked
        and (status == S.RESULT_DELIVERED or (status in FINAL_OUTCOMES and status != current))
    )
    if closing:
        check_transition(status, S.CLOSED)
        because = f"closed after {status}"
        if outcome is not None and outcome.get("failed_part"):
            because += f": {outcome['failed_part']} {outcome['result']}"
        drafts.append(TransitionDraft(status, S.CLOSED, None, None, None, because))
        detail: dict[str, object] = {"outcome": status.value}
        if outcome is not None:
            detail["combined"] = dict(outcome)
        events.append(
            case_event(
                case,
                "case_closed",
                S.CLOSED,
                at,
                # 好差评: the rating channel invites the applicant to rate this case.
                rating={"invite": True, "channel": "haochaping"},
                **detail,
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
        outcome=outcome,
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
    stopped (a send to pending, a reconciliation to outcome_unknown), the case status derived.
    A linked case that is unwinding only tries its undos again: what failed stays failed."""
    mine = [e for e in dead if e.case_id == case.case_id and e.state == "dead"]
    if case.status in TERMINAL:
        mine = []
    elif case.linked and any(p.required and p.status in FAILED for p in case.parts):
        mine = [e for e in mine if e.kind == EntryKind.COMPENSATE]
    if not mine:
        raise NotReplayable(case.case_id)
    changes: list[PartChange] = []
    for entry in mine:
        if entry.part is None:
            continue
        back = PartStatus.OUTCOME_UNKNOWN if entry.kind == EntryKind.RECONCILE else None
        if entry.kind in (EntryKind.DELIVER, EntryKind.SUPPLEMENT):
            back = PartStatus.PENDING
        stopped = PartStatus.DEAD_LETTERED
        if entry.kind == EntryKind.COMPENSATE:
            # An undo that could not be delivered is tried again.
            back, stopped = PartStatus.COMPENSATING, PartStatus.COMPENSATION_FAILED
        if back is not None and case.part(entry.part).status == stopped:
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
