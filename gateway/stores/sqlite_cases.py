"""CaseStore on SQLite: the embedded default for `tongban demo` and one instance.

Two connections, each on a thread of its own (``TransactionThread``): a writer and a reader (WAL
lets it read while the writer writes). A store call is one hand-over to a thread and back: the
call's whole transaction, every statement from ``BEGIN`` to ``COMMIT`` (or ``ROLLBACK``), runs as
one function on the connection's thread. The statements are the shared ones of ``cases_sql``,
written as coroutines; on the thread they run against the ``sqlite3`` connection directly, never
suspend, and so the call's coroutine is driven to its end there without the event loop. Handing
each statement to the thread separately cost two or three loop wake-ups per statement, some
forty per delivered case. A caller that stops waiting (a timeout, a cancellation) does not stop
the function: its transaction still commits or rolls back as a whole.

``BEGIN IMMEDIATE`` makes every write transaction, claims included, the only writer of the file,
so even two processes on one file never claim the same entry; still, run one dispatcher.

A closed case's payload (用而不存) leaves the disk, not only the table: the writer runs with
``secure_delete`` (SQLite zeroes the freed space of a page, so the erased value is not left in
the database file), and after an erasure a ``wal_checkpoint(TRUNCATE)`` copies the pages into
the database file and empties the WAL, whose older frames still held the payload. The checkpoint
runs at most every ``ERASE_CHECKPOINT_INTERVAL`` seconds, on the writer connection, between
transactions (docs/operations.md, "Personal data at rest").
"""

# ruff: noqa: S608 - SQL is built only from this package's constants and runs of '?' marks;
# every value is a bound parameter.

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import structlog

from gateway.cases.model import Case, CaseEvent, CaseStatus, CaseSummary, MaterialRef, NewCase
from gateway.cases.store import (
    Applied,
    CaseCounts,
    CaseStoreUnavailable,
    CommitUnknown,
    CreateResult,
    FinishEntry,
    OutboxEntry,
    Step,
    TransitionDraft,
)
from gateway.stores.cases_sql import (
    OUTBOX_COLUMNS,
    SqlCaseStore,
    Tx,
    case_migrations,
    entry_from_row,
)
from gateway.stores.migrations import migrate_sqlite_blocking
from gateway.stores.sqlite import Synchronous, TransactionThread

log = structlog.get_logger("tongban.cases")
CASE_MIGRATIONS: Final = case_migrations("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")
ERASE_CHECKPOINT_INTERVAL: Final = 5.0
"""Seconds between an erasure and the checkpoint that takes it out of the WAL (at most)."""
T = TypeVar("T")
Role = Literal["write", "read"]


class _ThreadTx:
    """Statements on the ``sqlite3`` connection, called on its own thread: every call is
    finished when it returns, so a coroutine awaiting only these never suspends."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = self._conn.execute(sql, args)
        count = cursor.rowcount
        cursor.close()
        return int(count)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(self._conn.execute(sql, args).fetchall())


@dataclass
class _Hop:
    """One store call running on a connection's thread."""

    store: SqliteCaseStore
    conn: sqlite3.Connection
    role: Role
    erased: bool = False
    """A step erased a case's payload: the checkpoint that scrubs it is due."""


_here = threading.local()
"""The hop running on this thread, if any (``_here.hop``)."""


def _current(store: SqliteCaseStore) -> _Hop | None:
    hop: _Hop | None = getattr(_here, "hop", None)
    return hop if hop is not None and hop.store is store else None


def _drive(call: Coroutine[Any, Any, T]) -> T:
    """Run ``call`` to its end on this thread: it awaits only statements that finish at once."""
    try:
        call.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    call.close()
    raise RuntimeError("a case store call waited on the event loop inside its thread hop")


