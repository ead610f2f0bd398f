"""The case (办件) and its state machine: every allowed transition is in one table.

    received ─┬─> originals_checked ─┐          (window / 异地代收代办: a clerk checks originals)
              └──────────────────────┴─> forwarded ─> processing ─> result_delivered ─> closed
    outcomes:   supplement_requested (补齐补正), not_accepted (不予受理), returned (退件)
    delivery:   outcome_unknown (a non-idempotent send may have been processed: reconcile),
                dead_lettered (attempts exhausted: an operator replays it)

A case has one part per handling province (多地联办: several); each part has its own sub-status,
and the case status is derived from its parts by ``derive_status``. Pure logic, no I/O.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson


class CaseStatus(enum.StrEnum):
    RECEIVED = "received"
    ORIGINALS_CHECKED = "originals_checked"
    FORWARDED = "forwarded"
    PROCESSING = "processing"
    RESULT_DELIVERED = "result_delivered"
    CLOSED = "closed"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    NOT_ACCEPTED = "not_accepted"
    RETURNED = "returned"
    OUTCOME_UNKNOWN = "outcome_unknown"
    DEAD_LETTERED = "dead_lettered"


S = CaseStatus
_OUTCOMES: Final = (S.SUPPLEMENT_REQUESTED, S.NOT_ACCEPTED, S.RETURNED)
_TROUBLE: Final = (S.OUTCOME_UNKNOWN, S.DEAD_LETTERED)

TRANSITIONS: Final[Mapping[CaseStatus, frozenset[CaseStatus]]] = {
    # No shortcut to processing: 办件转办 (forwarded) is always its own, audited step.
    S.RECEIVED: frozenset({S.ORIGINALS_CHECKED, S.FORWARDED, *_OUTCOMES, *_TROUBLE}),
    S.ORIGINALS_CHECKED: frozenset({S.FORWARDED, *_OUTCOMES, *_TROUBLE}),
    # A joint case stays 'forwarded' while some parts still wait; their trouble shows here too.
    S.FORWARDED: frozenset({S.PROCESSING, S.RESULT_DELIVERED, *_OUTCOMES, *_TROUBLE}),
    S.PROCESSING: frozenset({S.RESULT_DELIVERED, *_OUTCOMES, *_TROUBLE}),
    S.RESULT_DELIVERED: frozenset({S.CLOSED}),
    # 补齐补正: the applicant supplies what was missing and the case is taken in again; in a
    # joint case whose other parts went on, it waits as forwarded while the supplement is sent.
    # Another part's outcome or trouble still shows (多地联办 stops at the first failed part).
    S.SUPPLEMENT_REQUESTED: frozenset(
        {S.RECEIVED, S.FORWARDED, S.NOT_ACCEPTED, S.RETURNED, *_TROUBLE, S.CLOSED}
    ),
    S.NOT_ACCEPTED: frozenset({S.CLOSED}),
    S.RETURNED: frozenset({S.CLOSED}),
    # Reconciliation found the submission (forwarded on) or proved it never arrived (resend).
    S.OUTCOME_UNKNOWN: frozenset(
        {S.RECEIVED, S.ORIGINALS_CHECKED, S.FORWARDED, S.PROCESSING, S.RESULT_DELIVERED}
        | {*_OUTCOMES, S.DEAD_LETTERED}
    ),
    # An operator's replay puts the case back where its delivery stopped (a joint case whose
    # other part waits for a supplement waits again).
    S.DEAD_LETTERED: frozenset(
        {S.RECEIVED, S.ORIGINALS_CHECKED, S.FORWARDED, S.PROCESSING, S.OUTCOME_UNKNOWN}
        | {S.SUPPLEMENT_REQUESTED}
    ),
    S.CLOSED: frozenset(),
}

TERMINAL: Final = frozenset({S.CLOSED})
FINAL_OUTCOMES: Final = frozenset({S.NOT_ACCEPTED, S.RETURNED})
"""Outcomes after which nothing is delivered any more; the case closes."""


class IllegalTransition(ValueError):
    def __init__(self, current: CaseStatus, target: CaseStatus) -> None:
        super().__init__(f"a case cannot go from {current} to {target}")
        self.current = current
        self.target = target


def check_transition(current: CaseStatus, target: CaseStatus) -> None:
    """Raise IllegalTransition unless the table allows ``current → target``."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)


class PartStatus(enum.StrEnum):
    PENDING = "pending"
    """Waiting for delivery to its handling province."""
    FORWARDED = "forwarded"
    PROCESSING = "processing"
    DONE = "done"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    NOT_ACCEPTED = "not_accepted"
    RETURNED = "returned"
    OUTCOME_UNKNOWN = "outcome_unknown"
    DEAD_LETTERED = "dead_lettered"


P = PartStatus
_PART_ORDER: Final = {P.PENDING: 0, P.FORWARDED: 1, P.PROCESSING: 2, P.DONE: 3}


