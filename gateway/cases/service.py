"""The case operations the HTTP layer and the CLI call: take in, read, list, replay, callbacks,
and take in a supplement (补齐补正).

Taking a case in is fail-closed on the audit trail: the record is appended (required) before
the case, its timeline and its outbox entries are written in one transaction. A retry with the
same key and body returns the same case and writes nothing.

A counted grant use (the data-subject rule's, or a licence of someone else's at 免证办) is spent
only by an application that is taken in: when anything after the rule fails and the case was
certainly not written (a later refusal, the intake record not written, the case store failing
before its commit, the key already taken by another application or by a twin request), the
uses go back to their grants. A case whose commit may have landed keeps them. An application
is taken in (or not) to the end whether or not its client still waits: a handler cancelled
mid-intake (its client gone, the server stopping) leaves the intake running in its own task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import structlog

from gateway.audit.record import AuditEvent, EventType
from gateway.cases.audit import CaseAudit, transition_events
from gateway.cases.errors import (
    CallbackInvalid,
    CallbackRefused,
    CaseNotFound,
    CaseNotReplayable,
    CaseStoreDown,
    IdempotencyKeyReused,
)
from gateway.cases.intake import build_new_case
from gateway.cases.lifecycle import NotReplayable, case_event, iso_now, plan_replay, plan_step
from gateway.cases.model import (
    Case,
    CaseStatus,
    CaseSummary,
    IllegalTransition,
    NewCase,
    PartStatus,
    Supplement,
    part_moves_on,
)
from gateway.cases.store import (
    CallbackSeen,
    CaseStore,
    CaseStoreUnavailable,
    CommitUnknown,
    CreateResult,
    IdempotencyConflict,
    PartChange,
    StaleCase,
    Step,
    SupplementSeen,
    TransitionDraft,
)
from gateway.cases.supplements import (
    answered_already,
    build_supplement,
    check_envelope,
    plan_supplement,
    read_request,
)
from gateway.cases.worker import part_status_of
from gateway.catalog import Catalog
from gateway.consent.contract import GrantAsk, GrantUse
from gateway.errors import Forbidden, GatewayError, NotDataSubject, SubjectFieldAmbiguous
from gateway.principal import Principal
from gateway.subjects import (
    Binding,
    Named,
    SubjectRule,
    case_declaration,
    check_unambiguous,
    grant_ids,
    principal_subject,
    service_subject_fields,
)

log = structlog.get_logger("tongban.cases")

STAFF_ROLES: Final = frozenset({"operator", "auditor"})
CALLBACK_SKEW: Final = 300.0
CALLBACK_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
"""X-Tongban-Timestamp: Unix seconds, optionally with a fraction, nothing else."""
CALLBACK_STATUSES: Final = (
    "processing",
    "done",
    "supplement_requested",
    "not_accepted",
    "returned",
)


@dataclass(frozen=True, slots=True)
class Submitted:
    case: Case
    created: bool


@dataclass(frozen=True, slots=True)
class Supplemented:
    case: Case
    supplement: Supplement
    created: bool


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    status: Literal["applied", "duplicate", "out_of_order", "unchanged"]
    case_id: str


def can_supplement(principal: Principal, case: Case) -> bool:
    """补齐补正 is the applicant's act: whoever may see the case but the staff who only read it
    (operators, auditors)."""
    return can_see(dataclasses.replace(principal, roles=principal.roles - STAFF_ROLES), case)


def _applicant_keys(principal: Principal) -> frozenset[str]:
    """The keys a case names its co-applicants by that are this principal's own."""
    own = principal_subject(principal)
    return frozenset((own.key,)) if own is not None else frozenset()


def can_see(principal: Principal, case: Case) -> bool:
    """The applicant (through any portal), whoever acted for them, their window's clerks,
    operators and auditors."""
    if case.owner in principal.owner_keys and principal.actor in (None, case.actor):
        return True
    if principal.actor is None and _applicant_keys(principal) & case.applicants:
        return True  # a co-applicant (the seller of the buyer's application), at any portal
    if principal.actor is not None and principal.actor == case.actor:
        return True
    if principal.roles & STAFF_ROLES:
        return True
    is_clerk = "clerk" in principal.roles or principal.actor_role == "clerk"
    return is_clerk and principal.client_id == case.client_id


