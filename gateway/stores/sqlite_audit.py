"""AuditStore on SQLite (aiosqlite): one write connection, one read connection, WAL.

The tables refuse UPDATE and DELETE through triggers (SQLite has no TRUNCATE; a DELETE without
WHERE fires the trigger too). Anyone who can write the file can still bypass them; that is what
the hash chain and the signed checkpoints are for.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final

import aiosqlite

from gateway.audit.query import (
    CHAINS_SQL,
    LOOKUP_FIELDS,
    AuditQuery,
    QueryPage,
    SubjectRow,
    lookup_row,
    page_of,
    sql_filter,
    sql_order,
    sql_source,
    subject_rows,
)
from gateway.audit.store import (
    MAX_SEQUENCE,
    AuditStoreError,
    AuditStoreUnavailable,
    ChainConflict,
    ChainHead,
    DerivedRow,
    LookupRow,
    RawRecord,
    StoredCheckpoint,
    StoredRecord,
    StoredSubjectRow,
    derived_sequence,
    keyset_pages,
    raw_sequence,
    record_sequence,
)
from gateway.stores.fsync import KernelFsync
from gateway.stores.migrations import Migration
from gateway.stores.sqlite import (
    Synchronous,
    TransactionThread,
    open_migrated_pair,
    rollback_quietly,
    use_wal,
)

_NO_VALUES: Final[dict[None, None]] = {}
sqlite3.register_adapter(type(None), _NO_VALUES.get)
"""``None`` binds as NULL with or without this (``_NO_VALUES.get(None)`` is None, and the
binding binds a None it is handed as NULL). Without an adapter registered for its type, the
binding first looks for one the slow way, for every None it binds: the protocol's
``__adapt__`` (an AttributeError made, its message formatted, then cleared) and the value's
``__conform__``, some 3,300 instructions each; a routed call's lookup rows bind four (its
records' actor and case, most often NULL). Registered, the lookup is one dictionary probe and
one call in C. The registry is the process's (every ``sqlite3`` connection's); the NULL bound
is the same for all of them."""


def _refuse(table: str, action: str) -> str:
    return (
        f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    )


AUDIT_MIGRATIONS: Final = (
    Migration(
        1,
        "audit chain tables",
        (
            """CREATE TABLE audit_chains (
                chain_id TEXT PRIMARY KEY,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE audit_records (
                chain_id TEXT NOT NULL,
                sequence INTEGER NOT NULL CHECK (sequence > 0),
                recorded_at TEXT NOT NULL,
                record TEXT NOT NULL,
                hash TEXT NOT NULL,
                PRIMARY KEY (chain_id, sequence)
            ) WITHOUT ROWID""",
            """CREATE TABLE audit_checkpoints (
                chain_id TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                hash TEXT NOT NULL,
                signed_at TEXT NOT NULL,
                kid TEXT NOT NULL,
                jws TEXT NOT NULL,
                PRIMARY KEY (chain_id, sequence)
            ) WITHOUT ROWID""",
            *(
                _refuse(table, action)
                for table in ("audit_chains", "audit_records", "audit_checkpoints")
                for action in ("UPDATE", "DELETE")
            ),
        ),
    ),
    Migration(
        2,
        "audit lookup table",
        (
            # Filled at append time from the stored text; the text stays the hashed truth.
            """CREATE TABLE audit_index (
                chain_id TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                recorded_at TEXT NOT NULL,
                type TEXT,
                principal TEXT,
                actor TEXT,
                case_id TEXT,
                service TEXT,
                receiving_province TEXT,
                handling_province TEXT,
                system TEXT,
                PRIMARY KEY (chain_id, sequence)
            ) WITHOUT ROWID""",
            "CREATE INDEX audit_index_time ON audit_index (recorded_at, chain_id, sequence)",
            *(
                f"CREATE INDEX audit_index_{column} ON audit_index"
                f" ({column}, recorded_at, chain_id, sequence) WHERE {column} IS NOT NULL"
                for column in (
                    "principal",
                    "actor",
                    "case_id",
                    "service",
                    "receiving_province",
                    "handling_province",
                )
            ),
            # Records written before this migration get their lookup rows too.
            "INSERT INTO audit_index SELECT chain_id, sequence, recorded_at, "  # noqa: S608
            + ", ".join(
                f"CASE WHEN json_valid(record) THEN CASE WHEN json_type(record, '$.{name}')"
                f" = 'text' THEN json_extract(record, '$.{name}') END END"
                for name in LOOKUP_FIELDS
            )
            + " FROM audit_records",
            *(_refuse("audit_index", action) for action in ("UPDATE", "DELETE")),
        ),
    ),
    Migration(
        3,
        "no lookup indexes on low-selectivity columns",
        # Tens of services, 31 provinces: an index on each cost every service-call record three
        # more B-tree inserts (about a quarter of the layer's store work) for filters that the
        # time index answers as well (newest first, filtered, stopping at the page size).
        tuple(
            f"DROP INDEX IF EXISTS audit_index_{column}"
            for column in ("service", "receiving_province", "handling_province")
        ),
    ),
    Migration(
        4,
        "subject lookup table",
        (
            # Whose data a record touched (extra.subjects): the subject's access log. Keyed by
            # subject then time, so one subject's records, newest first, are one range scan.
            """CREATE TABLE audit_subjects (
                subject TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                chain_id TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                PRIMARY KEY (subject, recorded_at, chain_id, sequence)
            ) WITHOUT ROWID""",
            # Records written before this migration get their subject rows too.
            "INSERT OR IGNORE INTO audit_subjects SELECT j.value, r.recorded_at, r.chain_id,"
            " r.sequence FROM audit_records r, json_each(CASE WHEN json_valid(r.record) AND"
            " json_type(r.record, '$.extra.subjects') = 'array' THEN"
            " json_extract(r.record, '$.extra.subjects') ELSE '[]' END) j"
            " WHERE j.type = 'text'",
            *(_refuse("audit_subjects", action) for action in ("UPDATE", "DELETE")),
        ),
    ),
    Migration(
        5,
        "subject rows by record",
        # `audit verify` compares each record's subject rows with the record itself, a page of
        # records at a time: without this index every page would scan the whole table.
        ("CREATE INDEX audit_subjects_by_record ON audit_subjects (chain_id, sequence)",),
    ),
    Migration(
        6,
        "audit records in a rowid table",
        # A WITHOUT ROWID table keeps whole rows in its interior pages too: with records of
        # about 800 bytes four fit a page, so the tree's fan-out was four, an insert descended
        # eight levels at 100,000 records, and nearly every commit rewrote as many interior
        # pages as leaves. In a rowid table the interior pages hold only integer keys (a
        # fan-out of hundreds); new rows go in at the end of the table in the order written,
        # and the key (chain, sequence) is a narrow unique index that refuses a sequence
        # written twice as the primary key did. The same columns, constraints and triggers.
        # One transaction with its schema_migrations row (a crash leaves the old table).
        (
            """CREATE TABLE audit_records_rowid (
                chain_id TEXT NOT NULL,
                sequence INTEGER NOT NULL CHECK (sequence > 0),
                recorded_at TEXT NOT NULL,
                record TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "INSERT INTO audit_records_rowid (chain_id, sequence, recorded_at, record, hash)"
            " SELECT chain_id, sequence, recorded_at, record, hash FROM audit_records"
            " ORDER BY chain_id, sequence",
            "DROP TRIGGER audit_records_no_update",
            "DROP TRIGGER audit_records_no_delete",
            "DROP TABLE audit_records",
            "ALTER TABLE audit_records_rowid RENAME TO audit_records",
            "CREATE UNIQUE INDEX audit_records_key ON audit_records (chain_id, sequence)",
            *(_refuse("audit_records", action) for action in ("UPDATE", "DELETE")),
        ),
    ),
)
RECORDS_LAYOUT: Final = 6
"""The schema version from which ``audit_records`` is a rowid table (see the migration)."""
# Subject rows made from the stored text by SQLite, for a span of one chain (as _INSERT_LOOKUP).
_INSERT_SUBJECTS: Final = (
    "INSERT OR IGNORE INTO audit_subjects SELECT j.value, r.recorded_at, r.chain_id,"
    " r.sequence FROM audit_records r, json_each(CASE WHEN json_valid(r.record) AND"
    " json_type(r.record, '$.extra.subjects') = 'array' THEN"
    " json_extract(r.record, '$.extra.subjects') ELSE '[]' END) j"
    " WHERE r.chain_id = ? AND r.sequence BETWEEN ? AND ? AND j.type = 'text'"
    " AND instr(r.record, '\"subjects\":') > 0"
)
_SUBJECT_ROWS: Final = "INSERT OR IGNORE INTO audit_subjects"
_SUBJECT_COLUMNS: Final = 4
# Lookup rows made from the stored text by SQLite itself, for a span of one chain: records whose
# rows were lost with a crash or whose commit was not acknowledged (the writer's rows are bound).
_INSERT_LOOKUP: Final = (
    "INSERT OR IGNORE INTO audit_index SELECT chain_id, sequence, recorded_at, "  # noqa: S608
    + ", ".join(
        f"CASE WHEN json_valid(record) THEN CASE WHEN json_type(record, '$.{name}')"
        f" = 'text' THEN json_extract(record, '$.{name}') END END"
        for name in LOOKUP_FIELDS
    )
    + " FROM audit_records WHERE chain_id = ? AND sequence BETWEEN ? AND ?"
)

