"""SQLite: the lookup and subject rows live in a lookup file beside the records file.

The records file is the hashed truth; the lookup file is derived from the records' text and is
made again wherever it lacks rows when the store opens: a store from before the split (its
lookup tables in the records file), a deleted or emptied lookup file, an upgrade interrupted
half-way. The verifier compares what is in the lookup file with the records.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditEvent
from gateway.audit.store import AuditStore, AuditStoreUnavailable, StoredRecord
from gateway.audit.verifier import ProblemKind, verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores import sqlite_audit
from gateway.stores.memory_audit import MemoryAuditStore
from gateway.stores.migrations import migrate_sqlite
from gateway.stores.sqlite import connect_sqlite, immediate
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS, SqliteAuditStore, lookup_file
from tests.stores.test_audit_query_contract import _all, _event
from tests.stores.test_audit_subject_index import _about

CHAIN = "gw-a"


def _events() -> list[AuditEvent]:
    """Twelve records: principals pw-0..pw-2, every third one about two data subjects."""
    return [_about(n, f"pk-{n}", "pk-shared") if n % 3 == 0 else _event(n) for n in range(1, 13)]


async def _write(store: AuditStore, keys: StaticKeyStore, events: list[AuditEvent]) -> None:
    writer = AuditWriter(
        store, chain=CHAIN, signer=CheckpointSigner(keys), settings=WriterSettings(linger=0)
    )
    await writer.start()
    for event in events:
        await writer.append(event)
    await writer.aclose()


Found = dict[str, list[int]]


async def _found(store: AuditStore) -> Found:
    """What queries by principal and by subject find (sequences, newest first)."""
    found: Found = {}
    for principal in ("pw-0", "pw-1", "pw-2"):
        found[principal] = [r.sequence for r in await _all(store, AuditQuery(principal=principal))]
    for subject in ("pk-3", "pk-shared", "pk-12"):
        found[subject] = [r.sequence for r in await _all(store, AuditQuery(subject=subject))]
    return found


EXPECTED: Found = {
    "pw-0": [12, 9, 6, 3],
    "pw-1": [10, 7, 4, 1],
    "pw-2": [11, 8, 5, 2],
    "pk-3": [3],
    "pk-shared": [12, 9, 6, 3],
    "pk-12": [12],
}


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return {str(row[0]) for row in rows}


def _lookup_rows(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every lookup row and every subject row in the file at ``path``, in key order."""
    conn = sqlite3.connect(path)
    try:
        index = conn.execute("SELECT * FROM audit_index ORDER BY chain_id, sequence").fetchall()
        subjects = conn.execute(
            "SELECT * FROM audit_subjects ORDER BY chain_id, sequence, subject"
        ).fetchall()
    finally:
        conn.close()
    return [tuple(r) for r in index], [tuple(r) for r in subjects]


async def _old_layout(path: Path) -> list[StoredRecord]:
    """A records file as the store left it before the lookup file: audit migrations 1 to 5,
    records written, and their lookup and subject rows in the same file (made by migrations 2
    and 4 from the text, as the store itself made them)."""
    source = MemoryAuditStore()
    await _write(source, StaticKeyStore([new_signing_key()]), _events())
    records = list(source.records_of(CHAIN))
    conn = await connect_sqlite(path)
    try:
        assert await migrate_sqlite(conn, "audit", AUDIT_MIGRATIONS[:1]) == [1]
        await conn.executemany(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?)",
            [(r.chain, r.sequence, r.time, r.text, r.hash) for r in records],
        )
        assert await migrate_sqlite(conn, "audit", AUDIT_MIGRATIONS[:5]) == [2, 3, 4, 5]
    finally:
        await conn.close()
    return records


