"""The delivery worker: drives outbox entries through the catalogue's routes.

    claim (lease) → send / reconcile / poll / hand an event to the sink → one Step committed

Each delivery is one pass through the route's stack (its in-memory retries, breaker, timeout,
adapter); between passes the schedule is persisted (exponential backoff with jitter, attempt
cap, then dead-letter with the reason). The back-end sees the case's own idempotency key and
the case id on every send. A submission whose operation may not be resent (policy ``never``)
and which may have reached the back-end goes to ``outcome_unknown`` and is reconciled by the
operation's status query; it is never resent blindly. A supplement (补齐补正) is sent by the
same rules, through the operation ``case.supplement_with`` names, under the part's key
extended by the supplement's sequence. Several workers (instances) may share a
PostgreSQL outbox: leases keep their claims apart and hand a dead worker's entries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from gateway.adapter import CallContext
from gateway.cases.audit import CaseAudit, transition_events
from gateway.cases.config import CaseOperation, DeliverySettings, PartOutcome
from gateway.cases.events import EventSink, EventSinkError
from gateway.cases.lifecycle import iso_now, plan_step
from gateway.cases.linked import part_input, results_by_name, unwinding
from gateway.cases.model import (
    FAILED,
    TERMINAL,
    Case,
    IllegalTransition,
    Part,
    PartStatus,
    compensation_key,
    delivery_key,
    part_moves_on,
    supplement_key,
)
from gateway.cases.store import (
    CaseStore,
    CaseStoreError,
    EntryKind,
    FinishEntry,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    PartChange,
    Step,
)
from gateway.cases.supplements import requested_supplement, supplement_input
from gateway.catalog import CallResult, Catalog, Route
from gateway.errors import BackendError, GatewayError, ValidationFailed, is_retryable
from gateway.identity.subject_keys import SubjectKeys
from gateway.mapping import compile_mapping
from gateway.pipeline import CallTrace, failure_cause, is_refusal
from gateway.subjects import named_subjects

log = structlog.get_logger("tongban.cases")

Sleep = Callable[[float], Awaitable[None]]
_OUTCOME_TO_PART: Final[Mapping[str, PartStatus]] = {
    "forwarded": PartStatus.FORWARDED,
    "processing": PartStatus.PROCESSING,
    "done": PartStatus.DONE,
    "supplement_requested": PartStatus.SUPPLEMENT_REQUESTED,
    "not_accepted": PartStatus.NOT_ACCEPTED,
    "returned": PartStatus.RETURNED,
}


def part_status_of(outcome: PartOutcome | str) -> PartStatus:
    return _OUTCOME_TO_PART.get(outcome, PartStatus.FORWARDED)


def outcome_of(answer: Any, config: CaseOperation | None) -> PartStatus:
    """What a back-end's canonical answer says about the part; 'forwarded' unless configured."""
    if config is None or config.status_field is None or not isinstance(answer, Mapping):
        return PartStatus.FORWARDED
    value: Any = answer
    for segment in config.status_field.split("."):
        value = value.get(segment) if isinstance(value, Mapping) else None
    if value is None:
        return PartStatus.FORWARDED
    return part_status_of(config.status_values.get(str(value), "forwarded"))


@dataclass(slots=True)
class WorkerStats:
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    outcome_unknown: int = 0
    reconciled: int = 0
    events: int = 0
    lease_lost: int = 0
    claims: int = 0
    empty_claims: int = 0


class _Deferred(Exception):
    """An attempt failed in a way worth another try later (or, where it is raised while
    preparing a send, in a way only an operator can mend: a dead letter with ``cause``)."""

    def __init__(
        self, error_code: str, retry_after: float | None = None, cause: str | None = None
    ) -> None:
        super().__init__(error_code)
        self.error_code = error_code
        self.retry_after = retry_after
        self.cause = cause