_LOOKUP_ROWS: Final = "INSERT OR IGNORE INTO audit_index"
_LOOKUP_COLUMNS: Final = 11

ROWS_PER_STATEMENT: Final = (50, 32, 16, 8, 4, 2)
"""Rows one INSERT of lookup rows carries (as many of the largest as fit, then of the
next; a last row alone): a slice's lookup rows (32 at most) are one statement or a few. One
statement of fifty rows costs far less than fifty of one: the statement's start and end, the
Python binding's per-row round and the descent of each B-tree from its root happen once, not
per row (the B-tree cursors stay on the last page where the rows go in key order). Few sizes,
so the connection's statement cache keeps them all prepared."""


@functools.cache
def values_statement(head: str, columns: int, rows: int) -> str:
    """``head VALUES (?, ...), ...``: ``rows`` rows of ``columns`` parameters each."""
    row = "(" + ", ".join("?" * columns) + ")"
    return f"{head} VALUES " + ", ".join([row] * rows)


@functools.cache
def shared_statement(head: str, columns: int, rows: int, shared: int) -> str:
    """``values_statement(head, columns, rows)`` with column ``shared`` of every row the one
    parameter ``?1``, the other columns numbered after it row by row: ``(?1, ?2, ?3),
    (?1, ?4, ?5)`` for a shared first column of three."""
    cells: list[str] = []
    number = 2
    for _ in range(rows):
        row = []
        for column in range(columns):
            if column == shared:
                row.append("?1")
            else:
                row.append(f"?{number}")
                number += 1
        cells.append("(" + ", ".join(row) + ")")
    return f"{head} VALUES " + ", ".join(cells)


