"""The subject lookup table (audit migration 4): records found by whose data they touched.

``extra.subjects`` names the data subjects of a call, a case step or a grant's use by key; the
subject's access log is a query on it. Every test runs on the memory store, SQLite and
PostgreSQL (marker postgres), like the rest of the query contract.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.query import AuditQuery, record_subjects
from gateway.audit.record import AuditEvent, EventType, format_time
from gateway.audit.store import AuditStore, StoredRecord, iter_records
from gateway.stores.memory_audit import MemoryAuditStore
from gateway.stores.migrations import migrate_postgres, migrate_sqlite
from gateway.stores.postgres_audit import AUDIT_MIGRATIONS as PG_MIGRATIONS
from gateway.stores.sqlite import connect_sqlite
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS as SQLITE_MIGRATIONS
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.stores.backends import Backend, PostgresBackend, SqliteBackend
from tests.stores.test_audit_query_contract import T0, _all, _event, _write, any_backend, qstore

__all__ = ["any_backend", "qstore"]  # fixtures shared with the query contract


def _about(n: int, *subjects: str, **fields: object) -> AuditEvent:
    return _event(n, extra={"subjects": list(subjects), "grant": f"cg_{n}"}, **fields)


async def test_records_are_found_by_their_subjects(qstore: AuditStore) -> None:
    events = [
        _about(1, "pk-alice"),
        _event(2),  # no subjects: never found by one
        _about(3, "pk-alice", "pk-bob"),  # co-applicants: found by each
        _about(4, "ek-acme", type=EventType.CONSENT_USED),
        _about(5, "pk-alice", "pk-alice"),  # named twice: found once
        _about(6, "pk-bob", type=EventType.CONSENT_REFUSED),
    ]
    await _write(qstore, "gw-a", events[:3])
    await _write(qstore, "gw-b", events[3:])

    alice = await _all(qstore, AuditQuery(subject="pk-alice"))
    assert [(r.chain, r.sequence) for r in alice] == [("gw-b", 2), ("gw-a", 3), ("gw-a", 1)]
    bob = await _all(qstore, AuditQuery(subject="pk-bob", limit=1))
    assert [(r.chain, r.sequence) for r in bob] == [("gw-b", 3), ("gw-a", 3)]
    assert [r.sequence for r in await _all(qstore, AuditQuery(subject="ek-acme"))] == [1]
    assert await _all(qstore, AuditQuery(subject="pk-nobody")) == []

    # With the other filters: type, time window, order.
    refused = await _all(
        qstore, AuditQuery(subject="pk-bob", types=(EventType.CONSENT_REFUSED.value,))
    )
    assert [r.sequence for r in refused] == [3]
    window = await _all(
        qstore,
        AuditQuery(
            subject="pk-alice",
            since=format_time(T0.replace(second=2)),
            until=format_time(T0.replace(second=5)),
        ),
    )
    assert [(r.chain, r.sequence) for r in window] == [("gw-a", 3)]
    oldest = await _all(qstore, AuditQuery(subject="pk-alice", oldest_first=True, limit=2))
    assert [(r.chain, r.sequence) for r in oldest] == [("gw-a", 1), ("gw-a", 3), ("gw-b", 2)]
    assert all("pk-alice" in record_subjects(r.text) for r in alice)


async def test_the_subject_table_is_append_only(backend: Backend, store: AuditStore) -> None:
    await _write(store, "gw-a", [_about(1, "pk-alice")])
    assert len((await store.query(AuditQuery(subject="pk-alice"))).records) == 1
    for sql, value in (
        ("UPDATE audit_subjects SET subject = ? WHERE sequence = 1", "pk-mallory"),
        ("DELETE FROM audit_subjects WHERE sequence > ?", 0),
    ):
        with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError)):
            await backend.execute(sql, value)
    assert len((await store.query(AuditQuery(subject="pk-alice"))).records) == 1


async def test_migration_4_indexes_records_written_before_it(backend: Backend) -> None:
    old = MemoryAuditStore()
    await _write(old, "gw-old", [_about(1, "pk-alice"), _event(2), _about(3, "pk-alice")])
    rows = list(old.records_of("gw-old"))
    rows.append(StoredRecord("gw-old", 4, format_time(T0), '{"extra":{"subjects":[', "f" * 64))
    values = [(r.chain, r.sequence, r.time, r.text, r.hash) for r in rows]
    if isinstance(backend, SqliteBackend):
        conn = await connect_sqlite(backend.path)
        try:
            assert await migrate_sqlite(conn, "audit", SQLITE_MIGRATIONS[:1]) == [1]
            await conn.executemany("INSERT INTO audit_records VALUES (?, ?, ?, ?, ?)", values)
        finally:
            await conn.close()
    else:
        assert isinstance(backend, PostgresBackend)
        pg = await asyncpg.connect(backend.dsn)
        try:
            await pg.execute(f"CREATE SCHEMA {backend.schema}")
            await pg.execute(f"SET search_path = {backend.schema}")
            assert await migrate_postgres(pg, "audit", PG_MIGRATIONS[:1]) == [1]
            await pg.executemany("INSERT INTO audit_records VALUES ($1, $2, $3, $4, $5)", values)
        finally:
            await pg.close()
    store = backend.new_store()
    await store.open()  # applies migration 4, which fills the subject table
    try:
        found = await _all(store, AuditQuery(subject="pk-alice"))
        assert [r.sequence for r in found] == [3, 1]
    finally:
        await store.aclose()


async def test_sqlite_subject_rows_lost_with_a_crash_are_made_at_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    await _write(store, "gw-a", [_about(1, "pk-alice")])
    assert len(await _all(store, AuditQuery(subject="pk-alice"))) == 1
    await store.aclose()
    # Records committed, their lookup and subject rows lost with a crash.
    other = MemoryAuditStore()
    await _write(other, "gw-a", [_about(1, "pk-alice"), _about(2, "pk-alice"), _event(3)])
    later = [r for r in other.records_of("gw-a") if r.sequence > 1]
    conn = await connect_sqlite(path)
    try:
        await conn.executemany(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?)",
            [(r.chain, r.sequence, r.time, r.text, r.hash) for r in later],
        )
        await conn.commit()
    finally:
        await conn.close()

    reopened = SqliteAuditStore(path)
    await reopened.open()
    try:
        found = await _all(reopened, AuditQuery(subject="pk-alice"))
        assert [r.sequence for r in found] == [2, 1]
    finally:
        await reopened.aclose()


async def test_the_writers_subject_rows_are_those_of_its_text(backend: Backend) -> None:
    """The writer hands the store each record's subjects as taken from its event; the rows the
    store keeps are exactly those read back from the stored text: none, more than 16,
    duplicates, odd keys, something that is not an array, a nested "subjects"."""
    extras: list[dict[str, object]] = [
        {},
        {"subjects": ["pk-a"]},
        {"subjects": [f"pk-{n:02d}" for n in range(20)]},
        {"subjects": ["pk-b", "pk-a", "pk-b", "pk-a"]},
        {"subjects": ["", "x" * 128, "y" * 129, '"subjects":["pk-z"]', "青海", 1, True, None]},
        {"subjects": "pk-alone"},
        {"other": {"subjects": ["pk-nested"]}, "grant": "cg_1"},
    ]
    store = backend.new_store()
    await store.open()
    try:
        await _write(store, "gw-s", [_event(n, extra=x) for n, x in enumerate(extras, 1)])
        await store.query(AuditQuery(limit=1))  # the lookup rows follow their records
        stored = [r async for r in iter_records(store, "gw-s")]
        expected = sorted((r.sequence, k, r.time) for r in stored for k in record_subjects(r.text))
        assert len(expected) == 1 + 16 + 2 + 3
        rows = await store.subject_rows_between("gw-s", 1, len(extras))  # type: ignore[attr-defined]
        assert sorted(rows) == expected
    finally:
        await store.aclose()