class DeliveryWorker:
    def __init__(
        self,
        store: CaseStore,
        catalog: Callable[[], Catalog],
        settings: DeliverySettings,
        *,
        events: EventSink,
        audit: CaseAudit | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        subject_keys: SubjectKeys | None = None,
    ) -> None:
        """``subject_keys``: how each send names its data subjects to the handling province
        (the case was bound to them when it was taken in)."""
        self._subject_keys = subject_keys
        self._store = store
        self._catalog = catalog
        self._settings = settings
        self._events = events
        self._audit = audit
        self.owner = owner or f"worker-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.stats = WorkerStats()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"case-worker-{self.owner}")

    def notify(self) -> None:
        """New work was written here: claim now instead of at the next poll."""
        self._wakeup.set()

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop claiming, let attempts in flight finish for up to ``grace`` seconds."""
        self._stopping = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            # Cleared before the claim, so work written while this batch runs wakes the loop
            # again at once instead of waiting for the next poll.
            self._wakeup.clear()
            try:
                # A short batch means nothing else was due: claiming again at once would only
                # come back empty (one wasted round trip per wake-up, and with several instances
                # sharing the outbox, most wake-ups are short).
                backlog = await self._claim_and_work() >= self._settings.batch
                failures = 0
            except CaseStoreError as exc:
                failures += 1
                log.warning("case_outbox_claim_failed", error_code=type(exc).__name__)
                backlog = False
                await self._sleep(min(0.1 * 2**failures, 5.0))
            except Exception:
                log.exception("case_worker_failed")
                backlog = False
                await self._sleep(1.0)
            if not backlog and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.poll_interval):
                        await self._wakeup.wait()

    async def run_once(self) -> bool:
        """Claim one batch and work it; True when there was something to do."""
        return await self._claim_and_work() > 0

    async def _claim_and_work(self) -> int:
        entries = await self._store.claim(
            self.owner,
            now=self._clock(),
            lease=self._settings.lease,
            limit=self._settings.batch,
        )
        self.stats.claims += 1
        if not entries:
            self.stats.empty_claims += 1
            return 0
        await asyncio.gather(*(self._work(entry) for entry in entries))
        return len(entries)

    async def drain(self, *, rounds: int = 1000) -> None:
        """Work until nothing is due (tests and the CLI; the loop does this in production)."""
        for _ in range(rounds):
            if not await self.run_once():
                return

    # --- one entry ----------------------------------------------------------------------------

    async def _work(self, entry: OutboxEntry) -> None:
        try:
            if entry.kind == EntryKind.EVENT:
                await self._send_event(entry)
                return
            case = await self._store.get(entry.case_id, timeline=False)
            if case is None or entry.part is None:
                await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "closed"))
                return
            if case.status in TERMINAL:
                await self._after_closing(entry, case)
                return
            if entry.kind in (EntryKind.DELIVER, EntryKind.SUPPLEMENT):
                await self._deliver(entry, case)
            elif entry.kind == EntryKind.COMPENSATE:
                await self._compensate(entry, case)
            elif entry.kind == EntryKind.RECONCILE:
                await self._reconcile(entry, case)
            else:
                await self._poll(entry, case)
        except LeaseLost:
            self.stats.lease_lost += 1
            log.warning("case_entry_lease_lost", case_id=entry.case_id, entry=entry.entry_id)
        except CaseStoreError as exc:
            # The lease runs out and the entry comes back: nothing is lost.
            log.warning(
                "case_entry_store_failed", case_id=entry.case_id, error_code=type(exc).__name__
            )
        except Exception:
            log.exception("case_entry_failed", case_id=entry.case_id, entry=entry.entry_id)

    async def _after_closing(self, entry: OutboxEntry, case: Case) -> None:
        """A closed case sends nothing more; but a send a dead worker held may have reached its
        back-end before the case closed: it is asked about (never sent again: the payload is
        erased) so the part says what happened."""
        assert entry.part is not None
        status = case.part(entry.part).status
        if entry.kind == EntryKind.DELIVER and entry.abandoned and status == PartStatus.PENDING:
            config = self._route(case, case.part(entry.part).operation, entry.part).operation.case
            await self._to_outcome_unknown(entry, case, "worker_lost_during_send", config)
        elif entry.kind == EntryKind.RECONCILE and status == PartStatus.OUTCOME_UNKNOWN:
            await self._reconcile(entry, case)
        else:
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "closed"))

    def _backoff(self, attempts: int, retry_after: float | None = None) -> float:
        s = self._settings
        wait = float(min(s.max_backoff, s.initial_backoff * 2 ** max(attempts - 1, 0)))
        wait += self._rng.uniform(0, s.jitter) if s.jitter else 0.0
        return max(wait, retry_after or 0.0)

    def _exhausted(self, entry: OutboxEntry) -> bool:
        return entry.attempts + 1 >= self._settings.max_attempts

    def _context(self, case: Case, part: int, operation_key: str | None) -> CallContext:
        handling = case.part(part).handling_province
        return CallContext(
            request_id=f"{case.case_id}-{uuid.uuid4().hex[:8]}",
            purpose=case.purpose,
            service=case.service,
            receiving_province=case.receiving_province,
            handling_province=handling,
            principal=case.subject,
            actor=case.actor or case.subject,
            level=case.level,
            case_id=case.case_id,
            authorisation_ref=case.authorisation_ref,
            idempotency_key=operation_key,
            client=case.client_id,
        )

    def _with_subjects(self, route: Route, data: Any, context: CallContext) -> CallContext:
        """The context naming the data subjects of what is sent (keys for the audit record,
        the handling province's hashes for the back-end)."""
        keys = self._subject_keys
        declaration = route.service.subject_of(route.operation_name)
        if keys is None or not isinstance(data, Mapping) or not isinstance(declaration, tuple):
            return context
        named = named_subjects(keys, declaration, data)
        mac = keys.province_mac(context.handling_province)
        hashes = ",".join(f"{n.subject.kind}:{n.province_hash(mac)}" for n in named)
        return dataclasses.replace(
            context, subjects=tuple(n.subject.key for n in named), subject_hashes=hashes or None
        )

    async def _invoke(
        self, route: Route, data: Any, context: CallContext
    ) -> tuple[CallResult | None, BackendError | None, CallTrace]:
        context = self._with_subjects(route, data, context)
        trace = CallTrace()
        try:
            return await route.invoke(data, context, trace), None, trace
        except BackendError as exc:
            trace.error_code = exc.code
            return None, exc, trace
        except GatewayError as exc:
            # Not the back-end's answer (busy, audit down, a mapping problem): nothing was sent
            # for certain enough to try again later; the attempt cap still applies.
            trace.error_code = exc.code
            raise _Deferred(exc.code) from exc

    def _route(self, case: Case, operation: str, part: int) -> Route:
        handling = case.part(part).handling_province
        return self._catalog().route(case.service, operation, case.receiving_province, handling)

    def _sending(
        self, case: Case, part: Part, submit: Route, sequence: int | None
    ) -> tuple[Route, Any, str]:
        """What one send carries, through which route, under which key: the application, or
        (补齐补正) one of its supplements through the operation ``case.supplement_with`` names."""
        if sequence is None:
            return submit, self._input(case, part, submit), delivery_key(case.case_id, part.number)
        config = submit.operation.case
        if config is None or config.supplement_with is None:
            raise _Deferred("no_supplement_operation_configured")
        try:
            supplement = case.supplement(sequence)
        except KeyError:
            raise _Deferred("supplement_not_found") from None
        route = self._route(case, config.supplement_with, part.number)
        key = supplement_key(case.case_id, part.number, sequence)
        return route, supplement_input(config, part, supplement), key

    def _input(self, case: Case, part: Part, route: Route) -> Any:
        """What a part sends: the application data, or (a linked part) its own input made from
        the application and the answers of the parts it waited for, checked against its
        operation's schema now that it exists."""
        if part.name is None:
            return case.data
        linked = self._catalog().service(case.service).linked
        spec = linked.parts.get(part.name) if linked is not None else None
        if spec is None:
            raise _Deferred("case.part_not_configured", cause=f"no linked part {part.name!r}")
        data = part_input(spec.input, case.data, results_by_name(case))
        try:
            route.validate(data)
        except ValidationFailed as exc:
            first = (exc.extra.get("errors") or [{}])[0]
            where = f"{first.get('path', '')}: {first.get('message', '')}"
            raise _Deferred("case.part_input_invalid", cause=where[:300]) from None
        return data

    async def _deliver(self, entry: OutboxEntry, case: Case) -> None:
        """Send a part's application (a deliver entry) or a supplement of it (a supplement
        entry): the same retry, dead-letter and outcome-unknown rules for both."""
        assert entry.part is not None
        part = case.part(entry.part)
        if part.status != PartStatus.PENDING:
            # Delivered already (a replayed or duplicated entry): never send twice.
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "delivered"))
            return
        sequence = _supplement_of(entry)
        try:
            submit = self._route(case, part.operation, part.number)
            route, data, key = self._sending(case, part, submit, sequence)
        except GatewayError as exc:
            await self._dead_letter(entry, case, exc.code)
            return
        except _Deferred as missing:
            # Configuration changed under a waiting supplement, or a linked part's input does
            # not fit its operation: an operator fixes and replays.
            await self._dead_letter(entry, case, missing.error_code, missing.cause)
            return
        policy = route.operation.retry
        config = submit.operation.case
        if unwinding(case) and not entry.abandoned and sequence is None:
            # A required part failed while this one waited its turn: it is never sent.
            failed = next(p for p in case.parts if p.required and p.status in FAILED)
            await self._advance(
                entry,
                case,
                PartChange(part.number, PartStatus.CANCELLED),
                reason=f"not sent: {failed.label} is {failed.status}",
            )
            return
        if entry.abandoned and policy == "never":
            # A worker died holding this send: it may have been made. Ask, do not resend.
            await self._to_outcome_unknown(entry, case, "worker_lost_during_send", config)
            return
        context = self._context(case, part.number, key)
        try:
            result, error, trace = await self._invoke(route, data, context)
        except _Deferred as deferred:
            await self._retry_later(entry, case, deferred.error_code)
            return
        if result is not None:
            outcome = outcome_of(result.data, config)
            if route.operation.kind != "submit":
                outcome = PartStatus.DONE  # a linked check: its answer is its result
            answer = _as_result(result.data)
            if sequence is not None:
                # A supplement's answer adds to the application's (whose number polls use).
                answer = {**(part.result or {}), **answer}
            await self._advance(
                entry,
                case,
                _part_change(part.number, outcome, answer, config),
                schedule=self._poll_after(case, part.number, outcome, config),
                trace=trace,
                result=result,
                reason="delivered" if sequence is None else f"supplement #{sequence} delivered",
            )
            self.stats.delivered += 1
            return
        assert error is not None
        if policy == "never" and error.reached_backend and not is_refusal(error):
            # It may have been processed: ask, never resend blindly.
            await self._to_outcome_unknown(entry, case, error.code, config)
        elif (is_retryable(error) or not error.reached_backend) and not is_refusal(error):
            await self._retry_later(
                entry, case, error.code, error.retry_after, cause=failure_cause(error)
            )
        else:
            # The handling system understood and refused the application: 不予受理.
            await self._advance(
                entry,
                case,
                PartChange(part.number, PartStatus.NOT_ACCEPTED, error_code=error.code),
                trace=trace,
                reason=error.code,
            )

    def _poll_after(
        self, case: Case, part: int, outcome: PartStatus, config: CaseOperation | None
    ) -> tuple[NewEntry, ...]:
        if config is None or config.poll_with is None:
            return ()
        if outcome not in (PartStatus.FORWARDED, PartStatus.PROCESSING):
            return ()
        due = self._clock() + self._settings.status_poll_interval
        payload = {"polls": 0, "round": case.supplements_of(part)}
        return (NewEntry(EntryKind.POLL, due, part, payload),)

    async def _poll(self, entry: OutboxEntry, case: Case) -> None:
        assert entry.part is not None
        part = case.part(entry.part)
        if part.status not in (PartStatus.FORWARDED, PartStatus.PROCESSING):
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "settled"))
            return
        round_ = case.supplements_of(part.number)
        if (entry.payload or {}).get("round", 0) != round_:
            # Scheduled before a supplement (补齐补正) was sent: the send started its own polls.
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "superseded"))
            return
        try:
            submit = self._route(case, part.operation, part.number)
            config = submit.operation.case
            if config is None or config.poll_with is None:
                raise _Deferred("no_poll_configured")
            query = self._route(case, config.poll_with, part.number)
        except (GatewayError, _Deferred) as exc:
            # Configuration changed under a waiting case: stop polling, callbacks still work.
            reason = exc.error_code if isinstance(exc, _Deferred) else exc.code
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", reason))
            return
        data = compile_mapping(config.poll_input or None).apply(part.result or {})
        try:
            result, error, trace = await self._invoke(
                query, data, self._context(case, part.number, None)
            )
        except _Deferred as deferred:
            await self._retry_later(entry, case, deferred.error_code, dead=False)
            return
        if result is None:
            assert error is not None
            await self._retry_later(
                entry,
                case,
                error.code,
                error.retry_after,
                dead=False,
                cause=failure_cause(error),
            )
            return
        outcome = outcome_of(result.data, config)
        polls = int((entry.payload or {}).get("polls", 0)) + 1
        again: tuple[NewEntry, ...] = ()
        if (
            outcome in (PartStatus.FORWARDED, PartStatus.PROCESSING)
            and polls < self._settings.max_status_polls
        ):
            due = self._clock() + self._settings.status_poll_interval
            payload = {"polls": polls, "round": round_}
            again = (NewEntry(EntryKind.POLL, due, part.number, payload),)
        moves = part_moves_on(part.status, outcome)
        answer = _as_result(result.data)
        change = _part_change(part.number, outcome, answer, config) if moves else None
        await self._advance(
            entry,
            case,
            change,
            schedule=again,
            trace=trace,
            result=result,
            reason="status query",
        )

    async def _to_outcome_unknown(
        self, entry: OutboxEntry, case: Case, error_code: str, config: CaseOperation | None
    ) -> None:
        assert entry.part is not None
        self.stats.outcome_unknown += 1
        log.warning("case_outcome_unknown", case_id=case.case_id, error_code=error_code)
        schedule: tuple[NewEntry, ...] = ()
        if config is not None and config.reconcile_with is not None:
            sequence = _supplement_of(entry)
            carried = {"supplement": sequence} if sequence is not None else None
            schedule = (NewEntry(EntryKind.RECONCILE, self._clock(), entry.part, carried),)
            await self._advance(
                entry,
                case,
                PartChange(entry.part, PartStatus.OUTCOME_UNKNOWN, error_code=error_code),
                schedule=schedule,
                reason=error_code,
            )
            return
        # Nobody can ask the back-end: an operator must find out; the send is not repeated.
        await self._advance(
            entry,
            case,
            PartChange(entry.part, PartStatus.OUTCOME_UNKNOWN, error_code=error_code),
            reason=f"{error_code}; no status query configured",
        )

    async def _reconcile(self, entry: OutboxEntry, case: Case) -> None:
        assert entry.part is not None
        part = case.part(entry.part)
        if part.status != PartStatus.OUTCOME_UNKNOWN:
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "settled"))
            return
        try:
            submit = self._route(case, part.operation, part.number)
            config = submit.operation.case
            if config is None or config.reconcile_with is None:
                raise _Deferred("no_status_query_configured")
            query = self._route(case, config.reconcile_with, part.number)
        except (GatewayError, _Deferred) as exc:
            reason = exc.error_code if isinstance(exc, _Deferred) else exc.code
            await self._dead_letter(entry, case, reason)
            return
        sequence = _supplement_of(entry)
        key = delivery_key(case.case_id, part.number)
        if sequence is not None:
            key = supplement_key(case.case_id, part.number, sequence)
        try:
            result, error, trace = await self._invoke(
                query, {"idempotency_key": key}, self._context(case, part.number, None)
            )
        except _Deferred as deferred:
            await self._retry_later(entry, case, deferred.error_code)
            return
        if result is None:
            assert error is not None
            await self._retry_later(
                entry, case, error.code, error.retry_after, cause=failure_cause(error)
            )
            return
        self.stats.reconciled += 1
        answer = result.data if isinstance(result.data, Mapping) else {}
        if answer.get("found") is True:
            outcome = outcome_of(answer, config)
            found = _as_result(answer)
            if sequence is not None:
                found = {**(part.result or {}), **found}
            await self._advance(
                entry,
                case,
                _part_change(part.number, outcome, found, config),
                schedule=self._poll_after(case, part.number, outcome, config),
                trace=trace,
                result=result,
                reason="reconciled: the back-end has it",
            )
            return
        if sequence is None and (case.status in TERMINAL or unwinding(case)):
            # Proven absent, and the case stopped meanwhile: it is never sent.
            await self._advance(
                entry,
                case,
                PartChange(part.number, PartStatus.CANCELLED),
                trace=trace,
                result=result,
                reason="reconciled: never arrived; not sent, the case stopped",
            )
            return
        # Proven absent: a send now cannot duplicate anything.
        resend = NewEntry(EntryKind.DELIVER, self._clock(), part.number)
        if sequence is not None:
            resend = NewEntry(EntryKind.SUPPLEMENT, self._clock(), part.number, entry.payload)
        await self._advance(
            entry,
            case,
            PartChange(part.number, PartStatus.PENDING),
            schedule=(resend,),
            trace=trace,
            result=result,
            reason="reconciled: never arrived; sending again",
        )

    async def _compensate(self, entry: OutboxEntry, case: Case) -> None:
        """Undo an accepted part of a linked case whose required part failed: its operation's
        ``compensate_with``, under the part's undo key, with the retry and dead-letter rules of
        a delivery (a dead undo is ``compensation_failed``: an operator replays it)."""
        assert entry.part is not None
        part = case.part(entry.part)
        if part.status != PartStatus.COMPENSATING:
            await self._store.finish(FinishEntry(entry.entry_id, self.owner, "done", "settled"))
            return
        try:
            if part.compensate_with is None:
                raise _Deferred("case.no_compensation_configured")
            config = self._route(case, part.operation, part.number).operation.case
            route = self._route(case, part.compensate_with, part.number)
            spec = config.compensate_input if config is not None else {}
            data = compile_mapping(spec or None).apply(part.result or {})
            route.validate(data)
        except ValidationFailed as exc:
            first = (exc.extra.get("errors") or [{}])[0]
            cause = f"{first.get('path', '')}: {first.get('message', '')}"[:300]
            await self._dead_letter(entry, case, "case.compensation_input_invalid", cause)
            return
        except GatewayError as exc:
            await self._dead_letter(entry, case, exc.code)
            return
        except _Deferred as missing:
            await self._dead_letter(entry, case, missing.error_code, missing.cause)
            return
        context = self._context(case, part.number, compensation_key(case.case_id, part.number))
        try:
            result, error, trace = await self._invoke(route, data, context)
        except _Deferred as deferred:
            await self._retry_later(entry, case, deferred.error_code)
            return
        if result is not None:
            undone = {**(part.result or {}), "undo": _as_result(result.data)}
            await self._advance(
                entry,
                case,
                PartChange(part.number, PartStatus.COMPENSATED, result=undone),
                trace=trace,
                result=result,
                reason="undone",
            )
            return
        assert error is not None
        if is_retryable(error) or not error.reached_backend:
            await self._retry_later(
                entry, case, error.code, error.retry_after, cause=failure_cause(error)
            )
        else:
            # The system refused the undo: only an operator can settle it with them.
            await self._dead_letter(entry, case, error.code, failure_cause(error))

    async def _retry_later(
        self,
        entry: OutboxEntry,
        case: Case,
        error_code: str,
        retry_after: float | None = None,
        *,
        dead: bool = True,
        cause: str | None = None,
    ) -> None:
        if self._exhausted(entry):
            if dead:
                await self._dead_letter(entry, case, error_code, cause)
            else:
                await self._store.finish(
                    FinishEntry(entry.entry_id, self.owner, "done", error_code, cause)
                )
            return
        due = self._clock() + self._backoff(entry.attempts + 1, retry_after)
        await self._store.reschedule(
            entry.entry_id, self.owner, due=due, error=error_code, cause=cause
        )
        self.stats.retried += 1
        log.info(
            "case_delivery_deferred",
            case_id=case.case_id,
            attempt=entry.attempts + 1,
            error_code=error_code,
        )

    async def _dead_letter(
        self, entry: OutboxEntry, case: Case, reason: str, cause: str | None = None
    ) -> None:
        """Give up on the entry: its part is dead-lettered with the last error and, beside it,
        the first failure the system itself gave (a breaker's pause hides it otherwise)."""
        assert entry.part is not None
        self.stats.dead_lettered += 1
        first = entry.cause or cause
        log.warning(
            "case_dead_lettered",
            case_id=case.case_id,
            attempt=entry.attempts + 1,
            error_code=reason,
            cause=first,
        )
        stopped = PartStatus.DEAD_LETTERED
        if entry.kind == EntryKind.COMPENSATE:
            stopped = PartStatus.COMPENSATION_FAILED  # the undo could not be delivered
        await self._advance(
            entry,
            case,
            PartChange(entry.part, stopped, error_code=reason, cause=first),
            finish_state="dead",
            reason=reason,
            cause=first,
        )

    async def _advance(
        self,
        entry: OutboxEntry,
        case: Case,
        change: PartChange | None,
        *,
        schedule: Sequence[NewEntry] = (),
        trace: CallTrace | None = None,
        result: CallResult | None = None,
        reason: str | None = None,
        finish_state: str = "done",
        cause: str | None = None,
    ) -> None:
        """Commit the part change with the entry's finish, planned on the case as it is stored
        at that moment (under its lock): other parts' answers landing at the same instant are
        in the plan, never a reason to give up."""
        finish = FinishEntry(
            entry.entry_id,
            self.owner,
            "dead" if finish_state == "dead" else "done",
            reason if finish_state == "dead" else None,
            cause,
        )
        at = iso_now()

        def plan(fresh: Case) -> Step | None:
            moved = change
            if moved is not None and not part_moves_on(fresh.part(moved.part).status, moved.status):
                moved = None  # a callback got there first with newer news
            try:
                return plan_step(
                    fresh,
                    [moved] if moved is not None else [],
                    at=at,
                    now=self._clock(),
                    reason=reason,
                    finish=finish,
                    schedule=schedule,
                )
            except IllegalTransition as exc:
                # The case moved on meanwhile (closed, say): keep what it says.
                log.info("case_update_superseded", case_id=fresh.case_id, status=str(exc.current))
                return None

        applied = await self._store.apply(
            case.case_id, plan, otherwise=FinishEntry(entry.entry_id, self.owner, "done", "late")
        )
        if applied is not None and applied.step is not None:
            step = applied.step
            if step.events or any(new.due <= step.now for new in step.schedule):
                self.notify()  # what this step made due (an event, the next part) goes out now
            await self._audit_step(applied.case, step, trace, result)

    async def _audit_step(
        self, case: Case, step: Step, trace: CallTrace | None, result: CallResult | None
    ) -> None:
        if self._audit is None or not step.transitions:
            return
        for event in transition_events(
            case,
            step.transitions,
            attempts=trace.attempts if trace else None,
            error_code=trace.error_code if trace else None,
            request_digest=result.request_digest if result else None,
            response_digest=result.response_digest if result else None,
        ):
            try:
                await self._audit.record(event, required=False)
            except GatewayError as exc:
                log.warning("case_audit_failed", case_id=case.case_id, error_code=exc.code)

    async def _send_event(self, entry: OutboxEntry) -> None:
        event = dict(entry.payload or {})
        event["event_id"] = f"{entry.case_id}:{entry.entry_id}"
        try:
            await self._events.send(event)
        except EventSinkError as exc:
            if self._exhausted(entry):
                await self._store.finish(
                    FinishEntry(entry.entry_id, self.owner, "dead", f"event_sink: {exc}")
                )
                return
            due = self._clock() + self._backoff(entry.attempts + 1)
            await self._store.reschedule(entry.entry_id, self.owner, due=due, error="event_sink")
            return
        self.stats.events += 1
        await self._store.finish(FinishEntry(entry.entry_id, self.owner))


def _as_result(data: Any) -> Mapping[str, Any]:
    return data if isinstance(data, Mapping) else {"value": data}


def _supplement_of(entry: OutboxEntry) -> int | None:
    """The supplement (补齐补正) a supplement entry sends or a reconciliation looks for."""
    sequence = (entry.payload or {}).get("supplement")
    return int(sequence) if sequence is not None else None


def _part_change(
    part: int, outcome: PartStatus, answer: Mapping[str, Any], config: CaseOperation | None
) -> PartChange:
    """The part's new status and answer; with a 补齐补正 request, what the answer asks for."""
    asked = None
    if outcome == PartStatus.SUPPLEMENT_REQUESTED:
        asked = requested_supplement(answer, config, iso_now())
    return PartChange(part, outcome, result=answer, supplement=asked)