def part_moves_on(current: PartStatus, target: PartStatus) -> bool:
    """A back-end's answer never moves a part backwards (a stale poll, a late callback)."""
    if current == target:
        return False
    if current in _PART_ORDER and target in _PART_ORDER:
        return _PART_ORDER[target] > _PART_ORDER[current]
    # Outcomes and trouble override progress; nothing overrides an outcome but a resubmission.
    return current not in (P.NOT_ACCEPTED, P.RETURNED, P.DONE)


class Mode(enum.StrEnum):
    ONLINE = "online"
    """全程网办"""
    PROXY = "proxy"
    """异地代收代办: a window in the receiving province collects, another province handles."""
    JOINT = "joint"
    """多地联办: several provinces each handle a part."""


@dataclass(frozen=True, slots=True)
class MaterialRef:
    """A material by reference (an e-licence id, an upload's URI) and its digest; never bytes."""

    code: str
    ref: str
    digest: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "ref": self.ref, "digest": self.digest}


@dataclass(frozen=True, slots=True)
class SupplementRequest:
    """补齐补正: what a handling province asked the applicant to supply for one part."""

    materials: tuple[str, ...]
    """Material codes asked for (the service's own, or the back-end's when it names others)."""
    message: str | None = None
    """The handling province's words to the applicant."""
    deadline: str | None = None
    """By when, as the back-end gave it (shown, not enforced: the back-end decides 退件)."""
    requested_at: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "materials": list(self.materials),
            "message": self.message,
            "deadline": self.deadline,
            "requested_at": self.requested_at,
        }


@dataclass(frozen=True, slots=True)
class Supplement:
    """补齐补正 answered: material the applicant supplied for one part, by reference and digest."""

    sequence: int
    """1, 2, ... per case; extends the part's delivery key (``supplement_key``)."""
    part: int
    idempotency_key: str
    """The client's key, scoped to the case: the same key and body are the same supplement."""
    body_digest: str
    materials: tuple[MaterialRef, ...]
    note: str | None
    actor: str
    """Who supplied it: the applicant, their agent or a window clerk."""
    submitted_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "part": self.part,
            "materials": [m.as_json() for m in self.materials],
            "note": self.note,
            "actor": self.actor,
            "submitted_at": self.submitted_at,
        }


@dataclass(frozen=True, slots=True)
class PartPlan:
    """One handling province's share of a case, resolved against the catalogue at intake."""

    handling_province: str
    operation: str
    system: str


@dataclass(frozen=True, slots=True)
class NewCase:
    """A validated application, ready to be written with its outbox entries."""

    case_id: str
    service: str
    mode: Mode
    subject: str
    """Pairwise subject of the applicant at the client that filed the case."""
    owner: str
    """Principal.owner of the applicant: the gateway-internal person key (the same through
    every portal) or, with no person, the subject. Never shown to a client."""
    actor: str | None
    actor_role: str | None
    client_id: str
    level: str
    receiving_province: str
    purpose: str
    authorisation_ref: str | None
    idempotency_key: str
    body_digest: str
    data: Mapping[str, Any]
    materials: tuple[MaterialRef, ...]
    parts: tuple[PartPlan, ...]
    originals_checked_by: str | None = None
    """The clerk who checked the originals at the window (proxy mode), if done at intake."""
    request_id: str | None = None

    def as_case(
        self, at: str, status: CaseStatus, transitions: tuple[Transition, ...] = ()
    ) -> Case:
        """The case exactly as a fresh write stores it (no read-back needed)."""
        return Case(
            case_id=self.case_id,
            service=self.service,
            mode=self.mode,
            subject=self.subject,
            owner=self.owner,
            actor=self.actor,
            actor_role=self.actor_role,
            client_id=self.client_id,
            level=self.level,
            receiving_province=self.receiving_province,
            purpose=self.purpose,
            authorisation_ref=self.authorisation_ref,
            idempotency_key=self.idempotency_key,
            body_digest=self.body_digest,
            status=status,
            version=1,
            created_at=at,
            updated_at=at,
            materials=self.materials,
            parts=tuple(
                Part(
                    n,
                    p.handling_province,
                    p.operation,
                    p.system,
                    PartStatus.PENDING,
                    None,
                    None,
                    at,
                )
                for n, p in enumerate(self.parts)
            ),
            data=self.data,
            transitions=transitions,
        )


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    handling_province: str
    operation: str
    system: str
    status: PartStatus
    result: Mapping[str, Any] | None = None
    error_code: str | None = None
    updated_at: str | None = None
    supplement: SupplementRequest | None = None
    """The latest 补齐补正 request of this part (kept after it is answered)."""
    cause: str | None = None
    """Beside ``error_code`` of a dead letter: the first failure the system itself gave."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One line of a case's timeline."""

    sequence: int
    at: str
    from_status: CaseStatus | None
    to_status: CaseStatus
    part: int | None = None
    part_status: PartStatus | None = None
    actor: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "at": self.at,
            "from": self.from_status.value if self.from_status else None,
            "to": self.to_status.value,
            "part": self.part,
            "part_status": self.part_status.value if self.part_status else None,
            "actor": self.actor,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    service: str
    mode: Mode
    subject: str
    """Pairwise subject of the applicant at the client that filed the case."""
    owner: str
    """Whose case it is (NewCase.owner); ownership, idempotency and "mine" go by it."""
    actor: str | None
    actor_role: str | None
    client_id: str
    level: str
    receiving_province: str
    purpose: str
    authorisation_ref: str | None
    idempotency_key: str
    body_digest: str
    status: CaseStatus
    version: int
    created_at: str
    updated_at: str
    materials: tuple[MaterialRef, ...]
    parts: tuple[Part, ...]
    data: Mapping[str, Any] | None
    """The payload, kept only until the case is closed ('用而不存'); None after."""
    transitions: tuple[Transition, ...] = ()
    supplements: tuple[Supplement, ...] = ()
    """补齐补正 answered, oldest first."""

    def part(self, number: int) -> Part:
        for part in self.parts:
            if part.number == number:
                return part
        raise KeyError(number)

    @property
    def handling_provinces(self) -> list[str]:
        return [p.handling_province for p in self.parts]

    def supplement(self, sequence: int) -> Supplement:
        for supplement in self.supplements:
            if supplement.sequence == sequence:
                return supplement
        raise KeyError(sequence)

    def supplements_of(self, part: int) -> int:
        """How many supplements were supplied for ``part``: the round its answers belong to."""
        return sum(1 for s in self.supplements if s.part == part)

    @property
    def intake_status(self) -> CaseStatus:
        """Where the case stands before delivery: a window case has had its originals checked."""
        return S.ORIGINALS_CHECKED if self.mode == Mode.PROXY else S.RECEIVED


