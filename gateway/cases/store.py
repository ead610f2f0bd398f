"""The CaseStore protocol and the rows it moves; implementations live in gateway.stores.

A store writes a case, its first transitions and its outbox entries in one transaction, and
later applies a ``Step`` (part changes, case status, timeline lines, events, follow-up entries,
the finished outbox entry) in one transaction too, guarded by the case's version and the
entry's lease. It decides nothing: the worker and the callback handler plan the steps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.cases.model import (
    Case,
    CaseEvent,
    CaseStatus,
    CaseSummary,
    MaterialRef,
    NewCase,
    PartStatus,
    Supplement,
    SupplementRequest,
)


class CaseStoreError(Exception):
    """Base of the errors stores raise; driver exceptions never escape a store."""


class CaseStoreUnavailable(CaseStoreError):
    """The database cannot be reached or failed; nothing of the transaction was committed
    (but for CommitUnknown)."""


class CommitUnknown(CaseStoreUnavailable):
    """The transaction's COMMIT failed, or its answer was lost: it may have been committed."""


class IdempotencyConflict(CaseStoreError):
    """The key was used before by the same account for a different body."""

    def __init__(self, case_id: str) -> None:
        super().__init__("idempotency key reused with a different body")
        self.case_id = case_id


class StaleCase(CaseStoreError):
    """The case changed since it was read (another worker or a callback): re-read, re-plan."""


class LeaseLost(CaseStoreError):
    """The outbox entry is no longer ours (lease expired, someone else claimed it)."""


class CallbackSeen(CaseStoreError):
    """The system's callback sequence was applied already (a replay) or is older than one
    applied (out of order)."""

    def __init__(self, reason: Literal["duplicate", "out_of_order"]) -> None:
        super().__init__(reason)
        self.reason = reason


class SupplementSeen(CaseStoreError):
    """The case has a supplement with this idempotency key and body already (a client retry)."""

    def __init__(self, sequence: int) -> None:
        super().__init__("supplement taken in already")
        self.sequence = sequence


class EntryKind(enum.StrEnum):
    DELIVER = "deliver"
    """Send a part to its handling province."""
    RECONCILE = "reconcile"
    """Ask whether a send with an unknown outcome arrived (by idempotency key)."""
    POLL = "poll"
    """Ask a system that does not call back how a forwarded part stands."""
    EVENT = "event"
    """Hand a status-change or closure event to the event sink."""
    SUPPLEMENT = "supplement"
    """Send a supplement (补齐补正) of a part to its handling province; payload
    ``{"supplement": n}`` (a reconciliation of a supplement's send carries the same)."""
    COMPENSATE = "compensate"
    """Undo an accepted part of a linked case whose required part failed (``compensate_with``)."""


EntryState = Literal["pending", "done", "dead"]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    entry_id: int
    case_id: str
    part: int | None
    kind: EntryKind
    state: EntryState
    attempts: int
    """Attempts whose outcome was recorded."""
    claims: int
    """Times the entry was claimed; more than attempts + 1 means a worker died holding it."""
    due: float
    payload: Mapping[str, Any] | None
    last_error: str | None
    created_at: str
    cause: str | None = None
    """The first failure the system itself gave (``code: detail``), kept beside ``last_error``
    when later attempts only met the paused breaker."""

    @property
    def abandoned(self) -> bool:
        """A worker claimed it before and died (or lost it) without recording an outcome: a
        send may have been made."""
        return self.claims > self.attempts + 1


@dataclass(frozen=True, slots=True)
class NewEntry:
    kind: EntryKind
    due: float
    part: int | None = None
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PartChange:
    part: int
    status: PartStatus
    result: Mapping[str, Any] | None = None
    """Replaces the stored result when given."""
    error_code: str | None = None
    supplement: SupplementRequest | None = None
    """What the handling province asked for (补齐补正); replaces the stored request when given."""
    cause: str | None = None
    """With a dead letter: the first failure the system itself gave (``code: detail``)."""


@dataclass(frozen=True, slots=True)
class TransitionDraft:
    from_status: CaseStatus
    to_status: CaseStatus
    part: int | None = None
    part_status: PartStatus | None = None
    actor: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FinishEntry:
    entry_id: int
    owner: str
    state: Literal["done", "dead"] = "done"
    error: str | None = None
    cause: str | None = None
    """Kept as the entry's cause unless it has one already (the first failure wins)."""


