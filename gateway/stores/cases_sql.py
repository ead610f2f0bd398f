"""The CaseStore logic shared by SQLite and PostgreSQL: one SQL text per statement, written with
``?`` placeholders (PostgreSQL numbers them), inside a transaction the subclass opens.

Only the claim differs between the two (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already makes the claimer the only writer).
"""

# ruff: noqa: S608 - SQL is built only from this package's constants and runs of '?' marks;
# every value is a bound parameter.

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

import orjson

from gateway.cases.model import (
    Case,
    CaseEvent,
    CaseStatus,
    CaseSummary,
    MaterialRef,
    Mode,
    NewCase,
    Part,
    PartStatus,
    Supplement,
    SupplementRequest,
    Transition,
)
from gateway.cases.store import (
    Applied,
    CallbackSeen,
    CaseCounts,
    CreateResult,
    EntryKind,
    FinishEntry,
    IdempotencyConflict,
    LeaseLost,
    NewEntry,
    OutboxEntry,
    StaleCase,
    Step,
    SupplementSeen,
    TransitionDraft,
)
from gateway.stores.migrations import Migration


def case_migrations(serial: str, real: str) -> tuple[Migration, ...]:
    """The case tables; ``serial`` / ``real`` are the dialect's auto-id and float types."""
    return (
        Migration(
            1,
            "cases, parts, timeline, outbox, callback heads",
            (
                """CREATE TABLE cases (
                    case_id TEXT PRIMARY KEY,
                    subject TEXT NOT NULL,
                    idempotency_key TEXT NOT NULL,
                    body_digest TEXT NOT NULL,
                    service TEXT NOT NULL,
                    mode TEXT NOT NULL,
                    actor TEXT,
                    actor_role TEXT,
                    client_id TEXT NOT NULL,
                    level TEXT NOT NULL,
                    receiving_province TEXT NOT NULL,
                    purpose TEXT NOT NULL,
                    authorisation_ref TEXT,
                    status TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL,
                    materials TEXT NOT NULL,
                    data TEXT,
                    UNIQUE (subject, idempotency_key)
                )""",
                "CREATE INDEX cases_by_client ON cases (client_id, updated_at)",
                "CREATE INDEX cases_by_subject ON cases (subject, updated_at)",
                "CREATE INDEX cases_by_status ON cases (status)",
                """CREATE TABLE case_parts (
                    case_id TEXT NOT NULL REFERENCES cases (case_id),
                    part INTEGER NOT NULL,
                    handling_province TEXT NOT NULL,
                    operation TEXT NOT NULL,
                    system TEXT NOT NULL,
                    status TEXT NOT NULL,
                    result TEXT,
                    error_code TEXT,
                    updated_at TEXT NOT NULL,
                    PRIMARY KEY (case_id, part)
                )""",
                """CREATE TABLE case_transitions (
                    case_id TEXT NOT NULL REFERENCES cases (case_id),
                    sequence INTEGER NOT NULL,
                    at TEXT NOT NULL,
                    from_status TEXT,
                    to_status TEXT NOT NULL,
                    part INTEGER,
                    part_status TEXT,
                    actor TEXT,
                    reason TEXT,
                    PRIMARY KEY (case_id, sequence)
                )""",
                f"""CREATE TABLE case_outbox (
                    entry_id {serial},
                    case_id TEXT NOT NULL REFERENCES cases (case_id),
                    part INTEGER,
                    kind TEXT NOT NULL,
                    state TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    claims INTEGER NOT NULL DEFAULT 0,
                    due {real} NOT NULL,
                    lease_owner TEXT,
                    lease_until {real},
                    payload TEXT,
                    last_error TEXT,
                    created_at TEXT NOT NULL
                )""",
                "CREATE INDEX case_outbox_due ON case_outbox (due) WHERE state = 'pending'",
                "CREATE INDEX case_outbox_by_case ON case_outbox (case_id)",
                "CREATE INDEX case_outbox_dead ON case_outbox (entry_id) WHERE state = 'dead'",
                """CREATE TABLE case_callbacks (
                    system TEXT PRIMARY KEY,
                    last_sequence BIGINT NOT NULL,
                    updated_at TEXT NOT NULL
                )""",
            ),
        ),
        Migration(
            2,
            "case owner: the person key, the same through every portal",
            (
                # Nullable so SQLite can add it; every write sets it, older rows get the subject
                # (their owner before person keys), which keeps (owner, key) unique from the start.
                "ALTER TABLE cases ADD COLUMN owner TEXT",
                "UPDATE cases SET owner = subject",
                # Idempotency is per owner: one person's retry through another portal is the
                # same application, and two instances racing on it still write one case.
                "CREATE UNIQUE INDEX cases_owner_key ON cases (owner, idempotency_key)",
                "CREATE INDEX cases_by_owner ON cases (owner, updated_at)",
            ),
        ),
        Migration(
            3,
            "supplements (补齐补正): what a handling province asked for, what was supplied",
            (
                "ALTER TABLE case_parts ADD COLUMN supplement TEXT",
                """CREATE TABLE case_supplements (
                    case_id TEXT NOT NULL REFERENCES cases (case_id),
                    sequence INTEGER NOT NULL,
                    part INTEGER NOT NULL,
                    idempotency_key TEXT NOT NULL,
                    body_digest TEXT NOT NULL,
                    materials TEXT NOT NULL,
                    note TEXT,
                    actor TEXT NOT NULL,
                    submitted_at TEXT NOT NULL,
                    PRIMARY KEY (case_id, sequence),
                    UNIQUE (case_id, idempotency_key)
                )""",
            ),
        ),
        Migration(
            5,
            "the first cause of a delivery's failures, beside its last error",
            (
                # A dead letter reading backend.circuit_open must still say what the system
                # itself answered (a 503, say) before the breaker paused it.
                "ALTER TABLE case_outbox ADD COLUMN cause TEXT",
                "ALTER TABLE case_parts ADD COLUMN cause TEXT",
            ),
        ),
        Migration(
            6,
            "linked parts (联动办理): names, dependencies, undo operation; combined outcome",
            (
                "ALTER TABLE case_parts ADD COLUMN name TEXT",
                "ALTER TABLE case_parts ADD COLUMN after_parts TEXT",
                # NULL reads as required and as a submission: every part before was both.
                "ALTER TABLE case_parts ADD COLUMN optional INTEGER",
                "ALTER TABLE case_parts ADD COLUMN reads_only INTEGER",
                "ALTER TABLE case_parts ADD COLUMN compensate_with TEXT",
                "ALTER TABLE cases ADD COLUMN outcome TEXT",
            ),
        ),
        Migration(
            7,
            "co-applicants: the data subjects of an application, each of whom sees the case",
            (
                """CREATE TABLE case_applicants (
                    case_id TEXT NOT NULL,
                    applicant TEXT NOT NULL,
                    PRIMARY KEY (case_id, applicant)
                )""",
                "CREATE INDEX case_applicants_by_key ON case_applicants (applicant)",
            ),
        ),
    )


