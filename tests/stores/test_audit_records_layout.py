"""SQLite: the audit records in a rowid table, and the migration of a trail written before.

Up to schema version 5 ``audit_records`` was a ``WITHOUT ROWID`` table keyed by (chain,
sequence); from version 6 it is a rowid table with the same columns, constraints and triggers
and a unique index on (chain, sequence). A trail written by the old schema (the released
migrations 1 to 5, run as they were) must come out of the migration with every row as it was,
verify, go on, refuse updates and deletes and still show a tampered record; a migration that
dies half-way must leave the old table as it was; and every query of the store must still be
answered through an index.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import CHAINS_SQL, AuditQuery, QueryPosition
from gateway.audit.record import AuditEvent
from gateway.audit.store import AuditStoreUnavailable, ChainConflict, StoredRecord
from gateway.audit.verifier import ProblemKind, verify_store
from gateway.audit.writer import AuditWriter
from gateway.stores import sqlite_audit
from gateway.stores.fsync import KernelFsync
from gateway.stores.migrations import Migration
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS, RECORDS_LAYOUT, SqliteAuditStore
from tests.stores.test_audit_tamper import SETTINGS, UPDATE_TEXT, flip, full_event

OLD_SCHEMA = tuple(m for m in AUDIT_MIGRATIONS if m.version < RECORDS_LAYOUT)
LAYOUT = next(m for m in AUDIT_MIGRATIONS if m.version == RECORDS_LAYOUT)
CHAINS = ("gw-1.w1", "gw-1.w2")
TABLES = {
    "audit_records": "chain_id, sequence",
    "audit_checkpoints": "chain_id, sequence",
    "audit_chains": "chain_id",
    "audit_index": "chain_id, sequence",
    "audit_subjects": "subject, recorded_at, chain_id, sequence",
}


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the audit tables, each value beside its SQLite type, in key order."""
    conn = _connect(path)
    try:
        found = {}
        for table, key in TABLES.items():
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            values = ", ".join(f"{c}, typeof({c})" for c in columns)
            found[table] = conn.execute(f"SELECT {values} FROM {table} ORDER BY {key}").fetchall()
        return found
    finally:
        conn.close()


def _records_ddl(path: Path) -> str:
    conn = _connect(path)
    try:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'audit_records'"
        ).fetchone()
        return str(sql)
    finally:
        conn.close()


def _versions(path: Path) -> list[int]:
    conn = _connect(path)
    try:
        rows = conn.execute(
            "SELECT version FROM schema_migrations WHERE component = 'audit' ORDER BY version"
        )
        return [int(row[0]) for row in rows]
    finally:
        conn.close()


def _event(n: int) -> AuditEvent:
    """The tamper suite's record of every field; every third names two data subjects."""
    event = full_event(n)
    if n % 3:
        return event
    fields = {name: getattr(event, name) for name in _FIELDS}
    return AuditEvent(**fields, extra={"mode": "online", "subjects": [f"p-{n % 7}", "p-x"]})


_FIELDS = (
    "type", "request_id", "case_id", "actor", "principal", "identity_level", "client",
    "service", "receiving_province", "handling_province", "system", "operation", "purpose",
    "outcome", "error_code", "attempts", "latency_ms", "request_digest", "response_digest",
)  # fmt: skip


async def _write(path: Path, keys: StaticKeyStore, first: int, count: int) -> None:
    """``count`` records on each chain (their lookup and subject rows too), checkpointed."""
    store = SqliteAuditStore(path)
    await store.open()
    try:
        for chain in CHAINS:
            writer = AuditWriter(
                store, chain=chain, signer=CheckpointSigner(keys), settings=SETTINGS
            )
            await writer.start()
            for n in range(first, first + count):
                await writer.append(_event(n))
            await writer.aclose()
    finally:
        await store.aclose()