async def test_a_store_from_before_the_lookup_file_keeps_every_record_findable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite"
    await _old_layout(path)
    old_rows = _lookup_rows(path)
    assert len(old_rows[0]) == 12
    assert len(old_rows[1]) == 8
    assert not lookup_file(path).exists()

    # An upgrade interrupted after the records file dropped its lookup tables and before the
    # lookup file had its rows: nothing is lost, the next open makes them.
    def crash(conn: sqlite3.Connection, spans: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(sqlite_audit, "_fill_spans", crash)
        with pytest.raises(AuditStoreUnavailable):
            await SqliteAuditStore(path).open()
    assert not {"audit_index", "audit_subjects"} & _tables(path)
    assert _lookup_rows(lookup_file(path)) == ([], [])

    store = SqliteAuditStore(path)
    await store.open()
    try:
        assert await _found(store) == EXPECTED
    finally:
        await store.aclose()
    # The lookup data ended in the lookup file, row for row what the records file had.
    assert not {"audit_index", "audit_subjects"} & _tables(path)
    assert _lookup_rows(lookup_file(path)) == old_rows


def _damage(lookup: Path, damage: str) -> None:
    assert not Path(f"{lookup}-wal").exists(), "closed: everything is in the file"
    if damage == "deleted":
        lookup.unlink()
    elif damage == "emptied":
        lookup.write_bytes(b"")
    elif damage == "truncated":
        with lookup.open("r+b") as file:
            file.truncate(lookup.stat().st_size // 2)
    else:
        lookup.write_bytes(b"not a database " * 300)


def _set_aside(directory: Path) -> list[str]:
    """The damaged lookup files the store set aside (without their -wal and -shm)."""
    found = directory.glob("audit.lookup.sqlite.damaged-*")
    return [p.name for p in found if p.name[-4:] not in ("-wal", "-shm")]


@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated", "overwritten"])
async def test_a_lost_lookup_file_is_made_again_at_open(tmp_path: Path, damage: str) -> None:
    """Deleted or emptied: a new lookup file. Truncated or overwritten (SQLite finds it
    damaged): set aside, kept, and a new one made; the records open either way."""
    path = tmp_path / "audit.sqlite"
    keys = StaticKeyStore([new_signing_key()])
    store = SqliteAuditStore(path)
    await store.open()
    try:
        await _write(store, keys, _events())
        assert await _found(store) == EXPECTED
    finally:
        await store.aclose()
    written = _lookup_rows(store.lookup_path)
    lookup = store.lookup_path
    _damage(lookup, damage)

    reopened = SqliteAuditStore(path)
    await reopened.open()
    try:
        assert await _found(reopened) == EXPECTED
        report = await verify_store(reopened, keys.public_keys())
        assert report.ok, report.problems
        assert report.derived_checked
    finally:
        await reopened.aclose()
    assert _lookup_rows(lookup) == written
    kept = _set_aside(tmp_path)
    assert len(kept) == (1 if damage in ("truncated", "overwritten") else 0), kept


async def test_the_verifier_reports_a_tampered_row_in_the_lookup_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    keys = StaticKeyStore([new_signing_key()])
    store = SqliteAuditStore(path)
    await store.open()
    try:
        await _write(store, keys, _events())
        await store.query(AuditQuery(limit=1))  # the lookup rows still pending are written
        # An intruder writes the lookup file alone, behind its triggers.
        conn = sqlite3.connect(lookup_file(path), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).fetchall():
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute(
                "UPDATE audit_index SET principal = 'pw-someone' WHERE chain_id = ? AND sequence = 5",
                (CHAIN,),
            )
            conn.execute(
                "INSERT INTO audit_subjects VALUES ('pk-victim', '2026-01-01T00:00:00Z', ?, 7)",
                (CHAIN,),
            )
            conn.execute(
                "INSERT INTO audit_index (chain_id, sequence, recorded_at) VALUES (?, 99, ?)",
                (CHAIN, "2026-01-01T00:00:00Z"),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        report = await verify_store(store, keys.public_keys())
        assert not report.ok
        assert [(p.sequence, p.kind) for p in report.problems] == [
            (5, ProblemKind.LOOKUP_MISMATCH),
            (7, ProblemKind.SUBJECTS_MISMATCH),
            (99, ProblemKind.LOOKUP_ORPHAN),
        ]
        # The tampered row hides record 5 from its principal; the text is untouched.
        assert 5 not in [r.sequence for r in await _all(store, AuditQuery(principal="pw-2"))]
    finally:
        await store.aclose()


async def test_an_orphan_is_reported_only_if_its_record_is_still_missing(tmp_path: Path) -> None:
    """One statement reads the two files each at its own moment: a lookup row seen beside a
    snapshot of the records taken just before its record's commit is read again, and only a
    sequence whose record a fresh read does not find either is an orphan."""
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        await _write(store, StaticKeyStore([new_signing_key()]), _events()[:3])
        assert await store._still_without_record(CHAIN, [1, 3, 99]) == [99]
        assert await store._still_without_record(CHAIN, []) == []
        assert await store.orphan_lookup_rows(CHAIN) == []
        assert await store.orphan_subject_rows(CHAIN) == []
    finally:
        await store.aclose()


def _fill_after_a_crash(path: Path, last: StoredRecord, events: list[str]) -> None:
    """Record 13 committed and not synced (its connection left open, so its WAL stays), then
    its lookup rows made from the text as the store makes them, every statement traced."""
    crashed = sqlite3.connect(path, isolation_level=None)  # left open: its WAL stays
    lookups = sqlite3.connect(lookup_file(path), isolation_level=None, uri=True)
    try:
        crashed.execute("PRAGMA synchronous = NORMAL")  # committed, not synced
        crashed.execute(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?)",
            (CHAIN, 13, last.time, last.text.replace('"sequence":12', '"sequence":13'), "f" * 64),
        )
        assert Path(f"{path}-wal").exists()
        lookups.execute("ATTACH DATABASE ? AS records", (f"{path.absolute().as_uri()}?mode=ro",))
        lookups.set_trace_callback(lambda sql: events.append(sql.split(" SELECT")[0]))
        with immediate(lookups):
            sqlite_audit._fill_spans(lookups, [(CHAIN, 13, 13)])
    finally:
        lookups.close()
        crashed.close()


async def test_rows_made_from_the_text_wait_for_the_records_to_be_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record committed but not yet synced (its process died between the commit and the
    fsync of the WAL) gets lookup rows from its text only after the records file's WAL was
    synced: across two files, nothing else keeps a lookup row from outliving its record after a
    power cut."""
    path = tmp_path / "audit.sqlite"
    records = await _old_layout(path)  # records 1-12 (the lookup file is made at open)
    store = SqliteAuditStore(path)
    await store.open()
    await store.aclose()
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _fill_after_a_crash(path, records[-1], events)
    synced = events.index(f"fsync {path.absolute()}-wal")
    first_row = events.index("INSERT OR IGNORE INTO main.audit_index")
    assert synced < first_row, events
