"""SQLite: lookup rows follow their records in small transactions on a low-priority thread.

A second's worth of lookup rows written in one transaction held the file's write lock (and the
store's own) for tens of milliseconds, and every audit commit waited behind it. The flush now
writes chunks in sequence order, lets commits in between, and leaves an index that is one
contiguous run per chain whatever chunk fails.
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
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.stores.test_audit_query_contract import _all
from tests.stores.test_audit_subject_index import _about

Write = Callable[[sqlite3.Connection], dict[str, int]]


async def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = await connect_sqlite(path, read_only=True)
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


async def test_a_commit_goes_between_two_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 2)
    real = sqlite_audit._lookup_writer
    order: list[str] = []
    hold = threading.Event()

    def held_first(rows: list[LookupRow], *args: object) -> Write:
        write = real(rows, *args)  # type: ignore[arg-type]
        first = not order

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            if first:
                hold.wait(5)
            order.append(f"chunk {rows[0][1]}")
            return write(conn)

        return run

    monkeypatch.setattr(sqlite_audit, "_lookup_writer", held_first)
    real_on_loop = SqliteAuditStore._write_on_loop

    def commit_on_loop(self: SqliteAuditStore, write: Callable[[sqlite3.Connection], None]) -> bool:
        if order:  # the records before the flush are not of interest
            order.append("commit")
        return real_on_loop(self, write)

    monkeypatch.setattr(SqliteAuditStore, "_write_on_loop", commit_on_loop)
    async with _written(tmp_path / "audit.db", 4) as (store, writer):
        flush = asyncio.create_task(store._flush_lookups())
        await asyncio.sleep(0.05)  # the first chunk holds the lock
        commit = asyncio.create_task(writer.append(_about(5, "pk-5")))
        await asyncio.sleep(0.05)
        assert not commit.done()
        hold.set()
        assert await asyncio.wait_for(commit, 5) == 5
        await asyncio.wait_for(flush, 5)
        # The commit waited for one chunk, not for the whole flush.
        assert order == ["chunk 1", "commit", "chunk 3"]


async def test_lookups_run_on_a_thread_that_yields_the_core_and_skips_the_fsync(
    tmp_path: Path,
) -> None:
    def nice(_conn: sqlite3.Connection) -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert await store._bg().call(nice) == 19
        assert await store._w().call(nice) == own  # the commits' thread keeps the priority

        def synchronous(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

        # Lookup chunks commit without an fsync (they are derivable); batches with one.
        assert await store._bg().call(synchronous) == 1  # NORMAL
        assert await store._w().call(synchronous) == 2  # FULL
    finally:
        await store.aclose()