class SqliteCaseStore(SqlCaseStore):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        erase_checkpoint_interval: float = ERASE_CHECKPOINT_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._writer: TransactionThread | None = None
        self._reader: TransactionThread | None = None
        self._erase_interval = erase_checkpoint_interval
        self._erased = asyncio.Event()
        self._scrubber: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self._writer = await TransactionThread.open(
                self.path, synchronous=self._synchronous, name="cases"
            )
            await self._writer.call(
                lambda conn: migrate_sqlite_blocking(conn, "cases", CASE_MIGRATIONS)
            )
            await self._writer.call(lambda conn: conn.execute("PRAGMA secure_delete = ON"))
            self._reader = await TransactionThread.open(
                self.path, synchronous=self._synchronous, name="cases-read"
            )
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise CaseStoreUnavailable(f"cannot open the case database: {exc}") from exc
        self._scrubber = asyncio.create_task(self._scrub_forever(), name="case-erasure-checkpoint")

    async def aclose(self) -> None:
        if self._scrubber is not None:
            self._scrubber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrubber
            self._scrubber = None
        if self._erased.is_set():
            with contextlib.suppress(CaseStoreUnavailable):
                await self.scrub_erased()
        reader, writer = self._reader, self._writer
        self._reader = self._writer = None
        for thread in (reader, writer):
            if thread is not None:
                await thread.close()  # after the calls already handed to it

    # --- one hop per call ----------------------------------------------------------------------

    async def _hop(self, role: Role, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``call()`` driven to its end on the writer's or the reader's thread, in the caller's
        context (log fields); a call made from inside a hop runs in that hop."""
        if _current(self) is not None:
            return await call()
        thread = self._writer if role == "write" else self._reader
        if thread is None:
            raise CaseStoreUnavailable("the case store is not open")
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()

        def run(conn: sqlite3.Connection) -> T:
            hop = _here.hop = _Hop(self, conn, role)
            try:
                return context.run(_drive, call())
            finally:
                _here.hop = None
                if hop.erased:  # even when the caller has stopped waiting
                    loop.call_soon_threadsafe(self._erased.set)

        try:
            return await thread.call(run)
        except RuntimeError as exc:
            if (self._writer if role == "write" else self._reader) is None:
                raise CaseStoreUnavailable("the case store is not open") from exc  # closed
            raise

    def _conn(self) -> tuple[_Hop, sqlite3.Connection]:
        hop = _current(self)
        if hop is None:
            raise RuntimeError("a case store transaction outside a thread hop")
        return hop, hop.conn

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Tx]:
        hop, conn = self._conn()
        if hop.role != "write":
            raise RuntimeError("a write transaction on the reader")
        try:
            if conn.in_transaction:  # never expected: a transaction is one function
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, ValueError) as exc:
            raise CaseStoreUnavailable(type(exc).__name__) from exc
        try:
            yield _ThreadTx(conn)
        except BaseException:
            with contextlib.suppress(sqlite3.Error, ValueError):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except (sqlite3.Error, ValueError) as exc:
            with contextlib.suppress(sqlite3.Error, ValueError):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            # A failed sync of the write-ahead log may leave the commit on disk after all.
            raise CommitUnknown(type(exc).__name__) from exc

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        # One read transaction, so a multi-query read sees one snapshot (on the writer's thread
        # when a write call reads back what it committed).
        _, conn = self._conn()
        try:
            conn.execute("BEGIN")
        except (sqlite3.Error, ValueError) as exc:
            raise CaseStoreUnavailable(type(exc).__name__) from exc
        try:
            yield _ThreadTx(conn)
        except sqlite3.Error as exc:
            raise CaseStoreUnavailable(type(exc).__name__) from exc
        finally:
            with contextlib.suppress(sqlite3.Error, ValueError):
                conn.execute("COMMIT")

    async def _write_step(self, tx: Tx, step: Step, *, check_version: bool) -> None:
        await super()._write_step(tx, step, check_version=check_version)
        if step.erase_data:
            hop, _ = self._conn()
            hop.erased = True

    # --- erasure -------------------------------------------------------------------------------

    async def scrub_erased(self) -> bool:
        """Checkpoint the WAL into the database file and truncate it, so payloads erased since
        the last call are gone from both files. False when a reader still held old pages (the
        next erasure or call tries again)."""
        thread = self._writer
        if thread is None:
            raise CaseStoreUnavailable("the case store is not open")
        self._erased.clear()
        try:
            rows = await thread.call(
                lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            )
        except (sqlite3.Error, RuntimeError) as exc:
            self._erased.set()
            raise CaseStoreUnavailable(type(exc).__name__) from exc
        busy = bool(rows and rows[0][0])
        if busy:
            self._erased.set()
        return not busy

    async def _scrub_forever(self) -> None:
        while True:
            await self._erased.wait()
            await asyncio.sleep(self._erase_interval)
            try:
                if not await self.scrub_erased():
                    log.info("case_erasure_checkpoint_busy")
            except CaseStoreUnavailable as exc:
                log.warning("case_erasure_checkpoint_failed", error=str(exc))

    # --- the store's calls, each one hop -------------------------------------------------------

    async def create(
        self,
        case: NewCase,
        *,
        at: str,
        now: float,
        initial: Sequence[TransitionDraft],
        events: Sequence[CaseEvent],
    ) -> CreateResult:
        return await self._hop(
            "write",
            lambda: super(SqliteCaseStore, self).create(
                case, at=at, now=now, initial=initial, events=events
            ),
        )

    async def commit(self, step: Step) -> Case:
        return await self._hop("write", lambda: super(SqliteCaseStore, self).commit(step))

    async def apply(
        self,
        case_id: str,
        plan: Callable[[Case], Step | None],
        *,
        otherwise: FinishEntry | None = None,
    ) -> Applied | None:
        """``plan`` runs on the writer's thread, inside the transaction (as it runs inside it
        on PostgreSQL): it must not touch the event loop."""
        return await self._hop(
            "write",
            lambda: super(SqliteCaseStore, self).apply(case_id, plan, otherwise=otherwise),
        )

    async def finish(self, finish: FinishEntry) -> None:
        await self._hop("write", lambda: super(SqliteCaseStore, self).finish(finish))

    async def reschedule(
        self, entry_id: int, owner: str, *, due: float, error: str, cause: str | None = None
    ) -> None:
        await self._hop(
            "write",
            lambda: super(SqliteCaseStore, self).reschedule(
                entry_id, owner, due=due, error=error, cause=cause
            ),
        )

    async def claim(self, owner: str, *, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        return await self._hop(
            "write", lambda: self._claim(owner, now=now, lease=lease, limit=limit)
        )

    async def _claim(
        self, owner: str, *, now: float, lease: float, limit: int
    ) -> list[OutboxEntry]:
        async with self._tx() as tx:
            rows = await tx.fetch(
                "SELECT entry_id FROM case_outbox WHERE state = 'pending' AND due <= ?"
                " AND (lease_until IS NULL OR lease_until < ?) ORDER BY due LIMIT ?",
                now,
                now,
                limit,
            )
            if not rows:
                return []
            ids = [int(r[0]) for r in rows]
            marks = ", ".join("?" for _ in ids)
            claimed = await tx.fetch(
                "UPDATE case_outbox SET lease_owner = ?, lease_until = ?, claims = claims + 1"
                f" WHERE entry_id IN ({marks}) RETURNING {OUTBOX_COLUMNS}",
                owner,
                now + lease,
                *ids,
            )
        return sorted((entry_from_row(r) for r in claimed), key=lambda e: (e.due, e.entry_id))

    async def find(self, owner: str, idempotency_key: str) -> Case | None:
        return await self._hop(
            "read", lambda: super(SqliteCaseStore, self).find(owner, idempotency_key)
        )

    async def get(self, case_id: str, *, timeline: bool = True) -> Case | None:
        return await self._hop(
            "read", lambda: super(SqliteCaseStore, self).get(case_id, timeline=timeline)
        )

    async def open_cases_with_material(self, ref: str, *, limit: int = 1000) -> list[str]:
        return await self._hop(
            "read",
            lambda: super(SqliteCaseStore, self).open_cases_with_material(ref, limit=limit),
        )

    async def open_case_materials(
        self, ref_prefix: str, *, limit: int = 1000
    ) -> list[tuple[str, MaterialRef]]:
        return await self._hop(
            "read",
            lambda: super(SqliteCaseStore, self).open_case_materials(ref_prefix, limit=limit),
        )

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
        return await self._hop(
            "read",
            lambda: super(SqliteCaseStore, self).list_cases(
                subject=subject,
                owners=owners,
                applicants=applicants,
                client_id=client_id,
                status=status,
                limit=limit,
            ),
        )

    async def entries(self, case_id: str) -> list[OutboxEntry]:
        return await self._hop("read", lambda: super(SqliteCaseStore, self).entries(case_id))

    async def dead_letters(self, limit: int = 100) -> list[OutboxEntry]:
        return await self._hop("read", lambda: super(SqliteCaseStore, self).dead_letters(limit))

    async def counts(self) -> CaseCounts:
        return await self._hop("read", lambda: super(SqliteCaseStore, self).counts())

    async def ping(self) -> None:
        await self._hop("read", lambda: super(SqliteCaseStore, self).ping())
