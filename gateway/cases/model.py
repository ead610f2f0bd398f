"""The case (办件) and its state machine: every allowed transition is in one table.

    received ─┬─> originals_checked ─┐          (window / 异地代收代办: a clerk checks originals)
              └──────────────────────┴─> forwarded ─> processing ─> result_delivered ─> closed
    outcomes:   supplement_requested (补齐补正), not_accepted (不予受理), returned (退件)
    delivery:   outcome_unknown (a non-idempotent send may have been processed: reconcile),
                dead_lettered (attempts exhausted: an operator replays it)
    linked:     compensating (a required part failed: the parts already accepted are undone)

A case has one part per handling province (多地联办: several), or the parts its service links
(联动办理: each part its own operation and input, some waiting for others); each part has its own
sub-status, and the case status is derived from its parts (``derive_status``, or
``gateway.cases.linked`` for linked cases). Pure logic, no I/O.
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
    COMPENSATING = "compensating"
    """A linked case's required part failed: the parts already accepted are being undone."""


S = CaseStatus
_OUTCOMES: Final = (S.SUPPLEMENT_REQUESTED, S.NOT_ACCEPTED, S.RETURNED)
_TROUBLE: Final = (S.OUTCOME_UNKNOWN, S.DEAD_LETTERED)

_UNWIND: Final = (S.COMPENSATING,)
"""Any open case whose linked required part fails starts unwinding."""