class MaterialsHook(Protocol):
    """免证办 at intake (gateway/licences): the materials the gateway finds and verifies itself
    for a new case. Returns the case with those materials (and what goes to the handling
    province) added, and the timeline entries that record each verification; raises a client
    error (nothing is written) when one cannot be found or is not valid. Also returns the
    counted grant uses it spent (a licence of someone else's), which ``give_back`` returns when
    the case is then not written; on its own refusal it gives back what it spent itself."""

    async def bind(
        self, new: NewCase, body: Mapping[str, Any], status: CaseStatus, principal: Principal
    ) -> tuple[NewCase, list[TransitionDraft], list[tuple[GrantAsk, GrantUse]]]: ...

    async def give_back(self, spent: list[tuple[GrantAsk, GrantUse]]) -> None: ...


class CaseService:
    def __init__(
        self,
        store: CaseStore,
        catalog: Callable[[], Catalog],
        *,
        audit: CaseAudit | None = None,
        callback_keys: Mapping[str, bytes] | None = None,
        on_written: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        subjects: SubjectRule | None = None,
        materials: MaterialsHook | None = None,
    ) -> None:
        """``subjects``: the data-subject rule every application passes before it becomes a
        case (the app always gives it; tests of the case core alone may leave it out)."""
        self.subjects = subjects
        self.store = store
        self._catalog = catalog
        self._materials = materials
        self._audit = audit
        self._callback_keys = dict(callback_keys or {})
        self._on_written = on_written or (lambda: None)
        self._clock = clock
        self._intakes: set[asyncio.Future[Submitted]] = set()

    # --- taking a case in ---------------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        request_id: str | None = None,
        raw: bytes | None = None,
        machine: bool = False,
    ) -> Submitted:
        """Take an application in. ``raw``: the body as sent (a subject field sent twice is
        refused); ``machine``: a client-credentials client admitted by configuration."""
        catalog = self._catalog()
        await self._unambiguous(catalog, principal, body, raw, request_id)
        new, _routes = build_new_case(
            catalog,
            principal,
            body,
            idempotency_key=idempotency_key,
            request_id=request_id,
            machine=machine,
        )
        try:
            existing = await self.store.find(new.owner, new.idempotency_key)
        except (CaseStoreUnavailable, StaleCase) as exc:
            raise CaseStoreDown("The case could not be recorded; retry with the same key.") from exc
        if existing is not None:
            # The same application again (a client retry): the same case, nothing written.
            if existing.body_digest != new.body_digest:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was already used for a different application; "
                    "use a new key for a new application."
                )
            return Submitted(existing, False)
        # From here on the application is taken in (or certainly not, its uses given back) in a
        # task of its own that the caller only waits for: a handler cancelled on the way (its
        # client gone with handler cancellation on, the server stopping) never leaves a use
        # spent for an application that was not taken in, nor a write half-way. ``drain``
        # waits for the intakes nobody waits for any more.
        intake = asyncio.ensure_future(self._intake(catalog, principal, new, body, raw, request_id))
        self._intakes.add(intake)
        intake.add_done_callback(self._intake_ended)
        return await asyncio.shield(intake)

    def _intake_ended(self, intake: asyncio.Future[Submitted]) -> None:
        self._intakes.discard(intake)
        if not intake.cancelled():
            intake.exception()  # retrieved: its caller may have gone and nobody else asks

    async def drain(self) -> None:
        """Wait for every intake in flight to end, those whose caller has gone too: the app
        does before it closes the stores."""
        while self._intakes:
            await asyncio.wait(list(self._intakes))

    async def _intake(
        self,
        catalog: Catalog,
        principal: Principal,
        new: NewCase,
        body: Mapping[str, Any],
        raw: bytes | None,
        request_id: str | None,
    ) -> Submitted:
        """The subject rule, materials, the intake record and the write; every counted use
        back when the case is certainly not written."""
        binding = await self._bind(catalog, principal, new, body, raw)
        licences: list[tuple[GrantAsk, GrantUse]] = []
        try:
            result = await self._take_in(principal, new, body, binding, licences, request_id)
        except Exception as exc:
            if not isinstance(exc.__cause__, CommitUnknown):
                # Certainly no case: nothing came of the application, its uses go back.
                await self._give_back(binding, licences)
            raise
        if not result.created:
            # A twin request took the same application in first: that one spent its own uses.
            await self._give_back(binding, licences)
            return Submitted(result.case, False)
        self._on_written()
        log.info(
            "case_received",
            case_id=result.case.case_id,
            service=new.service,
            province=new.receiving_province,
        )
        return Submitted(result.case, True)

    async def _give_back(
        self, binding: Binding | None, licences: list[tuple[GrantAsk, GrantUse]]
    ) -> None:
        """Every counted use spent for an application that was not taken in; never raises."""
        if binding is not None and binding.spent and self.subjects is not None:
            await self.subjects.give_back(binding.spent)
        if licences and self._materials is not None:
            await self._materials.give_back(licences)

    async def _take_in(
        self,
        principal: Principal,
        new: NewCase,
        body: Mapping[str, Any],
        binding: Binding | None,
        licences: list[tuple[GrantAsk, GrantUse]],
        request_id: str | None,
    ) -> CreateResult:
        """Everything after the subject rule: materials, the intake record, the write.
        ``licences``: filled with the counted uses the materials hook spent."""
        if binding is not None:
            new = dataclasses.replace(
                new,
                authorisation_ref=binding.grant,
                applicants=tuple(s.key for s in binding.subjects),
            )
        try:
            at = iso_now()
            initial = [TransitionDraft(CaseStatus.RECEIVED, CaseStatus.RECEIVED, actor=new.actor)]
            if new.originals_checked_by is not None:
                initial.append(
                    TransitionDraft(
                        CaseStatus.RECEIVED,
                        CaseStatus.ORIGINALS_CHECKED,
                        actor=new.originals_checked_by,
                        reason="原件核验 at the receiving window",
                    )
                )
            if self._materials is not None:
                # 免证办: licences found and verified at their issuers, before any case exists.
                new, verified, spent = await self._materials.bind(
                    new, body, initial[-1].to_status, principal
                )
                licences.extend(spent)
                initial.extend(verified)
            if self._audit is not None:
                # Fail-closed: no audit record, no case (AuditUnavailable → 503, nothing written).
                await self._audit.record(
                    AuditEvent(
                        type=EventType.CASE_TRANSITION,
                        request_id=request_id,
                        case_id=new.case_id,
                        **_application_fields(new),
                        outcome=initial[-1].to_status.value,
                        request_digest=new.body_digest,
                        extra={
                            "mode": new.mode.value,
                            "parts": len(new.parts),
                            **(binding.audit_extra() if binding is not None else {}),
                        },
                    ),
                    required=True,
                )
            event_case = new.as_case(at, initial[-1].to_status)
            events = [case_event(event_case, "case_received", initial[-1].to_status, at)]
            result = await self.store.create(
                new, at=at, now=self._clock(), initial=initial, events=events
            )
        except IdempotencyConflict:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used for a different application; "
                "use a new key for a new application."
            ) from None
        except (CaseStoreUnavailable, StaleCase) as exc:
            raise CaseStoreDown("The case could not be recorded; retry with the same key.") from exc
        return result

    async def _unambiguous(
        self,
        catalog: Catalog,
        principal: Principal,
        body: Mapping[str, Any],
        raw: bytes | None,
        request_id: str | None,
    ) -> None:
        """A field naming a data subject sent twice (or in two spellings) is refused before the
        application is even read further, and the refusal recorded."""
        code, data = body.get("service"), body.get("data")
        service = catalog.services.get(code) if isinstance(code, str) else None
        if self.subjects is None or service is None or not isinstance(data, Mapping):
            return
        try:
            check_unambiguous(service_subject_fields(service), data, raw)
        except SubjectFieldAmbiguous as exc:
            await self._record_refusal(
                exc,
                request_id=request_id,
                actor=principal.actor,
                principal=principal.subject,
                identity_level=principal.level,
                client=principal.client_id,
                service=code,
                purpose=str(body.get("purpose", ""))[:200] or None,
            )
            raise

    async def _record_refusal(self, error: GatewayError, **fields: Any) -> None:
        """An application refused before anything of it was written: one record saying so."""
        if self._audit is not None:
            await self._audit.record(
                AuditEvent(
                    type=EventType.CASE_TRANSITION,
                    outcome="refused",
                    error_code=error.code,
                    **fields,
                ),
                required=False,
            )

    async def _bind(
        self,
        catalog: Catalog,
        principal: Principal,
        new: NewCase,
        body: Mapping[str, Any],
        raw: bytes | None,
    ) -> Binding | None:
        """The subject rule for an application (before anything is written); a refusal is
        recorded (fail-closed like the intake record) and raised."""
        rule = self.subjects
        if rule is None:
            return None
        service = catalog.service(new.service)
        declaration = case_declaration(service, [p.operation for p in new.parts])
        consent = grant_ids(body.get("consent"))
        named: list[Named] = []
        try:
            if declaration is None:
                raise NotDataSubject("This service declares no data subject; nothing is taken in.")
            named = rule.named(declaration, new.data, raw)
            return await rule.check(
                principal,
                declaration,
                named,
                consent=consent,
                service=new.service,
                operation=None,
                purpose=new.purpose,
                requester_province=new.receiving_province,
            )
        except GatewayError as exc:
            extra: dict[str, Any] = {"subjects": [n.subject.key for n in named]}
            if consent:
                extra["grant"] = ",".join(consent)
            await self._record_refusal(
                exc,
                request_id=new.request_id,
                **_application_fields(new),
                extra=extra,
            )
            raise

    # --- 补齐补正: the applicant supplies what the handling province asked for ------------------

    async def supplement(
        self,
        principal: Principal,
        case_id: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        request_id: str | None = None,
    ) -> Supplemented:
        """Take a supplement in for the part that asked, fail-closed on the audit trail like an
        intake, and written with its outbox entry in one transaction. The same key and body
        again answer the same supplement; the key with another body is refused."""
        for _ in range(5):
            case = await self.get_for(principal, case_id)
            if not can_supplement(principal, case):
                raise Forbidden(
                    "Only the applicant, whoever acts for them or their window's clerk supplies "
                    "material for a case."
                )
            draft = check_envelope(body, idempotency_key)
            seen = next((s for s in case.supplements if s.idempotency_key == draft.key), None)
            if seen is not None:
                if seen.body_digest != draft.digest:
                    raise IdempotencyKeyReused(
                        "This Idempotency-Key was already used for another supplement of this "
                        "case; use a new key for a new supplement."
                    )
                return Supplemented(case, seen, False)
            at = iso_now()
            supplement = build_supplement(
                self._catalog(), case, draft, actor=principal.acting, at=at
            )
            step = plan_supplement(case, supplement, at=at, now=self._clock())
            if self._audit is not None:
                # Fail-closed, like an intake: no audit record, no supplement.
                for event in transition_events(
                    case, step.transitions, request_id=request_id, request_digest=draft.digest
                ):
                    await self._audit.record(event, required=True)
            try:
                stored = await self.store.commit(step)
            except (StaleCase, SupplementSeen):
                continue  # changed meanwhile, or this very supplement taken by a twin request
            except IdempotencyConflict:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was already used for another supplement of this case."
                ) from None
            except CaseStoreUnavailable as exc:
                raise CaseStoreDown(
                    "The supplement could not be recorded; retry with the same key."
                ) from exc
            self._on_written()
            log.info("case_supplement_received", case_id=case.case_id, service=case.service)
            return Supplemented(stored, stored.supplement(supplement.sequence), True)
        raise CaseStoreDown("The case kept changing; send the supplement again with the same key.")

    # --- reading ------------------------------------------------------------------------------

    async def get_for(self, principal: Principal, case_id: str) -> Case:
        try:
            case = await self.store.get(case_id)
        except CaseStoreUnavailable as exc:
            raise CaseStoreDown() from exc
        # Someone else's case is "not found", so ids cannot be probed.
        if case is None or not can_see(principal, case):
            raise CaseNotFound(f"There is no case {case_id!r} you may see.")
        return case

    async def list_for(
        self, principal: Principal, *, queue: bool = False, limit: int = 100
    ) -> list[CaseSummary]:
        """Mine; or, for a clerk asking for the queue, the cases taken in at their window."""
        try:
            if queue:
                if not ("clerk" in principal.roles or principal.actor_role == "clerk"):
                    raise Forbidden("The window queue is for clerks.")
                return await self.store.list_cases(client_id=principal.client_id, limit=limit)
            applicants = sorted(_applicant_keys(principal)) if principal.actor is None else []
            return await self.store.list_cases(
                owners=principal.owner_keys, applicants=applicants, limit=limit
            )
        except CaseStoreUnavailable as exc:
            raise CaseStoreDown() from exc

    # --- operators ----------------------------------------------------------------------------

    async def replay(self, case_id: str, *, operator: str, request_id: str | None = None) -> Case:
        """Put a dead-lettered case's entries back on the schedule."""
        for _ in range(5):
            case = await self.store.get(case_id)
            if case is None:
                raise CaseNotFound(f"There is no case {case_id!r}.")
            dead = [e for e in await self.store.entries(case_id) if e.state == "dead"]
            try:
                step = plan_replay(case, dead, at=iso_now(), now=self._clock(), actor=operator)
            except NotReplayable:
                raise CaseNotReplayable(f"Case {case_id!r} has nothing dead-lettered.") from None
            try:
                stored = await self.store.commit(step)
            except StaleCase:
                continue
            await self._audit_transitions(case, step.transitions, request_id)
            self._on_written()
            log.info("case_replayed", case_id=case_id)
            return stored
        raise CaseStoreDown("The case kept changing; try the replay again.")

    # --- callbacks ----------------------------------------------------------------------------

    def verify_callback(self, system: str, raw: bytes, timestamp: str, signature: str) -> None:
        """HMAC-SHA256 over ``timestamp + "." + body`` with the system's registered key, and a
        timestamp within five minutes; CallbackRefused otherwise."""
        key = self._callback_keys.get(system)
        if key is None:
            raise CallbackRefused("This system is not registered for callbacks.")
        # Decimal Unix seconds only: float() also reads "NaN", "inf" and "1e999", and a NaN
        # passes any window since every comparison with it is false.
        if not CALLBACK_TIMESTAMP.fullmatch(timestamp):
            raise CallbackRefused("X-Tongban-Timestamp must be Unix seconds.")
        moment = float(timestamp)
        if not math.isfinite(moment) or not abs(self._clock() - moment) <= CALLBACK_SKEW:
            raise CallbackRefused("The callback's timestamp is too far from now.")
        expected = hmac.new(key, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        given = signature.removeprefix("sha256=")
        if not hmac.compare_digest(expected, given):
            raise CallbackRefused("The callback's signature does not match.")

    async def callback(
        self, system: str, body: Mapping[str, Any], *, request_id: str | None = None
    ) -> CallbackOutcome:
        """Apply a verified callback: idempotent and ordered by the system's ``sequence``."""
        sequence = body.get("sequence")
        case_id = body.get("case_id")
        status = body.get("status")
        if (
            not isinstance(sequence, int)
            or sequence < 1
            or not isinstance(case_id, str)
            or status not in CALLBACK_STATUSES
        ):
            raise CallbackInvalid(
                "A callback carries sequence (≥1), case_id and a status in "
                f"{list(CALLBACK_STATUSES)}."
            )
        result = body.get("result")
        if result is not None and not isinstance(result, dict):
            raise CallbackInvalid("result must be an object.")
        asked = body.get("supplement")
        if asked is not None and not isinstance(asked, dict):
            raise CallbackInvalid("supplement must be an object.")
        changed = False
        at = iso_now()

        def plan(case: Case) -> Step:
            nonlocal changed
            mine = [p for p in case.parts if p.system == system]
            if "part" in body:
                mine = [p for p in mine if p.number == body["part"]]
            if len(mine) != 1:
                raise CallbackInvalid("The callback does not name a part this system handles.")
            part = mine[0]
            target = part_status_of(str(status))
            changes: list[PartChange] = []
            # News about a part still pending, unknown or dead-lettered proves the system has
            # it (our record of the send lost a race, or the send's answer was lost): the
            # worker then finds the part delivered and sends nothing more.
            if part_moves_on(part.status, target) and not answered_already(case, part, target):
                request = None
                if target == PartStatus.SUPPLEMENT_REQUESTED:
                    request = read_request(asked, at)  # 补齐补正: what is missing
                changes.append(PartChange(part.number, target, result=result, supplement=request))
            changed = bool(changes)
            try:
                return plan_step(
                    case,
                    changes,
                    at=at,
                    now=self._clock(),
                    reason=f"callback {system}#{sequence}",
                    callback=(system, sequence),
                )
            except IllegalTransition:
                changed = False
                return plan_step(case, [], at=at, now=self._clock(), callback=(system, sequence))

        try:
            # Planned under the case's lock: parts answered at the same instant all land.
            applied = await self.store.apply(case_id, plan)
        except CallbackSeen as seen:
            known = await self.store.get(case_id)
            if known is not None:
                await self._audit_callback(system, known, seen.reason, request_id)
            return CallbackOutcome(seen.reason, case_id)
        except CaseStoreUnavailable as exc:
            raise CaseStoreDown("The callback could not be recorded; send it again.") from exc
        if applied is None or applied.step is None:
            raise CallbackInvalid("No such case.")
        await self._audit_callback(system, applied.case, "applied", request_id)
        await self._audit_transitions(applied.case, applied.step.transitions, request_id)
        if applied.step.schedule or applied.step.events:
            self._on_written()
        return CallbackOutcome("applied" if changed else "unchanged", case_id)

    async def audit_refused_callback(
        self, system: str, error_code: str, request_id: str | None
    ) -> None:
        if self._audit is None:
            return
        await self._audit.record(
            AuditEvent(
                type=EventType.CALLBACK_RECEIVED,
                request_id=request_id,
                system=system,
                outcome="denied",
                error_code=error_code,
            ),
            required=False,
        )

    async def _audit_callback(
        self, system: str, case: Case, outcome: str, request_id: str | None
    ) -> None:
        if self._audit is None:
            return
        await self._audit.record(
            AuditEvent(
                type=EventType.CALLBACK_RECEIVED,
                request_id=request_id,
                case_id=case.case_id,
                principal=case.subject,
                service=case.service,
                system=system,
                outcome=outcome,
            ),
            required=False,
        )

    async def _audit_transitions(
        self, case: Case, drafts: tuple[TransitionDraft, ...], request_id: str | None
    ) -> None:
        if self._audit is None:
            return
        for event in transition_events(case, drafts, request_id=request_id):
            await self._audit.record(event, required=False)


def _application_fields(new: NewCase) -> dict[str, Any]:
    """What the records of an application say of it: its intake and a refusal before it."""
    return {
        "actor": new.actor,
        "principal": new.subject,
        "identity_level": new.level,
        "client": new.client_id,
        "service": new.service,
        "receiving_province": new.receiving_province,
        "handling_province": ",".join(p.handling_province for p in new.parts),
        "operation": ",".join(p.operation for p in new.parts),
        "purpose": new.purpose,
    }
