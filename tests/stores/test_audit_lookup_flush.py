"""SQLite: lookup rows follow their records in small slices on the event loop's connection.

A second's worth of lookup rows written in one transaction held the file's write lock (and the
store's own) for tens of milliseconds, and every audit commit waited behind it; then chunks of
fifty on a low-priority thread still held the store's write lock each, so an append waited for
a thread that a busy core ran last. The flush now writes slices in sequence order on the loop,
each begun and committed without an await, holds no lock between them, and leaves an index that
is one contiguous run per chain whatever slice fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
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
from gateway.stores.fsync import KernelFsync
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


async def test_an_append_is_not_held_by_lookup_work_while_the_background_thread_stalls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup rows used to be written on the nice-19 thread holding the store's write lock
    for a chunk: when a busy core did not run that thread, an append waited for it. Here the
    background thread is stalled (as a busy core would) while lookup rows are pending and a
    flush runs: the append still commits, and the rows follow once the thread runs again.
    (The thread writes the slices back only where the kernel's asynchronous fsync is not
    used: here it is not.)"""

    async def no_kernel_fsync(probe: str) -> None:
        return None

    monkeypatch.setattr(KernelFsync, "open", no_kernel_fsync)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)  # flushed by the test only
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 2)
    path = tmp_path / "audit.db"
    async with _written(path, 4) as (store, writer):
        stalled, release = threading.Event(), threading.Event()

        def stall(_conn: sqlite3.Connection) -> None:
            stalled.set()
            release.wait(30)

        held = asyncio.create_task(store._bg().call(stall))
        try:
            await asyncio.to_thread(stalled.wait, 5)
            flush = asyncio.create_task(store._flush_lookups())
            await asyncio.sleep(0)  # the flush has begun
            assert not flush.done()
            assert await asyncio.wait_for(writer.append(_about(5, "pk-5")), 10) == 5
            assert not flush.done()  # lookup work still pending behind the stalled thread
        finally:
            release.set()
        await asyncio.wait_for(held, 10)
        await asyncio.wait_for(flush, 10)
        found = await _all(store, AuditQuery(subject="pk-5"))
        assert [r.sequence for r in found] == [5]
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 6)]
        assert await _rows(path, "audit_subjects") == [("gw-a", n) for n in range(1, 6)]


async def test_no_lookup_slice_holds_the_stores_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slice of lookup rows runs on the loop's own thread and connection with the
    store's write lock free, committed without an fsync (derivable rows)."""
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 3)
    real = sqlite_audit._lookup_writer
    seen: list[tuple[list[int], bool, bool, int]] = []
    loop_thread = threading.get_ident()
    stores: list[SqliteAuditStore] = []

    def watched(rows: list[LookupRow], *args: object) -> Write:
        write = real(rows, *args)  # type: ignore[arg-type]

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
            locked = stores[0]._write_lock.locked()
            seen.append(
                (
                    sorted(r[1] for r in rows),
                    locked,
                    threading.get_ident() == loop_thread,
                    synchronous,
                )
            )
            return write(conn)

        return run

    monkeypatch.setattr(sqlite_audit, "_lookup_writer", watched)
    path = tmp_path / "audit.db"
    async with _written(path, 7) as (store, _):
        stores.append(store)
        await store._flush_lookups()
        # Slices of three in sequence order; none under the write lock, all on the loop's
        # thread, committed with synchronous=NORMAL (1): no fsync of their own.
        assert seen == [
            ([1, 2, 3], False, True, 1),
            ([4, 5, 6], False, True, 1),
            ([7], False, True, 1),
        ]
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 8)]


async def test_a_slice_waits_for_a_write_lock_held_elsewhere_without_holding_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holding the file's write lock (a backup, another process opening the
    file) makes a slice wait and try again; the rows are then written once."""
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)
    path = tmp_path / "audit.db"
    async with _written(path, 3) as (store, _):
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            flush = asyncio.create_task(store._flush_lookups())
            await asyncio.sleep(0.05)
            assert not flush.done()
            assert not store._write_lock.locked()
            other.execute("ROLLBACK")
            await asyncio.wait_for(flush, 10)
        finally:
            other.close()
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 4)]


async def test_a_write_lock_held_elsewhere_too_long_keeps_the_rows_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_BUSY_WAIT", 0.03)
    path = tmp_path / "audit.db"
    async with _written(path, 3) as (store, _):
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(AuditStoreUnavailable):
                await store._flush_lookups()
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert await _rows(path, "audit_index") == []
        found = await _all(store, AuditQuery(subject="pk-2"))  # flushes what was kept
        assert [r.sequence for r in found] == [2]
        assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 4)]


async def test_checkpoints_run_on_a_thread_that_yields_the_core(tmp_path: Path) -> None:
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

        assert await store._w().call(synchronous) == 2  # FULL
    finally:
        await store.aclose()


_ROOT = Path(__file__).resolve().parents[2]
_CRASH_CHILD = """
import asyncio, os, sys
from pathlib import Path
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.writer import AuditWriter
from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.stores.test_audit_subject_index import _about

sqlite_audit.LOOKUP_DELAY = 60.0
sqlite_audit.LOOKUP_TRANSACTION = 4
real = sqlite_audit._lookup_writer
slices = []

def dying_third(rows, *args):
    write = real(rows, *args)
    slices.append(len(rows))

    def run(conn):
        write(conn)  # the third slice's rows are in its open transaction
        if len(slices) == 3:
            os._exit(9)  # the process dies mid-slice: nothing closed, nothing committed
        return {}

    return run

sqlite_audit._lookup_writer = dying_third

async def main():
    store = SqliteAuditStore(Path(sys.argv[1]))
    await store.open()
    writer = AuditWriter(
        store, chain="gw-a", signer=CheckpointSigner(StaticKeyStore([new_signing_key()]))
    )
    await writer.start()
    for n in range(1, 15):
        await writer.append(_about(n, f"pk-{n}"))
    await store._flush_lookups()

asyncio.run(main())
"""


async def test_a_process_killed_mid_slice_leaves_a_run_that_open_completes(
    tmp_path: Path,
) -> None:
    """The process dies inside the third slice's transaction: the first two slices' rows are
    in the file, the third's are not, and the next open makes the rest from the records' text
    (every record then found by its subject, each lookup row once)."""
    path = tmp_path / "audit.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASH_CHILD, str(path), cwd=_ROOT, stderr=asyncio.subprocess.PIPE
    )
    _, errors = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 9, errors.decode(errors="replace")[-2000:]
    # Records 1 to 14 committed; lookup rows of the first two slices of four only.
    assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 9)]
    assert await _rows(path, "audit_subjects") == [("gw-a", n) for n in range(1, 9)]
    store = SqliteAuditStore(path)
    await store.open()
    try:
        assert await store.lookup_gaps() == {}
        found = await _all(store, AuditQuery(subject="pk-11"))
        assert [r.sequence for r in found] == [11]
    finally:
        await store.aclose()
    assert await _rows(path, "audit_index") == [("gw-a", n) for n in range(1, 15)]
    assert await _rows(path, "audit_subjects") == [("gw-a", n) for n in range(1, 15)]