def insert_rows(
    conn: sqlite3.Connection,
    head: str,
    columns: int,
    rows: Sequence[Sequence[object]],
    sizes: Sequence[int] = ROWS_PER_STATEMENT,
    shared: int | None = None,
) -> None:
    """The rows in order, as ``executemany`` of the one-row statement inserts them, in fewer
    statements: SQLite runs the rows of a multi-row VALUES one after another in one statement,
    with the same conflict rule for each (an error aborts the statement, and the caller's
    transaction rolls back as it would have).

    ``shared``: a column that often holds one text in every row (the chain): in a statement
    whose rows all hold the same text there, it is bound once (``shared_statement``'s
    ``?1``) instead of once per row, the row's other values bound as before. SQLite copies
    every text it is bound (some 800 instructions each, with the binding's own work), and
    each row of the statement reads ``?1`` as it would its own parameter: the same values,
    so the same rows. The parameters are made from the same flat list (its column
    ``shared`` taken out by a slice), not row by row: a tuple made per row costs about what
    the binding spares."""
    start, count = 0, len(rows)
    for size in sizes:
        end = start + (count - start) // size * size
        if end > start:
            sql = values_statement(head, columns, size)
            for first in range(start, end, size):
                params = list(itertools.chain.from_iterable(rows[first : first + size]))
                if shared is not None:
                    value = params[shared]
                    if type(value) is str and params[shared::columns].count(value) == size:
                        # Every row's column ``shared`` is this text: bound once, as ``?1``.
                        del params[shared::columns]
                        params.insert(0, value)
                        conn.execute(shared_statement(head, columns, size, shared), params)
                        continue
                conn.execute(sql, params)
            start = end
    if start < count:
        conn.executemany(values_statement(head, columns, 1), rows[start:])


_RECORD_ROWS: Final = "INSERT INTO audit_records (chain_id, sequence, recorded_at, record, hash)"
_RECORD_COLUMNS: Final = 5
"""A batch's records go in as the lookup rows do (``insert_rows``): one statement of up to
fifty records instead of one per record. Without ``OR IGNORE``: a sequence already written
aborts the statement (``IntegrityError``, a ``ChainConflict``) and the transaction rolls
back, as the first such record of one statement per record did."""


_record_text_of: Final = operator.itemgetter(3)
"""A record row's text (``_RECORD_ROWS`` order)."""