@dataclass(frozen=True, slots=True)
class Step:
    """Everything one decision changes, applied atomically by ``CaseStore.commit``."""

    case_id: str
    expected_version: int
    status: CaseStatus
    at: str
    parts: tuple[PartChange, ...] = ()
    transitions: tuple[TransitionDraft, ...] = ()
    events: tuple[CaseEvent, ...] = ()
    schedule: tuple[NewEntry, ...] = ()
    finish: FinishEntry | None = None
    revive: tuple[int, ...] = ()
    """Dead entries put back to pending (an operator's replay), due at once."""
    erase_data: bool = False
    callback: tuple[str, int] | None = None
    """(system, sequence) of the callback this step applies; refused if not newer."""
    supplement: Supplement | None = None
    """The applicant's supplement this step takes in, written with the step: its key already
    used raises SupplementSeen (same body) or IdempotencyConflict (another body)."""
    outcome: Mapping[str, Any] | None = None
    """A linked case's combined outcome, written when the step closes it."""
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``CaseStore.apply`` did: the case as the plan saw it, and the step it wrote."""

    case: Case
    """The case read under its lock, before the step."""
    step: Step | None
    """The step written; None when the plan found nothing to change."""


@dataclass(frozen=True, slots=True)
class CreateResult:
    case: Case
    created: bool


@dataclass(frozen=True, slots=True)
class CaseCounts:
    by_status: Mapping[str, int] = field(default_factory=dict)
    pending_entries: int = 0
    dead_entries: int = 0


class CaseStore(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def ping(self) -> None: ...

    async def create(
        self,
        case: NewCase,
        *,
        at: str,
        now: float,
        initial: Sequence[TransitionDraft],
        events: Sequence[CaseEvent],
    ) -> CreateResult:
        """Write the case, its parts, ``initial`` timeline lines, one deliver entry per part and
        the events, in one transaction. The same (owner, key, body digest) returns the
        existing case with ``created=False``; another body raises IdempotencyConflict. A case
        with the same subject and key counts as the same owner's (filed before person keys)."""

    async def find(self, owner: str, idempotency_key: str) -> Case | None: ...

    async def get(self, case_id: str, *, timeline: bool = True) -> Case | None:
        """The case; ``timeline=False`` leaves its timeline out (the worker never reads it)."""

    async def list_cases(
        self,
        *,
        subject: str | None = None,
        owners: Sequence[str] | None = None,
        applicants: Sequence[str] = (),
        client_id: str | None = None,
        status: CaseStatus | None = None,
        limit: int = 100,
    ) -> list[CaseSummary]:
        """Newest first; ``owners``: cases owned by any of them (Principal.owner_keys), and
        with ``applicants`` also the cases naming one of those keys as a co-applicant."""

    async def open_cases_with_material(self, ref: str, *, limit: int = 1000) -> list[str]:
        """Ids of the cases not closed one of whose materials is ``ref`` (a licence whose
        status changed at its issuer)."""

    async def open_case_materials(
        self, ref_prefix: str, *, limit: int = 1000
    ) -> list[tuple[str, MaterialRef]]:
        """(case id, material) of the cases not closed whose material references start with
        ``ref_prefix`` (the licences of an issuer that is polled for changes)."""

    async def claim(self, owner: str, *, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        """Lease up to ``limit`` due pending entries to ``owner`` until ``now + lease``."""

    async def commit(self, step: Step) -> Case:
        """Apply ``step`` or raise StaleCase / LeaseLost / CallbackSeen / SupplementSeen /
        IdempotencyConflict, changing nothing."""

    async def apply(
        self,
        case_id: str,
        plan: Callable[[Case], Step | None],
        *,
        otherwise: FinishEntry | None = None,
    ) -> Applied | None:
        """Read the case under its lock, call ``plan`` on it (pure, no I/O) and write the step it
        returns, all in one transaction: concurrent appliers to one case wait for each other
        and none fails for having read an older version, so N parts answering at once all
        land. ``plan`` returning None writes nothing but ``otherwise`` (an entry to finish).
        None when there is no such case (``otherwise`` still finished). Raises LeaseLost /
        CallbackSeen / SupplementSeen / IdempotencyConflict from the step, changing nothing."""

    async def reschedule(
        self, entry_id: int, owner: str, *, due: float, error: str, cause: str | None = None
    ) -> None:
        """Record a failed attempt and release the lease until ``due``; LeaseLost if not ours.
        ``cause`` is kept only if the entry has none yet (the first failure wins)."""

    async def finish(self, finish: FinishEntry) -> None:
        """Close an entry that changes no case (an event handed to the sink, a stale entry)."""

    async def entries(self, case_id: str) -> list[OutboxEntry]: ...

    async def dead_letters(self, limit: int = 100) -> list[OutboxEntry]: ...

    async def counts(self) -> CaseCounts: ...