async def _verify(path: Path, keys: StaticKeyStore) -> dict[str, int]:
    store = SqliteAuditStore(path)
    await store.open()
    try:
        report = await verify_store(store, keys.public_keys())
        assert report.ok, report.problems
        return {chain: summary.records for chain, summary in report.chains.items()}
    finally:
        await store.aclose()


async def _old_trail(path: Path, keys: StaticKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_audit, "AUDIT_MIGRATIONS", OLD_SCHEMA)
        await _write(path, keys, 1, 45)
    assert "WITHOUT ROWID" in _records_ddl(path)
    assert _versions(path) == [1, 2, 3, 4, 5]


async def test_a_new_file_has_the_rowid_layout(tmp_path: Path, keys: StaticKeyStore) -> None:
    path = tmp_path / "audit.sqlite"
    await _write(path, keys, 1, 5)
    assert "WITHOUT ROWID" not in _records_ddl(path)
    assert _versions(path) == [1, 2, 3, 4, 5, 6]
    conn = _connect(path)
    try:
        indexes = {row[1]: row[2] for row in conn.execute("PRAGMA index_list(audit_records)")}
        assert indexes == {"audit_records_key": 1}  # unique
        key = [row[2] for row in conn.execute("PRAGMA index_info(audit_records_key)")]
        assert key == ["chain_id", "sequence"]
        triggers = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?",
                ("audit_records",),
            )
        }
        assert triggers == {"audit_records_no_update", "audit_records_no_delete"}
    finally:
        conn.close()
    assert await _verify(path, keys) == dict.fromkeys(CHAINS, 5)