_INSERT_CHECKPOINT: Final = (
    "INSERT INTO audit_checkpoints (chain_id, sequence, hash, signed_at, kid, jws)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
"""Record text written on the loop between WAL checkpoints (SQLite's own default is 1,000
pages, about 4 MiB; the loop's connection has automatic checkpoints off)."""

LOOKUP_CHUNK: Final = 1000
"""Pending lookup rows that start a flush at once..."""
LOOKUP_DELAY: Final = 1.0
"""...or seconds after the first pending row (queries flush first in any case)."""
LOOKUP_TRANSACTION: Final = 32
"""Records whose lookup rows one slice writes at most. A slice is a transaction on the event
loop's own connection, run to its end without an await: some 16 µs of SQLite per record and its
subject rows, so the loop is held for about half a millisecond at a time, and nothing is held
between two slices (see ``_flush_lookups``). Smaller slices hold the loop for less but commit
more often: per record, slices of 16 cost some 14 k instructions more than slices of 32, and
slices of 50 some 7 k fewer (docs/performance.md)."""
LOOKUP_PAUSE: Final = 0.005
"""Seconds between two slices of a background flush: a second's worth of lookup rows (some
thirty slices at a thousand records a second) spread over a sixth of a second instead of one
run of the loop. A flush that a query or the close waits for does not pause."""
LOOKUP_BUSY_WAIT: Final = 5.0
"""Seconds a slice waits for the file's write lock held by another connection (a backup,
another process opening the file), trying again every ``LOOKUP_BUSY_PAUSE``; as long as the
lookup thread's ``busy_timeout`` was before the slices."""
LOOKUP_BUSY_PAUSE: Final = 0.01
LOOKUP_WAL_BYTES: Final = 8192
"""WAL bytes a record's lookup and subject rows add in slices, about (9 to 11 KiB measured in slices
of 16, 5.4 KiB in chunks of 50, with random principals and subjects: each record dirties a leaf of
the principal index and one of the subject table), counted towards ``CHECKPOINT_BYTES``. The
background thread's own connection checkpointed after its chunks once the WAL held 1,000 pages
(SQLite's default); the loop's connection never does, so the WAL is checkpointed about as often as
before."""


_chain_of: Final = operator.itemgetter(0)
_sequence_of: Final = operator.itemgetter(1)
_record_order: Final = operator.itemgetter(0, 1)
_subject_record: Final = operator.itemgetter(2, 3)
"""A subject row's record (chain, sequence), in ``_record_order``'s form."""
"""A lookup row's (chain, sequence): the order of the records, a key made in C."""


def _lookup_writer(
    rows: list[LookupRow],
    subjects: list[SubjectRow],
    spans: list[tuple[str, int, int]],
    unsure: bool,
) -> Callable[[sqlite3.Connection], dict[str, int]]:
    """One flush transaction: lookup and subject rows of some records, the spans made from
    the stored text and, after an unacknowledged commit, every chain's lagging tail."""

    def write(conn: sqlite3.Connection) -> dict[str, int]:
        insert_rows(conn, _LOOKUP_ROWS, _LOOKUP_COLUMNS, rows, shared=0)  # the chain
        insert_rows(conn, _SUBJECT_ROWS, _SUBJECT_COLUMNS, subjects, shared=2)  # the chain
        _fill_spans(conn, spans)
        if not unsure:
            return {}
        heads, gaps = _lagging(conn)
        _fill_spans(conn, gaps)
        return heads

    return write


def _indexed_after(
    before: dict[str, int],
    written: list[LookupRow],
    spans: list[tuple[str, int, int]],
    heads: dict[str, int],
) -> dict[str, int]:
    """Per chain, the last record with its lookup rows once ``written``, ``spans`` and the
    caught-up ``heads`` are in the file, from ``before``."""
    done = dict(before)
    ends = [(chain, high) for chain, _, high in spans] + list(heads.items())
    for chain, sequence in ends + [(row[0], row[1]) for row in written]:
        done[chain] = max(done.get(chain, 0), sequence)
    return done


def _principal_order(row: LookupRow) -> tuple[str, str]:
    # Sorted by the one random key of the row (a pairwise id), the slice touches each leaf of
    # that index once; the other indexes are in time or sequence order already.
    return (row[4] or "", row[0])


_principal_first: Final = operator.itemgetter(4, 0)
"""``_principal_order`` made in C, for slices whose rows all name a principal (a routed
call's do): the same key then, so the same order; a ``None`` principal does not compare
with text (``TypeError``), and such a slice is sorted by ``_principal_order``."""


def _by_principal(chunk: list[LookupRow]) -> list[LookupRow]:
    """``sorted(chunk, key=_principal_order)`` (stable: in record order within a principal
    and chain), with the key made in C when every row names a principal."""
    try:
        return sorted(chunk, key=_principal_first)
    except TypeError:  # a row without a principal: ``chunk`` itself is as it was
        return sorted(chunk, key=_principal_order)


LAGGING_SQL: Final = (
    "SELECT (SELECT max(sequence) FROM audit_records WHERE chain_id = ?),"
    " (SELECT coalesce(max(sequence), 0) FROM audit_index WHERE chain_id = ?)"
)
"""A chain's last record and its last lookup row."""


def _lagging(conn: sqlite3.Connection) -> tuple[dict[str, int], list[tuple[str, int, int]]]:
    """Each chain's last record, and the spans of records past its last lookup row (lost with
    a crash, or from a commit that was not acknowledged). Reads only. Lookup rows are written
    in contiguous runs per chain, so the last one marks everything before it as done."""
    heads: dict[str, int] = {}
    spans: list[tuple[str, int, int]] = []
    for (chain,) in conn.execute(CHAINS_SQL).fetchall():
        head, done = conn.execute(LAGGING_SQL, (chain, chain)).fetchone()
        if head is None:
            continue
        heads[chain] = head
        if done < head:
            spans.append((chain, done + 1, head))
    return heads, spans


def _fill_spans(conn: sqlite3.Connection, spans: list[tuple[str, int, int]]) -> None:
    """Lookup and subject rows of the spans, made from the stored text (lookup rows and
    subject rows of one record are always written in one transaction)."""
    conn.executemany(_INSERT_LOOKUP, spans)
    conn.executemany(_INSERT_SUBJECTS, spans)


def _checkpoint(row: sqlite3.Row) -> StoredCheckpoint:
    return StoredCheckpoint(row[0], row[1], row[2], row[3], row[4], row[5])


class SqliteAuditStore:
    def __init__(
        self, path: str | Path, *, synchronous: Synchronous = "FULL", kernel_fsync: bool = True
    ) -> None:
        """``kernel_fsync``: sync the WAL through the kernel's asynchronous I/O where it is
        available (``gateway/stores/fsync.py``); False keeps the fsync on the writer thread."""
        self.path = Path(path)
        self._wal_path = f"{self.path}-wal"
        """The WAL file's name (made once: a commit syncs it)."""
        self._synchronous: Synchronous = synchronous
        self._kernel_fsync = kernel_fsync
        self._fsync: KernelFsync | None = None
        """The WAL's fsyncs without a thread hand-over; None: on the writer thread."""
        self._writer: TransactionThread | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._background: TransactionThread | None = None
        """WAL checkpoints and write-backs, at the lowest CPU priority (see open)."""
        # Lookup rows of committed records not yet in audit_index (see _flush_lookups).
        self._pending: list[LookupRow] = []
        self._pending_subjects: list[SubjectRow] = []
        self._indexed: dict[str, int] = {}
        """Per chain: every record up to this sequence has its lookup row."""
        self._unsure = False
        """An append failed in a way that may have committed it: catch up from the text."""
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._closing = False
        self._loop_writer: sqlite3.Connection | None = None
        self._wal_bytes = 0
        self._checkpoint_task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            migrator, self._reader = await open_migrated_pair(
                self.path,
                component="audit",
                migrations=AUDIT_MIGRATIONS,
                synchronous=self._synchronous,
            )
            await migrator.close()  # writes go through the transaction thread below
            self._writer = await TransactionThread.open(
                self.path, synchronous=self._synchronous, name="audit"
            )
            # The work that no caller waits for and that does not write rows (WAL checkpoints,
            # the WAL's write-back after a slice of lookup rows) runs on a thread of its own
            # that yields the core to the event loop whenever both want it: on a busy core a
            # second thread at the same priority takes time slices of milliseconds from the
            # loop. A checkpoint syncs the WAL before it and the database file after it.
            self._background = await TransactionThread.open(
                self.path, synchronous="NORMAL", name="audit-background", background=True
            )
            if self._synchronous == "FULL" and self._kernel_fsync:
                self._fsync = await KernelFsync.open(str(self.path))
            # Lookup rows lost with a crash (they trail the records) are made from the text;
            # a store with none missing is not written to (a verifier may open a copy).
            self._indexed, spans = await self._w().call(_lagging)
            if spans:
                await self._w().run(lambda conn: _fill_spans(conn, spans))
        except (sqlite3.Error, OSError, AuditStoreUnavailable) as exc:
            await self.aclose()
            raise AuditStoreUnavailable(f"cannot open the audit database: {exc}") from exc

    async def aclose(self) -> None:
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flush_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        if self._writer is not None:
            with contextlib.suppress(AuditStoreError):
                await self._flush_lookups()  # what is left is made from the text at next open
        if self._checkpoint_task is not None:
            await self._checkpoint_task
        if self._fsync is not None:
            await self._fsync.aclose()
            self._fsync = None
        if self._loop_writer is not None:
            self._loop_writer.close()
            self._loop_writer = None
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            await self._writer.close()
        if self._background is not None:
            await self._background.close()
        self._reader = self._writer = self._background = None

    def _w(self) -> TransactionThread:
        if self._writer is None:
            raise AuditStoreUnavailable("the audit store is not open")
        return self._writer

    def _bg(self) -> TransactionThread:
        if self._background is None:
            raise AuditStoreUnavailable("the audit store is not open")
        return self._background

    def _r(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise AuditStoreUnavailable("the audit store is not open")
        return self._reader

    async def register_chain(self, chain: str, created: str) -> None:
        async with self._write_lock:
            try:
                await self._w().run(
                    lambda conn: conn.execute(
                        "INSERT OR IGNORE INTO audit_chains (chain_id, created_at) VALUES (?, ?)",
                        (chain, created),
                    )
                )
            except (sqlite3.Error, ValueError) as exc:
                raise AuditStoreUnavailable(str(exc)) from exc

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        rows = [(r.chain, r.sequence, r.time, r.text, r.hash) for r in records]
        try:
            await self._transaction(rows, checkpoint)
        except AuditStoreUnavailable:
            self._unsure = True  # a lost acknowledgement: the batch may be in the file
            raise
        # Committed: the lookup rows follow in larger, later transactions. One random-key
        # B-tree insert per record and index costs far less in a sorted chunk of a thousand
        # than in each small group commit, and the commit the caller waits for gets shorter.
        pending, pending_subjects = self._pending, self._pending_subjects
        for record in records:
            row = record.lookup  # ``lookup_row`` and ``subject_rows`` of the writer's records
            pending.append(row if row is not None else lookup_row(record))
            keys = record.subjects
            if keys is None:
                pending_subjects.extend(subject_rows(record))
            elif len(keys) == 1:  # a call's one subject, most often: no comprehension's frame
                pending_subjects.append((keys[0], record.time, record.chain, record.sequence))
            elif keys:
                time, chain, sequence = record.time, record.chain, record.sequence
                pending_subjects.extend([(key, time, chain, sequence) for key in keys])
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._closing:
            return  # aclose flushes what is left
        if self._flush_task is not None and not self._flush_task.done():
            return  # the running flush reschedules itself for what came meanwhile
        if len(self._pending) >= LOOKUP_CHUNK:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            self._flush_task = asyncio.create_task(self._background_flush())
        elif self._flush_timer is None and self._pending:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(LOOKUP_DELAY, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        with contextlib.suppress(AuditStoreError):  # kept pending; tried again next time
            await self._flush_lookups(pause=LOOKUP_PAUSE)
        self._flush_task = None
        self._schedule_flush()

    async def _flush_lookups(self, pause: float = 0.0) -> None:
        """Write the lookup rows pending when called, in slices of ``LOOKUP_TRANSACTION``
        records each sorted for the B-tree; fill any gap (a batch whose commit was not
        acknowledged) from the stored text. Queries call it first, so they see every committed
        record. ``pause``: seconds between two slices (a background flush spreads its work).

        Each slice is one transaction on the event loop's connection, begun and committed
        without an await (``_lookup_slice``): no append of records ever waits for lookup work.
        They used to be chunks on a thread at the lowest priority that held the store's write
        lock for their whole transaction, so an append that came meanwhile waited for a thread
        the busy core ran last. Between two slices the loop runs whatever is ready, appends
        included. The slices go in sequence order: the lookup rows of a chain stay one
        contiguous run from its first record (a crash between two slices loses a tail that
        ``_lagging`` finds)."""
        async with self._flush_lock:
            if not self._pending and not self._unsure:
                return
            pending, self._pending = self._pending, []
            subjects, self._pending_subjects = self._pending_subjects, []
            unsure, self._unsure = self._unsure, False
            before = dict(self._indexed)
            spans: list[tuple[str, int, int]] = []
            runs: dict[str, list[int]] = {}
            chains = set(map(_chain_of, pending))
            if len(chains) == 1:
                # One chain (a worker's own, nearly always): its sequences taken in C, in the
                # same order as the loop below takes them.
                runs[chains.pop()] = list(map(_sequence_of, pending))
            else:
                for row in pending:
                    runs.setdefault(row[0], []).append(row[1])
            for chain, sequences in runs.items():
                done, high = self._indexed.get(chain, 0), max(sequences)
                if min(sequences) != done + 1 or high - done != len(sequences):
                    spans.append((chain, done + 1, high))  # rows of another writer, or lost
                self._indexed[chain] = max(done, high)
            pending.sort(key=_record_order)
            of_record: dict[tuple[str, int], list[SubjectRow]] = {}
            one_each = False
            if len(runs) == 1 and not spans and len(subjects) == len(pending):
                # One chain, each record once (no span), as many subject rows as records: when
                # the rows sorted by their record (stable: a record's own keep their order)
                # name the records one to one, a slice's subject rows are the same slice of
                # them, as the mapping below gives them, without a Python step per row.
                subjects.sort(key=_subject_record)
                one_each = list(map(_subject_record, subjects)) == list(map(_record_order, pending))
            if not one_each:
                for subject in subjects:
                    of_record.setdefault((subject[2], subject[3]), []).append(subject)
            caught_up: dict[str, int] = {}
            for start in range(0, max(len(pending), 1), LOOKUP_TRANSACTION):
                chunk = pending[start : start + LOOKUP_TRANSACTION]
                if one_each:
                    chunk_subjects = subjects[start : start + LOOKUP_TRANSACTION]
                else:
                    chunk_subjects = [s for r in chunk for s in of_record.get((r[0], r[1]), ())]
                chunk = _by_principal(chunk)
                first = start == 0
                if not first:
                    # The loop's turn between two slices (appends, calls, anything ready);
                    # a background flush also leaves the core to them for a while.
                    await asyncio.sleep(0 if self._closing else pause)
                try:
                    heads = await self._lookup_on_loop(
                        _lookup_writer(
                            chunk, chunk_subjects, spans if first else [], unsure and first
                        )
                    )
                except (sqlite3.Error, ValueError, RuntimeError, AuditStoreError) as exc:
                    rest = pending[start:]  # still in record order (chunks are copies)
                    self._pending[:0] = rest
                    self._pending_subjects[:0] = (
                        subjects[start:]
                        if one_each
                        else [s for r in rest for s in of_record.get((r[0], r[1]), ())]
                    )
                    if first:
                        self._unsure = self._unsure or unsure
                    self._indexed = _indexed_after(
                        before, pending[:start], [] if first else spans, caught_up
                    )
                    raise AuditStoreUnavailable(str(exc)) from exc
                self._wal_bytes += LOOKUP_WAL_BYTES * len(chunk)
                if first:
                    caught_up = heads
                    for chain, sequence in heads.items():
                        self._indexed[chain] = max(self._indexed.get(chain, 0), sequence)
                if self._synchronous == "FULL":
                    # Written back now, between two slices: else the next commit of records,
                    # whose fsync a caller waits for, had to write this slice's pages of the
                    # WAL too. No append waits for it (an append's own fsync is its own).
                    # Lookup rows need no sync of their own (made from the text if lost).
                    with contextlib.suppress(OSError, ValueError, RuntimeError):
                        if self._fsync is not None:
                            # Through the kernel as the records' fsync: no thread hand-over.
                            await self._fsync.fdatasync(self._wal_path)
                        else:
                            await self._bg().call(self._write_back_wal)
            self._checkpoint_if_due()

    async def _lookup_on_loop(
        self, write: Callable[[sqlite3.Connection], dict[str, int]]
    ) -> dict[str, int]:
        """``write`` as one slice on the loop's connection, waiting (without holding anything)
        while another connection holds the file's write lock."""
        waited = 0.0
        while True:
            done, heads = self._lookup_slice(write)
            if done:
                return heads
            if waited >= LOOKUP_BUSY_WAIT:
                raise AuditStoreUnavailable("the audit file stayed locked for lookup rows")
            await asyncio.sleep(LOOKUP_BUSY_PAUSE)
            waited += LOOKUP_BUSY_PAUSE

    def _lookup_slice(
        self, write: Callable[[sqlite3.Connection], dict[str, int]]
    ) -> tuple[bool, dict[str, int]]:
        """One slice's transaction on the loop, begun and committed without an await (so no
        append can be waiting for it): (False, {}) when another connection holds the write lock.
        An append's records are committed and only wait for their fsync when a slice runs: the
        slice's pages follow theirs in the WAL."""
        heads: dict[str, int] = {}

        def run(conn: sqlite3.Connection) -> None:
            heads.update(write(conn))

        if self._writer is None:  # closed: no loop connection opened again
            raise AuditStoreUnavailable("the audit store is not open")
        return self._write_on_loop(run), heads

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        await self._transaction([], checkpoint)

    async def _transaction(
        self,
        rows: list[tuple[str, int, str, str, str]],
        checkpoint: StoredCheckpoint | None,
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if rows:
                insert_rows(conn, _RECORD_ROWS, _RECORD_COLUMNS, rows, shared=0)  # the chain
            if checkpoint is not None:
                conn.execute(
                    _INSERT_CHECKPOINT,
                    (
                        checkpoint.chain,
                        checkpoint.sequence,
                        checkpoint.hash,
                        checkpoint.time,
                        checkpoint.kid,
                        checkpoint.jws,
                    ),
                )

        # ``async with self._write_lock`` written out: its two coroutines' frames a batch.
        lock = self._write_lock
        await lock.acquire()
        try:
            if not self._write_on_loop(write):
                await self._w().run(write)  # the file is locked: wait on the thread
            if self._synchronous == "FULL":
                fsync = self._fsync
                if fsync is None:
                    await self._sync_wal_file()
                else:  # ``_sync_wal_file``'s kernel path, without its frame
                    try:  # noqa: SIM105 - suppress()'s object and calls, a batch
                        await fsync.fsync(self._wal_path)
                    except FileNotFoundError:  # see _sync_wal
                        pass
        except sqlite3.IntegrityError as exc:
            raise ChainConflict("sequence already written") from exc
        except (sqlite3.Error, ValueError, RuntimeError, OSError) as exc:
            # ValueError / RuntimeError: connection or its thread already closed.
            raise AuditStoreUnavailable(str(exc)) from exc
        finally:
            lock.release()
        self._wal_bytes += sum(map(len, map(_record_text_of, rows))) + 512
        self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        if self._wal_bytes >= CHECKPOINT_BYTES and self._checkpoint_task is None:
            self._wal_bytes = 0
            self._checkpoint_task = asyncio.create_task(self._checkpoint_wal())

    def _write_on_loop(self, write: Callable[[sqlite3.Connection], None]) -> bool:
        """The batch's transaction on the loop, without waiting for the disk: inserts take
        microseconds per record, and done on the writer thread each batch had to win the GIL
        back from a busy loop twice, which cost a saturated gateway a fifth of its throughput
        (docs/audit.md). The connection commits with ``synchronous=NORMAL`` (no fsync), and the
        caller then has the WAL file fsynced on the thread before the batch counts as durable:
        that fsync is what ``synchronous=FULL`` would have done inside COMMIT. False when
        another connection holds the write lock (``busy_timeout`` 0: the loop never waits)."""
        try:
            # ``immediate(conn)`` written out: its generator's context manager cost some four
            # thousand instructions a batch in Python calls (enter, exit, two resumptions).
            conn = self._loop_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                write(conn)
                conn.execute("COMMIT")
            except BaseException:
                rollback_quietly(conn)
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False  # from BEGIN: once IMMEDIATE holds the lock nothing else waits
            raise
        return True

    def _loop_conn(self) -> sqlite3.Connection:
        if self._loop_writer is None:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 0")
                use_wal(conn)
                # No fsync inside COMMIT (see _write_on_loop) and no checkpoint on the loop: a
                # checkpoint copies and syncs the database file, so it runs on the thread.
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            except BaseException:
                conn.close()
                raise
            self._loop_writer = conn
        return self._loop_writer

    async def _sync_wal_file(self) -> None:
        """The fsync of the WAL that makes a committed batch durable; the batch counts as
        written only once it returned. Through the kernel where it can (no thread hand-over,
        one wake-up of the loop when done), else on the writer thread."""
        if self._fsync is None:
            await self._w().call(self._sync_wal)
            return
        with contextlib.suppress(FileNotFoundError):  # see _sync_wal
            await self._fsync.fsync(self._wal_path)

    def _sync_wal(self, conn: sqlite3.Connection) -> None:
        """fsync the WAL file holding the batch just committed (on the writer thread). The WAL
        only disappears when the last connection closes after a full checkpoint, and then
        what it held is in the database file, synced by that checkpoint."""
        self._sync_wal_by(os.fsync)

    def _write_back_wal(self, conn: sqlite3.Connection) -> None:
        """fdatasync the WAL (on the background thread): the lookup slice just committed goes
        to the disk without waiting for the next commit of records to take it along."""
        self._sync_wal_by(os.fdatasync)

    def _sync_wal_by(self, sync: Callable[[int], None]) -> None:
        """``sync`` the WAL file, if there is one."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            sync(fd)
        finally:
            os.close(fd)

    async def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database on the thread (PASSIVE: writers go on meanwhile)."""
        try:
            with contextlib.suppress(sqlite3.Error, ValueError, RuntimeError):
                await self._bg().call(
                    lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                )
        finally:
            self._checkpoint_task = None

    async def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        async def page(after: int, last: int) -> list[StoredRecord]:
            rows = await self._fetch(
                "SELECT sequence, recorded_at, record, hash FROM audit_records"
                " WHERE chain_id = ? AND sequence > ? AND sequence <= ?"
                " ORDER BY sequence LIMIT ?",
                (chain, after, last, page_size),
            )
            return [StoredRecord(chain, s, t, r, h) for s, t, r, h in rows]

        async for records in keyset_pages(page, record_sequence, start, end, page_size):
            yield records

    async def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        async def page(after: int, last: int) -> list[RawRecord]:
            # CAST AS BLOB hands over the stored UTF-8 bytes without decoding them.
            rows = await self._fetch(
                "SELECT sequence, CAST(record AS BLOB), hash FROM audit_records"
                " WHERE chain_id = ? AND sequence > ? AND sequence <= ?"
                " ORDER BY sequence LIMIT ?",
                (chain, after, last, page_size),
            )
            return [(row[0], row[1], row[2]) for row in rows]

        async for records in keyset_pages(page, raw_sequence, start, end, page_size):
            yield records

    lookup_rows_trail = True
    """Lookup rows follow their records within a second (made from the text at open if lost)."""

    async def read_derived_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[DerivedRow]]:
        """Each record's text beside what was derived from it: its stored time and its lookup
        row (None when it has none), for the verifier to compare."""
        await self._flush_lookups()
        columns = ", ".join(f"i.{name}" for name in ("recorded_at", *LOOKUP_FIELDS))

        async def page(after: int, last: int) -> list[DerivedRow]:
            rows = await self._fetch(
                f"SELECT r.sequence, r.record, r.recorded_at, i.sequence IS NOT NULL, {columns}"  # noqa: S608
                " FROM audit_records r LEFT JOIN audit_index i"
                " ON i.chain_id = r.chain_id AND i.sequence = r.sequence"
                " WHERE r.chain_id = ? AND r.sequence > ? AND r.sequence <= ?"
                " ORDER BY r.sequence LIMIT ?",
                (chain, after, last, page_size),
            )
            return [(row[0], row[1], row[2], tuple(row[4:]) if row[3] else None) for row in rows]

        async for rows in keyset_pages(page, derived_sequence, start, end, page_size):
            yield rows

    async def orphan_lookup_rows(self, chain: str) -> list[int]:
        """Sequences of lookup rows that no record of ``chain`` has."""
        rows = await self._fetch(
            "SELECT i.sequence FROM audit_index i LEFT JOIN audit_records r"
            " ON r.chain_id = i.chain_id AND r.sequence = i.sequence"
            " WHERE i.chain_id = ? AND r.sequence IS NULL ORDER BY i.sequence LIMIT 1000",
            (chain,),
        )
        return [int(row[0]) for row in rows]

    async def subject_rows_between(
        self, chain: str, first: int, last: int
    ) -> list[StoredSubjectRow]:
        """The subject rows of ``chain``'s records ``first`` to ``last``, by sequence."""
        rows = await self._fetch(
            "SELECT sequence, subject, recorded_at FROM audit_subjects"
            " WHERE chain_id = ? AND sequence BETWEEN ? AND ? ORDER BY sequence, subject",
            (chain, first, last),
        )
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    async def orphan_subject_rows(self, chain: str) -> list[int]:
        """Sequences named by subject rows that no record of ``chain`` has."""
        rows = await self._fetch(
            "SELECT DISTINCT s.sequence FROM audit_subjects s LEFT JOIN audit_records r"
            " ON r.chain_id = s.chain_id AND r.sequence = s.sequence"
            " WHERE s.chain_id = ? AND r.sequence IS NULL ORDER BY s.sequence LIMIT 1000",
            (chain,),
        )
        return [int(row[0]) for row in rows]

    async def lookup_gaps(self) -> dict[str, int]:
        """Per chain, how many lookup rows are missing below its highest one (0 for an intact
        table): one count per chain on the primary key, cheap enough to ask now and then."""
        extents = await self.lookup_extents()
        gaps = {chain: high - count for chain, (high, count) in extents.items()}
        return {chain: gap for chain, gap in gaps.items() if gap}

    async def lookup_extents(self) -> dict[str, tuple[int, int]]:
        """Per chain, its highest lookup row's sequence and how many it has: the gaps of a
        chain whose records are in several files are counted over all of them
        (``gateway.stores.sqlite_audit_files``)."""
        await self._flush_lookups()
        rows = await self._fetch(
            "SELECT chain_id, MAX(sequence), COUNT(*) FROM audit_index GROUP BY chain_id", ()
        )
        return {str(chain): (int(high), int(count)) for chain, high, count in rows}

    async def _fetch(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        try:
            return list(await self._r().execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:
            raise AuditStoreUnavailable(str(exc)) from exc

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        rows = await self._fetch(
            "SELECT chain_id, sequence, hash, signed_at, kid, jws FROM audit_checkpoints"
            " WHERE chain_id = ? AND sequence >= ? AND sequence <= ? ORDER BY sequence",
            (chain, start, end if end is not None else MAX_SEQUENCE),
        )
        return [_checkpoint(row) for row in rows]

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        rows = await self._fetch(
            "SELECT chain_id, sequence, hash, signed_at, kid, jws FROM audit_checkpoints"
            " WHERE chain_id = ? ORDER BY sequence DESC LIMIT 1",
            (chain,),
        )
        return _checkpoint(rows[0]) if rows else None

    async def chains(self) -> list[str]:
        rows = await self._fetch(CHAINS_SQL, ())
        return [row[0] for row in rows]

    async def head(self, chain: str) -> ChainHead | None:
        rows = await self._fetch(
            "SELECT sequence, hash FROM audit_records WHERE chain_id = ?"
            " ORDER BY sequence DESC LIMIT 1",
            (chain,),
        )
        if not rows:
            return None
        return ChainHead(chain, rows[0][0], rows[0][1])

    async def heads(self) -> dict[str, ChainHead]:
        result: dict[str, ChainHead] = {}
        for chain in await self.chains():
            head = await self.head(chain)
            if head is not None:
                result[chain] = head
        return result

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        rows = await self._fetch(
            "SELECT min(sequence), max(sequence) FROM audit_records WHERE chain_id = ?"
            " AND (? IS NULL OR recorded_at >= ?) AND (? IS NULL OR recorded_at < ?)",
            (chain, since, since, until, until),
        )
        low, high = rows[0][0], rows[0][1]
        if low is None:
            return None
        return low, high

    async def ping(self) -> None:
        await self._fetch("SELECT 1", ())

    async def query(self, query: AuditQuery) -> QueryPage:
        await self._flush_lookups()
        where, params = sql_filter(query, lambda n: "?")
        rows = await self._fetch(
            "SELECT r.chain_id, r.sequence, r.recorded_at, r.record, r.hash"
            + sql_source(query)
            + where  # fixed fragments only; every value is a parameter
            + sql_order(query)
            + " LIMIT ?",
            (*params, query.limit + 1),
        )
        return page_of(query, [StoredRecord(c, s, t, r, h) for c, s, t, r, h in rows])
