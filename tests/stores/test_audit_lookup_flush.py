"""SQLite: lookup rows follow their records in small transactions on a low-priority thread.

A second's worth of lookup rows written in one transaction held the file's write lock (and the
store's own) for tens of milliseconds, and every audit commit waited behind it. The flush writes
chunks in sequence order into the lookup file, whose write lock no record commit takes, and
leaves an index that is one contiguous run per chain whatever chunk fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery
from gateway.audit.store import AuditStoreUnavailable, LookupRow
from gateway.audit.writer import AuditWriter
from gateway.stores import sqlite_audit
from gateway.stores.sqlite import connect_sqlite
from gateway.stores.sqlite_audit import SqliteAuditStore, lookup_file
from tests.stores.test_audit_query_contract import _all
from tests.stores.test_audit_subject_index import _about

Write = Callable[[sqlite3.Connection], dict[str, int]]


async def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = await connect_sqlite(lookup_file(path), read_only=True)
    try:
        rows = await conn.execute_fetchall(
            f"SELECT chain_id, sequence FROM {table} ORDER BY chain_id, sequence"
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _written(path: Path, records: int) -> AsyncIterator[tuple[SqliteAuditStore, AuditWriter]]:
    """A store at ``path`` and a started writer that has committed ``records`` records, each
    naming one data subject; both closed on exit."""
    store = SqliteAuditStore(path)
    await store.open()
    try:
        writer = AuditWriter(
            store, chain="gw-a", signer=CheckpointSigner(StaticKeyStore([new_signing_key()]))
        )
        await writer.start()
        for n in range(1, records + 1):
            await writer.append(_about(n, f"pk-{n}"))
        yield store, writer
        await writer.aclose()
    finally:
        await store.aclose()


async def test_a_failed_chunk_leaves_one_run_and_the_rest_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)  # flushed by the test only
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 3)
    real = sqlite_audit._lookup_writer
    chunks: list[list[int]] = []

    def failing_third(rows: list[LookupRow], *args: object) -> Write:
        chunks.append(sorted(row[1] for row in rows))
        write = real(rows, *args)  # type: ignore[arg-type]
        if len(chunks) != 3:
            return write

        def fail(conn: sqlite3.Connection) -> dict[str, int]:
            write(conn)  # written, then rolled back with the transaction
            raise sqlite3.OperationalError("disk I/O error")

        return fail

    monkeypatch.setattr(sqlite_audit, "_lookup_writer", failing_third)
    path = tmp_path / "audit.db"
    async with _written(path, 10) as (store, _):
        with pytest.raises(AuditStoreUnavailable):
            await store._flush_lookups()
        # Chunks of three records in sequence order: the third failed whole.
        assert chunks == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 7)]
        assert await _rows(path, "audit_subjects") == [("gw-a", n) for n in range(1, 7)]

        # The next flush (a query makes one) writes the rest, each row once.
        found = await _all(store, AuditQuery(subject="pk-9"))
        assert [r.sequence for r in found] == [9]
        assert chunks[3:] == [[7, 8, 9], [10]]
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 11)]
        assert await _rows(path, "audit_subjects") == [("gw-a", n) for n in range(1, 11)]


def _lookup_file_locked(path: Path) -> bool:
    """Whether another connection holds the lookup file's write lock (asked without waiting)."""
    conn = sqlite3.connect(lookup_file(path), isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc)
    finally:
        conn.close()
    return False


def _committed(path: Path, chain: str, sequence: int) -> bool:
    """Whether the records file holds the record, read by a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT 1 FROM audit_records WHERE chain_id = ? AND sequence = ?", (chain, sequence)
        ).fetchone()
    finally:
        conn.close()
    return row is not None


async def test_a_commit_does_not_wait_for_a_lookup_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk of lookup rows held inside its transaction (as a preempted nice-19 thread holds
    it) holds the lookup file's write lock; a required record commits meanwhile and is durable.
    Before the lookup file, the chunk held the records file's lock and the store's own, and
    the commit waited for it."""
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 2)
    real = sqlite_audit._lookup_writer
    inside, release = threading.Event(), threading.Event()

    def held(rows: list[LookupRow], *args: object) -> Write:
        write = real(rows, *args)  # type: ignore[arg-type]

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            written = write(conn)  # the lookup file's write lock is taken by now
            inside.set()
            release.wait(30)
            return written

        return run

    monkeypatch.setattr(sqlite_audit, "_lookup_writer", held)
    path = tmp_path / "audit.db"
    async with _written(path, 4) as (store, writer):
        flush = asyncio.create_task(store._flush_lookups())
        try:
            assert await asyncio.to_thread(inside.wait, 30)
            assert await asyncio.to_thread(_lookup_file_locked, path)
            # Bounded only so that a commit that waits for the chunk fails instead of hanging.
            sequence = await asyncio.wait_for(writer.append(_about(5, "pk-5")), 10)
            assert sequence == 5
            assert not flush.done(), "the chunk still holds its lock"
            assert await asyncio.to_thread(_committed, path, "gw-a", 5)
        finally:
            release.set()
        await asyncio.wait_for(flush, 30)
        found = await _all(store, AuditQuery(subject="pk-5"))
        assert [r.sequence for r in found] == [5]


async def test_a_commit_succeeds_while_another_connection_holds_the_lookup_file(
    tmp_path: Path,
) -> None:
    """Another process's chunk (or any connection) holding the lookup file's write lock: the
    record commit needs only the records file."""
    path = tmp_path / "audit.db"
    async with _written(path, 2) as (store, writer):
        other = sqlite3.connect(store.lookup_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            sequence = await asyncio.wait_for(writer.append(_about(3, "pk-3")), 10)
            assert sequence == 3
            assert await asyncio.to_thread(_committed, path, "gw-a", 3)
        finally:
            other.execute("ROLLBACK")
            other.close()
        found = await _all(store, AuditQuery(subject="pk-3"))
        assert [r.sequence for r in found] == [3]


async def test_lookups_run_on_a_thread_that_yields_the_core_and_skips_the_fsync(
    tmp_path: Path,
) -> None:
    def nice(_conn: sqlite3.Connection) -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert await store._lk().call(nice) == 19  # lookup chunks
        assert await store._bg().call(nice) == 19  # checkpoints of the records file
        assert await store._w().call(nice) == own  # the commits' thread keeps the priority

        def synchronous(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        # Lookup chunks commit without an fsync (they are derivable); batches with one.
        assert await store._lk().call(synchronous) == 1  # NORMAL
        assert await store._w().call(synchronous) == 2  # FULL

        def files(conn: sqlite3.Connection) -> dict[str, str]:
            return {row[1]: row[2] for row in conn.execute("PRAGMA database_list")}

        # The lookup connection writes the lookup file and reads the records file only.
        assert await store._lk().call(files) == {
            "main": str(store.lookup_path.absolute()),
            "records": str(store.path.absolute()),
        }
    finally:
        await store.aclose()