@dataclass(frozen=True, slots=True)
class CaseSummary:
    case_id: str
    service: str
    mode: Mode
    status: CaseStatus
    receiving_province: str
    handling_provinces: tuple[str, ...]
    created_at: str
    updated_at: str
    actor: str | None


def body_digest(body: Mapping[str, Any]) -> str:
    """Digest of a submission, independent of key order and whitespace."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def delivery_key(case_id: str, part: int) -> str:
    """The idempotency key a back-end sees for one part of a case.

    Derived from the case id, not copied from the client's header: clients pick their keys
    per account, so two citizens may both send 'apply-1'; the case id is unique gateway-wide
    and the same for every retry of one application, so the back-end deduplicates exactly the
    resends of one part and nothing else.
    """
    return f"{case_id}.{part}"


def supplement_key(case_id: str, part: int, sequence: int) -> str:
    """The idempotency key a back-end sees for a supplement (补齐补正) of one part: the part's
    delivery key extended by the supplement's sequence, so resends of one supplement
    deduplicate and a second supplement is new."""
    return f"{delivery_key(case_id, part)}.s{sequence}"


def derive_status(
    current: CaseStatus, parts: Sequence[PartStatus], intake: CaseStatus = S.RECEIVED
) -> CaseStatus:
    """The case status its parts imply (多地联办: a joint result needs every part).

    Trouble first (an operator must see it), then a failed part (the whole application stops),
    then progress, which is the least advanced part's. ``intake`` is where a case whose parts
    all wait for delivery stands: received, or originals_checked after a window's check.
    """
    if current in TERMINAL or not parts:
        return current
    if P.DEAD_LETTERED in parts:
        return S.DEAD_LETTERED
    if P.OUTCOME_UNKNOWN in parts:
        return S.OUTCOME_UNKNOWN
    for failed, status in (
        (P.NOT_ACCEPTED, S.NOT_ACCEPTED),
        (P.RETURNED, S.RETURNED),
        (P.SUPPLEMENT_REQUESTED, S.SUPPLEMENT_REQUESTED),
    ):
        if failed in parts:
            return status
    if all(p == P.DONE for p in parts):
        return S.RESULT_DELIVERED
    if all(p == P.PENDING for p in parts):
        return intake
    if P.PENDING in parts:
        return S.FORWARDED
    if any(p in (P.PROCESSING, P.DONE) for p in parts):
        return S.PROCESSING
    return S.FORWARDED


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """A status change or closure for the event sink (好差评 rating on closure)."""

    type: str
    case_id: str
    service: str
    status: str
    at: str
    subject: str
    receiving_province: str
    handling_provinces: tuple[str, ...]
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "case_id": self.case_id,
            "service": self.service,
            "status": self.status,
            "at": self.at,
            "subject": self.subject,
            "receiving_province": self.receiving_province,
            "handling_provinces": list(self.handling_provinces),
            "detail": dict(self.detail),
        }
