"""补齐补正: a handling province's request for missing material, and the applicant's answer.

The request comes with a back-end's answer (to the submission, a status query, a
reconciliation) or a callback and is kept on its part. The answer, a supplement, is checked like
an application's materials (``gateway.cases.intake``), planned here as one ``Step`` (the part
back to pending, the case taken in again, a ``supplement`` outbox entry, the events) that the
store writes with the supplement in one transaction, and sent by the delivery worker through
the operation the submit operation's ``case.supplement_with`` names, under the part's delivery
key extended by the supplement's sequence (``supplement_key``). Pure functions, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from jsonschema import Draft202012Validator

from gateway.cases.config import CaseOperation
from gateway.cases.errors import CaseNotAwaitingSupplement
from gateway.cases.intake import (
    CASE_REQUEST_SCHEMA,
    check_idempotency_key,
    check_supplement_materials,
)
from gateway.cases.lifecycle import case_event, plan_step
from gateway.cases.model import (
    TERMINAL,
    Case,
    CaseStatus,
    Part,
    PartStatus,
    Supplement,
    SupplementRequest,
    body_digest,
)
from gateway.cases.store import EntryKind, NewEntry, PartChange, Step
from gateway.catalog import Catalog
from gateway.errors import ValidationFailed
from gateway.mapping import compile_mapping

SUPPLEMENT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["materials"],
    "properties": {
        "part": {
            "type": "integer",
            "minimum": 0,
            "maximum": 7,
            "description": "多地联办: the part that asked; may be omitted when one part waits.",
        },
        "materials": {**CASE_REQUEST_SCHEMA["properties"]["materials"], "minItems": 1},
        "note": {"type": "string", "maxLength": 500},
    },
}
_ENVELOPE = Draft202012Validator(SUPPLEMENT_SCHEMA)
_MAX_CODES: Final = 50


# --- what was asked ---------------------------------------------------------------------------


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def read_request(value: Any, at: str) -> SupplementRequest:
    """A request as a back-end or a callback describes it (``{"materials": [code | {"code"}],
    "message", "deadline"}``). What cannot be read is left out: a badly described request still
    stops the part, and the applicant still sees what could be read."""
    found = value if isinstance(value, Mapping) else {}
    listed = found.get("materials")
    codes: list[str] = []
    for item in listed if isinstance(listed, list) else ():
        code = item.get("code") if isinstance(item, Mapping) else item
        if isinstance(code, str) and 0 < len(code) <= 64 and code not in codes:
            codes.append(code)
    return SupplementRequest(
        materials=tuple(codes[:_MAX_CODES]),
        message=_text(found.get("message"), 500),
        deadline=_text(found.get("deadline"), 40),
        requested_at=at,
    )


def requested_supplement(answer: Any, config: CaseOperation | None, at: str) -> SupplementRequest:
    """The request inside a back-end's canonical answer, at ``case.supplement_field``."""
    path = config.supplement_field if config is not None else None
    value: Any = answer if path is not None else None
    for segment in path.split(".") if path is not None else ():
        value = value.get(segment) if isinstance(value, Mapping) else None
    return read_request(value, at)


def answered_already(case: Case, part: Part, target: PartStatus) -> bool:
    """News that a part waits for material while its supplement waits to be sent is the old
    request again (the supplement answers it, and the back-end's answer to the supplement says
    what comes next): applying it would strand the supplement."""
    return (
        target == PartStatus.SUPPLEMENT_REQUESTED
        and part.status == PartStatus.PENDING
        and case.supplements_of(part.number) > 0
    )


# --- the applicant's answer -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SupplementDraft:
    """A supplement body that passed the envelope check; the part is decided against the case."""

    key: str
    digest: str
    body: Mapping[str, Any]