TRANSITIONS: Final[Mapping[CaseStatus, frozenset[CaseStatus]]] = {
    # No shortcut to processing: 办件转办 (forwarded) is always its own, audited step.
    S.RECEIVED: frozenset({S.ORIGINALS_CHECKED, S.FORWARDED, *_OUTCOMES, *_TROUBLE, *_UNWIND}),
    S.ORIGINALS_CHECKED: frozenset({S.FORWARDED, *_OUTCOMES, *_TROUBLE, *_UNWIND}),
    # A joint case stays 'forwarded' while some parts still wait; their trouble shows here too.
    S.FORWARDED: frozenset({S.PROCESSING, S.RESULT_DELIVERED, *_OUTCOMES, *_TROUBLE, *_UNWIND}),
    S.PROCESSING: frozenset({S.RESULT_DELIVERED, *_OUTCOMES, *_TROUBLE, *_UNWIND}),
    S.RESULT_DELIVERED: frozenset({S.CLOSED}),
    # 补齐补正: the applicant supplies what was missing and the case is taken in again; in a
    # joint case whose other parts went on, it waits as forwarded while the supplement is sent.
    # Another part's outcome or trouble still shows (多地联办 stops at the first failed part).
    S.SUPPLEMENT_REQUESTED: frozenset(
        {S.RECEIVED, S.FORWARDED, S.NOT_ACCEPTED, S.RETURNED, *_TROUBLE, S.CLOSED, *_UNWIND}
    ),
    S.NOT_ACCEPTED: frozenset({S.CLOSED}),
    S.RETURNED: frozenset({S.CLOSED}),
    # Reconciliation found the submission (forwarded on) or proved it never arrived (resend).
    S.OUTCOME_UNKNOWN: frozenset(
        {S.RECEIVED, S.ORIGINALS_CHECKED, S.FORWARDED, S.PROCESSING, S.RESULT_DELIVERED}
        | {*_OUTCOMES, S.DEAD_LETTERED, *_UNWIND}
    ),
    # An operator's replay puts the case back where its delivery stopped (a joint case whose
    # other part waits for a supplement waits again). A linked case unwinds from here, and
    # closes once what had been accepted is undone.
    S.DEAD_LETTERED: frozenset(
        {S.RECEIVED, S.ORIGINALS_CHECKED, S.FORWARDED, S.PROCESSING, S.OUTCOME_UNKNOWN}
        | {S.SUPPLEMENT_REQUESTED, *_UNWIND, S.CLOSED}
    ),
    # Unwinding ends in the failed part's outcome; an undo that cannot be delivered is trouble.
    S.COMPENSATING: frozenset({S.NOT_ACCEPTED, S.RETURNED, S.DEAD_LETTERED}),
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
    WAITING = "waiting"
    """A linked part waiting for the parts it depends on (nothing sent yet)."""
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
    CANCELLED = "cancelled"
    """Never sent: the case stopped (refused, or unwinding) before this part's turn."""
    COMPENSATING = "compensating"
    """Accepted by its back-end, now being undone (its operation's ``compensate_with``)."""
    COMPENSATED = "compensated"
    """Undone at its back-end."""
    COMPENSATION_FAILED = "compensation_failed"
    """The undo could not be delivered: an operator replays it."""


P = PartStatus
_PART_ORDER: Final = {P.WAITING: 0, P.PENDING: 0, P.FORWARDED: 1, P.PROCESSING: 2, P.DONE: 3}
ACCEPTED: Final = frozenset({P.FORWARDED, P.PROCESSING, P.DONE, P.SUPPLEMENT_REQUESTED})
"""The back-end has the application: what unwinding undoes."""
FAILED: Final = frozenset({P.NOT_ACCEPTED, P.RETURNED, P.DEAD_LETTERED})
"""A part that will not be done unless an operator replays a dead letter."""
_UNDOING: Final = {
    P.COMPENSATING: frozenset({P.COMPENSATED, P.COMPENSATION_FAILED}),
    P.COMPENSATION_FAILED: frozenset({P.COMPENSATED}),
    P.COMPENSATED: frozenset(),
}


def part_moves_on(current: PartStatus, target: PartStatus) -> bool:
    """A back-end's answer never moves a part backwards (a stale poll, a late callback)."""
    if current == target:
        return False
    if current in _UNDOING:
        # Only the undo's own answer moves a part being undone; the submission's is old news.
        return target in _UNDOING[current]
    if current == P.CANCELLED:
        # A send already on the wire when the case stopped: what the back-end did is recorded
        # (and undone, in a linked case); its failures change nothing, nothing was delivered.
        return target in ACCEPTED or target in (P.NOT_ACCEPTED, P.RETURNED, P.OUTCOME_UNKNOWN)
    if target in _UNDOING:
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
    name: str | None = None
    """A linked part's name in its service's ``linked.parts`` (None: a plain part)."""
    after: tuple[int, ...] = ()
    """Linked: the parts (by number) whose results this part waits for."""
    required: bool = True
    """Linked: whether the case fails (and unwinds) when this part fails."""
    compensate_with: str | None = None
    """The operation that undoes this part's submission, as configured at intake."""
    reads_only: bool = False
    """Linked: a check (a query or verification) that changes nothing, so nothing to undo."""


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
    applicants: tuple[str, ...] = ()
    """Keys of the application's data subjects as the subject rule verified them (co-applicants:
    the buyer and the seller), each of whom sees the case from any portal."""

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
                    PartStatus.WAITING if p.after else PartStatus.PENDING,
                    None,
                    None,
                    at,
                    name=p.name,
                    after=p.after,
                    required=p.required,
                    compensate_with=p.compensate_with,
                    reads_only=p.reads_only,
                )
                for n, p in enumerate(self.parts)
            ),
            data=self.data,
            transitions=transitions,
            applicants=frozenset(self.applicants),
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
    name: str | None = None
    """A linked part's name (None: a plain part)."""
    after: tuple[int, ...] = ()
    """Linked: the parts (by number) this part waits for."""
    required: bool = True
    """Linked: whether the case fails (and unwinds) when this part fails."""
    compensate_with: str | None = None
    """The operation that undoes this part's submission, if any."""
    reads_only: bool = False
    """Linked: a check that changes nothing at its back-end (nothing to undo)."""

    @property
    def label(self) -> str:
        """How operators and timelines name the part: its linked name, else its number."""
        return self.name or str(self.number)


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
    outcome: Mapping[str, Any] | None = None
    """A linked case's combined outcome, written when it closes: what was done, refused,
    undone, never sent and not undone."""
    in_flight: frozenset[int] = frozenset()
    """Parts whose send a worker holds (a leased delivery, or one whose worker died holding
    it): the send may be on the wire, so the part cannot be called never sent."""
    applicants: frozenset[str] = frozenset()
    """Keys of the application's data subjects (co-applicants); read with the timeline only."""

    @property
    def linked(self) -> bool:
        """Parts linked by its service (联动办理): dependencies, inputs, unwinding."""
        return any(p.name is not None for p in self.parts)

    def part(self, number: int) -> Part:
        for part in self.parts:
            if part.number == number:
                return part
        raise KeyError(number)

    @property
    def handling_provinces(self) -> list[str]:
        """Each province that handles a part, once, in part order."""
        return list(dict.fromkeys(p.handling_province for p in self.parts))

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


def compensation_key(case_id: str, part: int) -> str:
    """The idempotency key a back-end sees for the undo of one part: resends of the undo
    deduplicate, and it can never be taken for the submission itself."""
    return f"{delivery_key(case_id, part)}.undo"


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
    if all(p in (P.PENDING, P.WAITING) for p in parts):
        return intake
    if P.PENDING in parts or P.WAITING in parts:
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