async def test_a_trail_of_the_old_schema_is_migrated_as_it_was(
    tmp_path: Path, keys: StaticKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite"
    await _old_trail(path, keys, monkeypatch)
    before = _contents(path)
    assert len(before["audit_records"]) == 90
    assert before["audit_subjects"]  # the subject rows are part of what must stay

    assert await _verify(path, keys) == dict.fromkeys(CHAINS, 45)  # opening migrates
    assert "WITHOUT ROWID" not in _records_ddl(path)
    assert _versions(path) == [1, 2, 3, 4, 5, 6]
    assert _contents(path) == before

    # The chains go on where they stopped and the whole trail verifies.
    await _write(path, keys, 46, 10)
    assert await _verify(path, keys) == dict.fromkeys(CHAINS, 55)
    after = _contents(path)
    assert after["audit_records"][:45] == before["audit_records"][:45]


async def test_a_migrated_trail_stays_append_only_and_shows_tampering(
    tmp_path: Path, keys: StaticKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite"
    await _old_trail(path, keys, monkeypatch)
    await _verify(path, keys)
    conn = _connect(path)
    try:
        for sql in (
            "UPDATE audit_records SET record = 'x'",
            "DELETE FROM audit_records WHERE sequence = 1",
            "DELETE FROM audit_records",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
        text = conn.execute(
            "SELECT record FROM audit_records WHERE chain_id = ? AND sequence = 30", (CHAINS[1],)
        ).fetchone()[0]
        # An intruder writing the file directly: the triggers are just more bytes in it.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TRIGGER audit_records_no_update")
        conn.execute(UPDATE_TEXT, (flip(text, "case_id"), CHAINS[1], 30))
        conn.execute("COMMIT")
    finally:
        conn.close()
    store = SqliteAuditStore(path)
    await store.open()
    try:
        report = await verify_store(store, keys.public_keys())
        assert not report.ok
        assert report.first_problem is not None
        assert report.first_problem.chain == CHAINS[1]
        assert report.first_problem.sequence == 30
        assert report.first_problem.kind in {ProblemKind.CHANGED, ProblemKind.REORDERED}
        # A sequence written twice is still refused by the key.
        [head] = [r async for r in _records(store, CHAINS[0], 45)]
        with pytest.raises(ChainConflict):
            await store.append([head])
    finally:
        await store.aclose()


async def _records(
    store: SqliteAuditStore, chain: str, sequence: int
) -> AsyncIterator[StoredRecord]:
    async for page in store.read_pages(chain, sequence, sequence):
        for record in page:
            yield record


_HALF_WAY = """
import os, sqlite3, sys
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS, RECORDS_LAYOUT
[layout] = [m for m in AUDIT_MIGRATIONS if m.version == RECORDS_LAYOUT]
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
for statement in layout.statements[: int(sys.argv[2])]:
    conn.execute(statement)
os._exit(9)  # dies inside the migration's transaction, before its COMMIT
"""


@pytest.mark.parametrize("done", [2, 5, 6, len(LAYOUT.statements)])
async def test_a_migration_that_dies_half_way_leaves_the_old_table(
    tmp_path: Path, keys: StaticKeyStore, monkeypatch: pytest.MonkeyPatch, done: int
) -> None:
    """The process dies after the copy (2), after the old table was dropped (5), renamed (6),
    or with every statement run but not committed."""
    path = tmp_path / "audit.sqlite"
    await _old_trail(path, keys, monkeypatch)
    before = _contents(path)
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _HALF_WAY, str(path), str(done)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 9, child.stderr
    assert "WITHOUT ROWID" in _records_ddl(path)
    assert _versions(path) == [1, 2, 3, 4, 5]
    assert _contents(path) == before
    assert await _verify(path, keys) == dict.fromkeys(CHAINS, 45)  # migrated now
    assert "WITHOUT ROWID" not in _records_ddl(path)
    assert _contents(path) == before


async def test_a_migration_that_fails_is_rolled_back(
    tmp_path: Path, keys: StaticKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite"
    await _old_trail(path, keys, monkeypatch)
    before = _contents(path)
    failing = Migration(
        RECORDS_LAYOUT, LAYOUT.name, (*LAYOUT.statements[:-1], "SELECT no_such_function()")
    )
    monkeypatch.setattr(sqlite_audit, "AUDIT_MIGRATIONS", (*OLD_SCHEMA, failing))
    store = SqliteAuditStore(path)
    with pytest.raises(AuditStoreUnavailable):
        await store.open()
    assert "WITHOUT ROWID" in _records_ddl(path)
    assert _versions(path) == [1, 2, 3, 4, 5]
    assert _contents(path) == before


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[str]:
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


async def test_every_query_of_the_store_uses_an_index(tmp_path: Path, keys: StaticKeyStore) -> None:
    """Every statement the store reads with (captured as it runs them) and those of its
    catch-up, explained on a migrated file: no table is scanned but through an index, and the
    records are reached by their key index or their rowid."""
    path = tmp_path / "audit.sqlite"
    await _write(path, keys, 1, 30)
    store = SqliteAuditStore(path)
    await store.open()
    seen: list[tuple[str, tuple[object, ...]]] = []
    fetch = store._fetch

    async def spy(sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        seen.append((sql, params))
        return await fetch(sql, params)

    store._fetch = spy  # type: ignore[method-assign]
    chain = CHAINS[0]
    try:
        [_ async for _ in store.read_pages(chain, 1, 20)]
        [_ async for _ in store.read_raw_pages(chain, 1, 20)]
        [_ async for _ in store.read_derived_pages(chain, 1, 20)]
        await store.orphan_lookup_rows(chain)
        await store.subject_rows_between(chain, 1, 20)
        await store.orphan_subject_rows(chain)
        await store.lookup_gaps()
        await store.checkpoints(chain)
        await store.last_checkpoint(chain)
        await store.heads()
        await store.sequence_range(chain, "2000-01-01", "2100-01-01")
        after = QueryPosition("2100-01-01", chain, 9)
        for query in (
            AuditQuery(limit=10),
            AuditQuery(limit=10, oldest_first=True, after=after),
            AuditQuery(limit=10, principal="pw-9c1e77"),
            AuditQuery(limit=10, actor="clerk-17", since="2000-01-01"),
            AuditQuery(limit=10, case_id="case-0003"),
            AuditQuery(limit=10, subject="p-3"),
            AuditQuery(limit=10, service="hukou-move", province="63"),
        ):
            await store.query(query)
    finally:
        await store.aclose()
    seen += [
        (CHAINS_SQL, ()),
        (sqlite_audit.LAGGING_SQL, (chain, chain)),
        (sqlite_audit._INSERT_LOOKUP, (chain, 1, 9)),
        (sqlite_audit._INSERT_SUBJECTS, (chain, 1, 9)),
    ]
    assert len(seen) >= 24
    conn = _connect(path)
    try:
        for sql, params in seen:
            for step in _plan(conn, sql, params):
                if "GROUP BY chain_id" in sql:  # lookup_gaps: a count over the whole key
                    assert step == "SCAN audit_index", step
                    continue
                # SCAN of a table without an index, or a temporary B-tree for a join, is what
                # a missing index looks like (sorting a page of results is allowed).
                allowed = ("USING", "present", "CONSTANT ROW", "VIRTUAL TABLE")  # json_each
                assert not step.startswith("SCAN") or any(a in step for a in allowed), (
                    sql,
                    step,
                )
                assert "AUTOMATIC" not in step, (sql, step)
                if "audit_records" in step or step.startswith(("SEARCH r ", "SCAN r ")):
                    assert "audit_records_key" in step or "INTEGER PRIMARY KEY" in step, (
                        sql,
                        step,
                    )
    finally:
        conn.close()


@pytest.mark.parametrize("kernel_fsync", [False, True], ids=["thread", "kernel"])
@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_each_slice_of_lookup_rows_is_written_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synchronous: str, kernel_fsync: bool
) -> None:
    """With durable commits (FULL) each slice of lookup rows is fdatasynced once committed,
    so the next commit of records does not write its pages: through the kernel's
    asynchronous I/O where the store syncs its WAL that way, else by the background thread;
    the rows are the same either way."""
    synced: list[str] = []
    fdatasync = os.fdatasync
    kernel_fdatasync = KernelFsync.fdatasync

    def spy(fd: int) -> None:
        synced.append(threading.current_thread().name)
        fdatasync(fd)

    async def kernel_spy(self: KernelFsync, path: str) -> None:
        synced.append(f"kernel {Path(path).name}")
        await kernel_fdatasync(self, path)

    monkeypatch.setattr(os, "fdatasync", spy)
    monkeypatch.setattr(KernelFsync, "fdatasync", kernel_spy)
    store = SqliteAuditStore(
        tmp_path / "audit.sqlite",
        synchronous=synchronous,  # type: ignore[arg-type]
        kernel_fsync=kernel_fsync,
    )
    await store.open()
    kernel = store._fsync is not None
    if kernel_fsync and not kernel and synchronous == "FULL":
        await store.aclose()
        pytest.skip("no asynchronous fsync in this kernel")
    try:
        records = [
            StoredRecord("gw-1", n, f"2026-12-07T15:00:{n:02d}Z", f'{{"n":{n}}}', f"{n:064x}")
            for n in range(1, 121)
        ]
        await store.append(records)
        await store.lookup_gaps()  # flushes the pending rows: slices of up to sixteen
    finally:
        await store.aclose()
    conn = _connect(tmp_path / "audit.sqlite")
    try:
        assert conn.execute("SELECT count(*) FROM audit_index").fetchone() == (120,)
    finally:
        conn.close()
    if synchronous == "FULL":
        assert len(synced) == -(-120 // sqlite_audit.LOOKUP_TRANSACTION)  # one per slice
        if kernel:
            assert synced == ["kernel audit.sqlite-wal"] * len(synced)
        else:
            assert all(name.startswith("audit-background") for name in synced), synced
    else:
        assert synced == []