def check_envelope(body: Mapping[str, Any], idempotency_key: str | None) -> SupplementDraft:
    """The key and the body's shape (client.idempotency_key_missing, client.validation_failed)."""
    key = check_idempotency_key(idempotency_key)
    problems = sorted(_ENVELOPE.iter_errors(body), key=lambda e: list(e.absolute_path))
    if problems:
        raise ValidationFailed(
            "The supplement is not valid.",
            errors=[
                {
                    "path": "/" + "/".join(str(p) for p in e.absolute_path),
                    "message": e.message[:200] if e.validator != "pattern" else "bad format",
                }
                for e in problems[:20]
            ],
        )
    return SupplementDraft(key, body_digest(body), body)


def awaiting_part(case: Case, named: int | None) -> Part:
    """The part a supplement answers: the one named, or the only one waiting for a supplement;
    client.case_not_awaiting_supplement when none (or not the named one) waits."""
    waiting = [p for p in case.parts if p.status == PartStatus.SUPPLEMENT_REQUESTED]
    if case.status in TERMINAL or not waiting:
        raise CaseNotAwaitingSupplement(
            f"Case {case.case_id} is {case.status.value}: no supplement was asked for."
        )
    if named is None:
        if len(waiting) > 1:
            raise ValidationFailed(
                "Several parts wait for a supplement: name the part it answers.",
                errors=[{"path": "/part", "message": f"one of {[p.number for p in waiting]}"}],
            )
        return waiting[0]
    for part in waiting:
        if part.number == named:
            return part
    raise CaseNotAwaitingSupplement(
        f"Part {named} of case {case.case_id} does not wait for a supplement."
    )


def build_supplement(
    catalog: Catalog, case: Case, draft: SupplementDraft, *, actor: str, at: str
) -> Supplement:
    """The supplement for the part that waits, its materials checked like an application's and
    every requested material among them (client.materials_invalid)."""
    part = awaiting_part(case, draft.body.get("part"))
    requested = part.supplement.materials if part.supplement is not None else ()
    materials = check_supplement_materials(
        catalog, case.service, list(draft.body["materials"]), requested
    )
    note = draft.body.get("note")
    return Supplement(
        sequence=max((s.sequence for s in case.supplements), default=0) + 1,
        part=part.number,
        idempotency_key=draft.key,
        body_digest=draft.digest,
        materials=materials,
        note=note or None,
        actor=actor,
        submitted_at=at,
    )


def plan_supplement(case: Case, supplement: Supplement, *, at: str, now: float) -> Step:
    """Take a supplement in: its part back to pending (the supplement waits for delivery), the
    case received again (or forwarded, in a joint case whose other parts went on), an entry for
    the worker and the events; the store writes it all with the supplement, atomically."""
    # Taken in again as received, a window case too: its originals were checked at intake.
    step = plan_step(
        case,
        [PartChange(supplement.part, PartStatus.PENDING)],
        at=at,
        now=now,
        reason=f"补齐补正: supplement #{supplement.sequence}",
        actor=supplement.actor,
        schedule=[
            NewEntry(
                EntryKind.SUPPLEMENT, now, supplement.part, {"supplement": supplement.sequence}
            )
        ],
        intake=CaseStatus.RECEIVED,
    )
    received = case_event(
        case,
        "case_supplement_received",
        step.status,
        at,
        part=supplement.part,
        sequence=supplement.sequence,
        materials=[m.code for m in supplement.materials],
    )
    return dataclasses.replace(step, supplement=supplement, events=(*step.events, received))


def supplement_input(config: CaseOperation, part: Part, supplement: Supplement) -> dict[str, Any]:
    """The canonical input of ``case.supplement_with``: the fields ``supplement_input`` takes
    from the part's answer, then the supplement by reference and digest (never bytes)."""
    data: dict[str, Any] = {}
    if config.supplement_input:
        taken = compile_mapping(config.supplement_input).apply(part.result or {})
        data.update(taken if isinstance(taken, Mapping) else {})
    data["sequence"] = supplement.sequence
    data["materials"] = [m.as_json() for m in supplement.materials]
    if supplement.note:
        data["note"] = supplement.note
    return data