class Tx(Protocol):
    """One open transaction (or, for reads, a connection) in a dialect-neutral shape."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


OUTBOX_COLUMNS: Final = (
    "entry_id, case_id, part, kind, state, attempts, claims, due, payload, last_error, created_at,"
    " cause"
)
_CASE_COLUMNS: Final = (
    "case_id, service, mode, subject, actor, actor_role, client_id, level, receiving_province,"
    " purpose, authorisation_ref, idempotency_key, body_digest, status, version, created_at,"
    " updated_at, materials, data, owner, outcome"
)
# The same application: same owner and key, or (filed before person keys) same subject and key.
_SAME_APPLICATION: Final = (
    "SELECT case_id, body_digest FROM cases"
    " WHERE idempotency_key = ? AND (owner = ? OR subject = ?)"
)
_INSERT_ENTRY: Final = (
    "INSERT INTO case_outbox (case_id, part, kind, state, due, payload, created_at)"
    " VALUES (?, ?, ?, 'pending', ?, ?, ?)"
)
_INSERT_TRANSITION: Final = (
    "INSERT INTO case_transitions"
    " (case_id, sequence, at, from_status, to_status, part, part_status, actor, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _request(stored: Any) -> SupplementRequest | None:
    if not isinstance(stored, dict):
        return None
    return SupplementRequest(
        materials=tuple(stored.get("materials") or ()),
        message=stored.get("message"),
        deadline=stored.get("deadline"),
        requested_at=stored.get("requested_at"),
    )


def entry_from_row(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        entry_id=int(row[0]),
        case_id=row[1],
        part=row[2],
        kind=EntryKind(row[3]),
        state=row[4],
        attempts=int(row[5]),
        claims=int(row[6]),
        due=float(row[7]),
        payload=_load(row[8]),
        last_error=row[9],
        created_at=row[10],
        cause=row[11],
    )


def _event_entry(event: CaseEvent, now: float) -> NewEntry:
    return NewEntry(EntryKind.EVENT, now, None, event.as_json())


class SqlCaseStore:
    """Shared statements; subclasses provide ``_tx`` (write transaction), ``_read`` and claim."""

    keep_events: bool = True
    """Write events as outbox entries for the event sink; off when the sink is ``none`` (there
    is nowhere to hand them, and each would cost a claim and a finish)."""

    _LOCK_ROW: str = ""
    """What makes a SELECT take the row's write lock (PostgreSQL: FOR UPDATE); SQLite's
    BEGIN IMMEDIATE makes the transaction the only writer already."""

    def _tx(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        raise NotImplementedError

    # --- writing a new case --------------------------------------------------------------------

    async def create(
        self,
        case: NewCase,
        *,
        at: str,
        now: float,
        initial: Sequence[TransitionDraft],
        events: Sequence[CaseEvent],
    ) -> CreateResult:
        status = initial[-1].to_status if initial else CaseStatus.RECEIVED
        created = False
        async with self._tx() as tx:
            rows = await tx.fetch(_SAME_APPLICATION, case.idempotency_key, case.owner, case.subject)
            if rows:
                existing_id, digest = rows[0][0], rows[0][1]
                if digest != case.body_digest:
                    raise IdempotencyConflict(existing_id)
                case_id = existing_id
            else:
                case_id = case.case_id
                inserted = await tx.execute(
                    f"INSERT INTO cases ({_CASE_COLUMNS}) VALUES"
                    " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, NULL)"
                    # (owner, key) or (subject, key): either way the same application.
                    " ON CONFLICT DO NOTHING",
                    case.case_id,
                    case.service,
                    case.mode.value,
                    case.subject,
                    case.actor,
                    case.actor_role,
                    case.client_id,
                    case.level,
                    case.receiving_province,
                    case.purpose,
                    case.authorisation_ref,
                    case.idempotency_key,
                    case.body_digest,
                    status.value,
                    at,
                    at,
                    _json([m.as_json() for m in case.materials]),
                    _json(case.data),
                    case.owner,
                )
                if inserted:
                    created = True
                    await self._write_new(tx, case, at, now, initial, events)
        if not created and not rows:
            # Another instance inserted the same application between our read and write.
            async with self._read() as conn:
                again = await conn.fetch(
                    _SAME_APPLICATION, case.idempotency_key, case.owner, case.subject
                )
            found = await self.get(again[0][0]) if again else None
            if found is None:
                raise StaleCase("the concurrent insert is not visible yet")
            if found.body_digest != case.body_digest:
                raise IdempotencyConflict(found.case_id)
            return CreateResult(found, False)
        if created:
            timeline = tuple(
                Transition(
                    n,
                    at,
                    d.from_status if n > 1 else None,
                    d.to_status,
                    actor=d.actor,
                    reason=d.reason,
                )
                for n, d in enumerate(initial, start=1)
            )
            return CreateResult(case.as_case(at, status, timeline), True)
        stored = await self.get(case_id)
        assert stored is not None, "found in the transaction above"
        return CreateResult(stored, False)

    async def _write_new(
        self,
        tx: Tx,
        case: NewCase,
        at: str,
        now: float,
        initial: Sequence[TransitionDraft],
        events: Sequence[CaseEvent],
    ) -> None:
        for number, part in enumerate(case.parts):
            await tx.execute(
                "INSERT INTO case_parts (case_id, part, handling_province, operation, system,"
                " status, updated_at, name, after_parts, optional, compensate_with, reads_only)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                case.case_id,
                number,
                part.handling_province,
                part.operation,
                part.system,
                (PartStatus.WAITING if part.after else PartStatus.PENDING).value,
                at,
                part.name,
                _json(list(part.after)) if part.after else None,
                None if part.required else 1,
                part.compensate_with,
                1 if part.reads_only else None,
            )
        for applicant in dict.fromkeys(case.applicants):
            await tx.execute(
                "INSERT INTO case_applicants (case_id, applicant) VALUES (?, ?)",
                case.case_id,
                applicant,
            )
        for sequence, draft in enumerate(initial, start=1):
            await self._insert_transition(tx, case.case_id, sequence, at, draft)
        # A linked part that waits for others is sent once they are done (plan_step).
        entries = [
            NewEntry(EntryKind.DELIVER, now, n)
            for n, part in enumerate(case.parts)
            if not part.after
        ]
        if self.keep_events:
            entries += [_event_entry(e, now) for e in events]
        for entry in entries:
            await self._insert_entry(tx, case.case_id, entry, at)

    @staticmethod
    async def _insert_transition(
        tx: Tx, case_id: str, sequence: int, at: str, draft: TransitionDraft
    ) -> None:
        await tx.execute(
            _INSERT_TRANSITION,
            case_id,
            sequence,
            at,
            draft.from_status.value if sequence > 1 else None,
            draft.to_status.value,
            draft.part,
            draft.part_status.value if draft.part_status else None,
            draft.actor,
            draft.reason,
        )

    @staticmethod
    async def _insert_entry(tx: Tx, case_id: str, entry: NewEntry, at: str) -> None:
        await tx.execute(
            _INSERT_ENTRY,
            case_id,
            entry.part,
            entry.kind.value,
            entry.due,
            _json(entry.payload),
            at,
        )

    # --- applying a step -----------------------------------------------------------------------

    async def commit(self, step: Step) -> Case:
        async with self._tx() as tx:
            await self._write_step(tx, step, check_version=True)
        found = await self.get(step.case_id)
        assert found is not None
        return found

    async def apply(
        self,
        case_id: str,
        plan: Callable[[Case], Step | None],
        *,
        otherwise: FinishEntry | None = None,
    ) -> Applied | None:
        async with self._tx() as tx:
            # Under the case's lock (PostgreSQL: the row's FOR UPDATE; SQLite: BEGIN IMMEDIATE
            # already made this the only writer), so the plan sees every committed part.
            case = await self._read_case(tx, case_id, lock=True, timeline=False)
            if case is None:
                if otherwise is not None:
                    await self._finish(tx, otherwise)
                return None
            step = plan(case)
            if step is not None:
                await self._write_step(tx, step, check_version=False)
            elif otherwise is not None:
                await self._finish(tx, otherwise)
        return Applied(case, step)

    async def _write_step(self, tx: Tx, step: Step, *, check_version: bool) -> None:
        # The case row first: on PostgreSQL this takes its lock before anything else.
        changed = await tx.execute(
            "UPDATE cases SET status = ?, version = version + 1, updated_at = ?"
            + (", data = NULL" if step.erase_data else "")
            + (", outcome = ?" if step.outcome is not None else "")
            + " WHERE case_id = ?"
            + (" AND version = ?" if check_version else ""),
            step.status.value,
            step.at,
            *((_json(step.outcome),) if step.outcome is not None else ()),
            step.case_id,
            *((step.expected_version,) if check_version else ()),
        )
        if not changed:
            raise StaleCase(step.case_id)
        if step.finish is not None:
            await self._finish(tx, step.finish)
        if step.callback is not None:
            await self._advance_callback(tx, step.callback, step.at)
        if step.supplement is not None:
            await self._insert_supplement(tx, step.case_id, step.supplement)
        for change in step.parts:
            await tx.execute(
                "UPDATE case_parts SET status = ?, error_code = ?, cause = ?, updated_at = ?"
                + (", result = ?" if change.result is not None else "")
                + " WHERE case_id = ? AND part = ?",
                change.status.value,
                change.error_code,
                change.cause,
                step.at,
                *((_json(change.result),) if change.result is not None else ()),
                step.case_id,
                change.part,
            )
            if change.supplement is not None:
                await tx.execute(
                    "UPDATE case_parts SET supplement = ? WHERE case_id = ? AND part = ?",
                    _json(change.supplement.as_json()),
                    step.case_id,
                    change.part,
                )
        if step.transitions:
            rows = await tx.fetch(
                "SELECT COALESCE(MAX(sequence), 0) FROM case_transitions WHERE case_id = ?",
                step.case_id,
            )
            sequence = int(rows[0][0])
            for draft in step.transitions:
                sequence += 1
                await self._insert_transition(tx, step.case_id, sequence, step.at, draft)
        for entry_id in step.revive:
            await tx.execute(
                "UPDATE case_outbox SET state = 'pending', attempts = 0, claims = 0,"
                " due = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE entry_id = ? AND case_id = ? AND state = 'dead'",
                step.now,
                entry_id,
                step.case_id,
            )
        events = step.events if self.keep_events else ()
        for entry in (*step.schedule, *(_event_entry(e, step.now) for e in events)):
            await self._insert_entry(tx, step.case_id, entry, step.at)

    @staticmethod
    async def _finish(tx: Tx, finish: FinishEntry) -> None:
        owned = await tx.execute(
            "UPDATE case_outbox SET state = ?, attempts = attempts + 1,"
            " claims = attempts + 1, lease_owner = NULL, lease_until = NULL,"
            " last_error = ?, cause = COALESCE(cause, ?)"
            " WHERE entry_id = ? AND lease_owner = ? AND state = 'pending'",
            finish.state,
            finish.error,
            finish.cause,
            finish.entry_id,
            finish.owner,
        )
        if not owned:
            raise LeaseLost(str(finish.entry_id))

    async def finish(self, finish: FinishEntry) -> None:
        async with self._tx() as tx:
            await self._finish(tx, finish)

    @staticmethod
    async def _insert_supplement(tx: Tx, case_id: str, supplement: Supplement) -> None:
        # After the case row's version check: a concurrent taker of the same key has bumped
        # the version already, so this read sees every supplement committed before ours.
        rows = await tx.fetch(
            "SELECT sequence, body_digest FROM case_supplements"
            " WHERE case_id = ? AND idempotency_key = ?",
            case_id,
            supplement.idempotency_key,
        )
        if rows:
            if rows[0][1] != supplement.body_digest:
                raise IdempotencyConflict(case_id)
            raise SupplementSeen(int(rows[0][0]))
        await tx.execute(
            "INSERT INTO case_supplements (case_id, sequence, part, idempotency_key, body_digest,"
            " materials, note, actor, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            case_id,
            supplement.sequence,
            supplement.part,
            supplement.idempotency_key,
            supplement.body_digest,
            _json([m.as_json() for m in supplement.materials]),
            supplement.note,
            supplement.actor,
            supplement.submitted_at,
        )

    @staticmethod
    async def _advance_callback(tx: Tx, callback: tuple[str, int], at: str) -> None:
        system, sequence = callback
        rows = await tx.fetch("SELECT last_sequence FROM case_callbacks WHERE system = ?", system)
        if rows:
            last = int(rows[0][0])
            if sequence == last:
                raise CallbackSeen("duplicate")
            if sequence < last:
                raise CallbackSeen("out_of_order")
            await tx.execute(
                "UPDATE case_callbacks SET last_sequence = ?, updated_at = ? WHERE system = ?",
                sequence,
                at,
                system,
            )
        else:
            await tx.execute(
                "INSERT INTO case_callbacks (system, last_sequence, updated_at) VALUES (?, ?, ?)",
                system,
                sequence,
                at,
            )

    async def reschedule(
        self, entry_id: int, owner: str, *, due: float, error: str, cause: str | None = None
    ) -> None:
        async with self._tx() as tx:
            owned = await tx.execute(
                "UPDATE case_outbox SET attempts = attempts + 1, claims = attempts + 1,"
                " due = ?, last_error = ?, cause = COALESCE(cause, ?),"
                " lease_owner = NULL, lease_until = NULL"
                " WHERE entry_id = ? AND lease_owner = ? AND state = 'pending'",
                due,
                error,
                cause,
                entry_id,
                owner,
            )
            if not owned:
                raise LeaseLost(str(entry_id))

    # --- reading -------------------------------------------------------------------------------

    async def find(self, owner: str, idempotency_key: str) -> Case | None:
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT case_id FROM cases WHERE owner = ? AND idempotency_key = ?",
                owner,
                idempotency_key,
            )
        return await self.get(rows[0][0]) if rows else None

    async def get(self, case_id: str, *, timeline: bool = True) -> Case | None:
        async with self._read() as conn:
            return await self._read_case(conn, case_id, timeline=timeline)

    async def _read_case(
        self, conn: Tx, case_id: str, *, lock: bool = False, timeline: bool = True
    ) -> Case | None:
        """The case as ``conn`` sees it; ``lock``: take the case row's write lock first;
        ``timeline``: with its timeline (planning and delivering never read it)."""
        rows = await conn.fetch(
            f"SELECT {_CASE_COLUMNS} FROM cases WHERE case_id = ?"
            + (self._LOCK_ROW if lock else ""),
            case_id,
        )
        if not rows:
            return None
        parts = await conn.fetch(
            "SELECT part, handling_province, operation, system, status, result, error_code,"
            " updated_at, supplement, cause, name, after_parts, optional, compensate_with,"
            " reads_only FROM case_parts WHERE case_id = ? ORDER BY part",
            case_id,
        )
        supplements = await conn.fetch(
            "SELECT sequence, part, idempotency_key, body_digest, materials, note, actor,"
            " submitted_at FROM case_supplements WHERE case_id = ? ORDER BY sequence",
            case_id,
        )
        lines = (
            await conn.fetch(
                "SELECT sequence, at, from_status, to_status, part, part_status, actor, reason"
                " FROM case_transitions WHERE case_id = ? ORDER BY sequence",
                case_id,
            )
            if timeline
            else []
        )
        applicants = (
            await conn.fetch("SELECT applicant FROM case_applicants WHERE case_id = ?", case_id)
            if timeline
            else []
        )
        # A lease is kept until the entry is finished or claimed again, so a dead worker's
        # send still counts as possibly made.
        held = await conn.fetch(
            "SELECT part FROM case_outbox WHERE case_id = ? AND state = 'pending'"
            " AND lease_owner IS NOT NULL AND kind IN ('deliver', 'supplement')",
            case_id,
        )
        row = rows[0]
        return Case(
            case_id=row[0],
            service=row[1],
            mode=Mode(row[2]),
            subject=row[3],
            owner=row[19] or row[3],
            actor=row[4],
            actor_role=row[5],
            client_id=row[6],
            level=row[7],
            receiving_province=row[8],
            purpose=row[9],
            authorisation_ref=row[10],
            idempotency_key=row[11],
            body_digest=row[12],
            status=CaseStatus(row[13]),
            version=int(row[14]),
            created_at=row[15],
            updated_at=row[16],
            materials=tuple(MaterialRef(**m) for m in _load(row[17]) or ()),
            data=_load(row[18]),
            outcome=_load(row[20]),
            in_flight=frozenset(int(h[0]) for h in held if h[0] is not None),
            applicants=frozenset(str(a[0]) for a in applicants),
            parts=tuple(
                Part(
                    number=int(p[0]),
                    handling_province=p[1],
                    operation=p[2],
                    system=p[3],
                    status=PartStatus(p[4]),
                    result=_load(p[5]),
                    error_code=p[6],
                    updated_at=p[7],
                    supplement=_request(_load(p[8])),
                    cause=p[9],
                    name=p[10],
                    after=tuple(_load(p[11]) or ()),
                    required=not p[12],
                    compensate_with=p[13],
                    reads_only=bool(p[14]),
                )
                for p in parts
            ),
            supplements=tuple(
                Supplement(
                    sequence=int(s[0]),
                    part=int(s[1]),
                    idempotency_key=s[2],
                    body_digest=s[3],
                    materials=tuple(MaterialRef(**m) for m in _load(s[4]) or ()),
                    note=s[5],
                    actor=s[6],
                    submitted_at=s[7],
                )
                for s in supplements
            ),
            transitions=tuple(
                Transition(
                    sequence=int(t[0]),
                    at=t[1],
                    from_status=CaseStatus(t[2]) if t[2] else None,
                    to_status=CaseStatus(t[3]),
                    part=t[4],
                    part_status=PartStatus(t[5]) if t[5] else None,
                    actor=t[6],
                    reason=t[7],
                )
                for t in lines
            ),
        )

    async def open_cases_with_material(self, ref: str, *, limit: int = 1000) -> list[str]:
        pattern = "%" + ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT case_id, materials FROM cases WHERE status <> ?"
                " AND materials LIKE ? ESCAPE '\\' ORDER BY case_id LIMIT ?",
                CaseStatus.CLOSED.value,
                pattern,
                limit,
            )
        # LIKE narrows; the materials decide (a reference that merely contains this one).
        return [
            str(row[0]) for row in rows if any(m.get("ref") == ref for m in _load(row[1]) or ())
        ]

    async def open_case_materials(
        self, ref_prefix: str, *, limit: int = 1000
    ) -> list[tuple[str, MaterialRef]]:
        escaped = ref_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT case_id, materials FROM cases WHERE status <> ?"
                " AND materials LIKE ? ESCAPE '\\' ORDER BY case_id LIMIT ?",
                CaseStatus.CLOSED.value,
                '%"ref":"' + escaped + "%",
                limit,
            )
        return [
            (str(row[0]), MaterialRef(**m))
            for row in rows
            for m in _load(row[1]) or ()
            if str(m.get("ref", "")).startswith(ref_prefix)
        ]

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
        """``owners``: cases these own, and with ``applicants`` also those naming one of these
        keys as a co-applicant."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("subject", subject), ("client_id", client_id)):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        if owners is not None:
            mine = f"c.owner IN ({', '.join('?' for _ in owners) or 'NULL'})"
            args.extend(owners)
            if applicants:
                mine = (
                    f"({mine} OR c.case_id IN (SELECT a.case_id FROM case_applicants a"
                    f" WHERE a.applicant IN ({', '.join('?' for _ in applicants)})))"
                )
                args.extend(applicants)
            where.append(mine)
        if status is not None:
            where.append("c.status = ?")
            args.append(status.value)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT c.case_id, c.service, c.mode, c.status, c.receiving_province,"
                " c.created_at, c.updated_at, c.actor FROM cases c"
                f"{clause} ORDER BY c.updated_at DESC, c.case_id LIMIT ?",
                *args,
                limit,
            )
            provinces: dict[str, list[str]] = {}
            if rows:
                ids = [r[0] for r in rows]
                marks = ", ".join("?" for _ in ids)
                for part in await conn.fetch(
                    "SELECT case_id, handling_province FROM case_parts"
                    f" WHERE case_id IN ({marks}) ORDER BY case_id, part",
                    *ids,
                ):
                    provinces.setdefault(part[0], []).append(part[1])
        return [
            CaseSummary(
                case_id=r[0],
                service=r[1],
                mode=Mode(r[2]),
                status=CaseStatus(r[3]),
                receiving_province=r[4],
                handling_provinces=tuple(dict.fromkeys(provinces.get(r[0], ()))),
                created_at=r[5],
                updated_at=r[6],
                actor=r[7],
            )
            for r in rows
        ]

    async def entries(self, case_id: str) -> list[OutboxEntry]:
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM case_outbox WHERE case_id = ? ORDER BY entry_id",
                case_id,
            )
        return [entry_from_row(r) for r in rows]

    async def dead_letters(self, limit: int = 100) -> list[OutboxEntry]:
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {OUTBOX_COLUMNS} FROM case_outbox WHERE state = 'dead'"
                " ORDER BY entry_id LIMIT ?",
                limit,
            )
        return [entry_from_row(r) for r in rows]

    async def counts(self) -> CaseCounts:
        async with self._read() as conn:
            statuses = await conn.fetch("SELECT status, COUNT(*) FROM cases GROUP BY status")
            states = await conn.fetch(
                "SELECT state, COUNT(*) FROM case_outbox WHERE state <> 'done' GROUP BY state"
            )
        by_state: Mapping[str, int] = {r[0]: int(r[1]) for r in states}
        return CaseCounts(
            by_status={r[0]: int(r[1]) for r in statuses},
            pending_entries=by_state.get("pending", 0),
            dead_entries=by_state.get("dead", 0),
        )

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.fetch("SELECT 1")
