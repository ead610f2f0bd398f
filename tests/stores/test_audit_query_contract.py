"""The AuditStore query contract: filters, stable keyset order, lookup table, migration 2.

Every test runs on the memory store, on SQLite and on PostgreSQL (marker postgres).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import (
    AuditQuery,
    InvalidCursor,
    QueryPosition,
    decode_cursor,
    encode_cursor,
)
from gateway.audit.record import AuditEvent, AuditRecord, EventType, format_time
from gateway.audit.store import AuditStore, StoredRecord, iter_records
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores import sqlite_audit
from gateway.stores.fsync import KernelFsync
from gateway.stores.memory_audit import MemoryAuditStore
from gateway.stores.migrations import migrate_postgres, migrate_sqlite
from gateway.stores.postgres_audit import AUDIT_MIGRATIONS as PG_MIGRATIONS
from gateway.stores.sqlite import connect_sqlite
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS as SQLITE_MIGRATIONS
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.stores.backends import (
    PG_DSN,
    Backend,
    PostgresBackend,
    SqliteBackend,
    drop_schema,
    postgres_or_skip,
    run_private,
)

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend | None]:
    if request.param == "memory":
        yield None
        return
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "audit.db")
        return
    postgres_or_skip()
    schema = f"t_audit_{secrets.token_hex(6)}"
    try:
        yield PostgresBackend(PG_DSN, schema)
    finally:
        run_private(drop_schema(schema))


@pytest.fixture
async def qstore(any_backend: Backend | None) -> AsyncIterator[AuditStore]:
    store: AuditStore = MemoryAuditStore() if any_backend is None else any_backend.new_store()
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def _event(n: int, **fields: object) -> AuditEvent:
    base: dict[str, object] = {
        "type": EventType.SERVICE_CALL_COMPLETED,
        "principal": f"pw-{n % 3}",
        "service": "pension-transfer" if n % 2 else "degree-verification",
        "receiving_province": "63",
        "handling_province": "61" if n % 2 else "62",
        "system": "shaanxi-si",
        "purpose": "测试",
        "outcome": "ok",
        "case_id": f"QH-{n % 4}",
        "actor": "clerk-7" if n % 5 == 0 else None,
        "time": T0 + timedelta(seconds=n),
    }
    base.update(fields)
    return AuditEvent(**base)  # type: ignore[arg-type]


async def _write(store: AuditStore, chain: str, events: list[AuditEvent]) -> None:
    writer = AuditWriter(
        store,
        chain=chain,
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=WriterSettings(checkpoint_every=7),
    )
    await writer.start()
    for event in events:
        await writer.append(event)
    await writer.aclose()


async def _all(store: AuditStore, query: AuditQuery) -> list[StoredRecord]:
    found: list[StoredRecord] = []
    after = query.after
    while True:
        page = await store.query(
            AuditQuery(**{**_fields(query), "after": after})  # type: ignore[arg-type]
        )
        found.extend(page.records)
        if page.next is None:
            return found
        after = page.next


def _fields(query: AuditQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in query.__dataclass_fields__}


def _events(records: list[StoredRecord]) -> list[AuditEvent]:
    return [AuditRecord.from_stored(r.text, r.hash).event for r in records]


def _key(record: StoredRecord) -> tuple[str, str, int]:
    return (record.time, record.chain, record.sequence)


async def test_principal_filter_newest_first_with_exact_text(qstore: AuditStore) -> None:
    await _write(qstore, "gw-a", [_event(n) for n in range(1, 31)])
    page = await qstore.query(AuditQuery(principal="pw-1", limit=100))
    assert page.next is None
    assert [e.principal for e in _events(page.records)] == ["pw-1"] * 10
    assert [_key(r) for r in page.records] == sorted((_key(r) for r in page.records), reverse=True)
    stored = {r.sequence: r async for r in iter_records(qstore, "gw-a")}
    for record in page.records:  # what a query returns is the stored text and hash itself
        assert (record.text, record.hash) == (
            stored[record.sequence].text,
            stored[record.sequence].hash,
        )


async def test_keyset_pages_cover_everything_once_in_both_orders(qstore: AuditStore) -> None:
    # Two chains with records at the same instants: ties break on chain, then sequence.
    await _write(
        qstore, "gw-a", [_event(n, time=T0 + timedelta(seconds=n // 2)) for n in range(24)]
    )
    await _write(
        qstore, "gw-b", [_event(n, time=T0 + timedelta(seconds=n // 2)) for n in range(24)]
    )
    for oldest_first in (False, True):
        everything = await qstore.query(AuditQuery(limit=500, oldest_first=oldest_first))
        keys = [_key(r) for r in everything.records]
        assert keys == sorted(keys, reverse=not oldest_first)
        assert len(keys) == 48
        paged = await _all(qstore, AuditQuery(limit=5, oldest_first=oldest_first))
        assert [_key(r) for r in paged] == keys


async def test_pages_stay_stable_while_records_are_added(qstore: AuditStore) -> None:
    await _write(qstore, "gw-a", [_event(n) for n in range(10)])
    first = await qstore.query(AuditQuery(limit=4, oldest_first=True))
    assert first.next is not None
    await _write(qstore, "gw-b", [_event(n, time=T0 + timedelta(hours=1)) for n in range(3)])
    rest = await _all(qstore, AuditQuery(limit=4, oldest_first=True, after=first.next))
    assert [r.sequence for r in first.records + rest][:10] == list(range(1, 11))
    assert [r.chain for r in rest][-3:] == ["gw-b"] * 3


async def test_each_filter_and_their_combination(qstore: AuditStore) -> None:
    events = [_event(n) for n in range(1, 41)]
    events.append(_event(41, type=EventType.LOGIN, service=None, handling_province=None))
    await _write(qstore, "gw-a", events)
    everything = _events((await qstore.query(AuditQuery(limit=500))).records)

    async def check(query: AuditQuery, expected: list[AuditEvent]) -> None:
        got = _events(await _all(qstore, query))
        assert sorted(e.time for e in got if e.time) == sorted(e.time for e in expected if e.time)
        assert got, f"the fixture must give {query} something to find"

    await check(AuditQuery(case_id="QH-2"), [e for e in everything if e.case_id == "QH-2"])
    await check(
        AuditQuery(service="pension-transfer"),
        [e for e in everything if e.service == "pension-transfer"],
    )
    await check(AuditQuery(actor="clerk-7"), [e for e in everything if e.actor == "clerk-7"])
    # A province is the receiving or the handling one.
    await check(AuditQuery(province="62"), [e for e in everything if e.handling_province == "62"])
    await check(AuditQuery(province="63"), [e for e in everything if e.receiving_province == "63"])
    await check(AuditQuery(types=("login",)), [e for e in everything if e.type == "login"])
    since, until = format_time(T0 + timedelta(seconds=10)), format_time(T0 + timedelta(seconds=20))
    await check(
        AuditQuery(since=since, until=until),
        [e for e in everything if e.time and since <= format_time(e.time) < until],
    )
    await check(
        AuditQuery(principal="pw-0", service="degree-verification", province="62", since=since),
        [
            e
            for e in everything
            if e.principal == "pw-0"
            and e.service == "degree-verification"
            and e.time
            and format_time(e.time) >= since
        ],
    )
    assert (await qstore.query(AuditQuery(principal="pw-nobody"))).records == []


async def test_text_that_is_not_a_record_is_stored_and_found_by_time(qstore: AuditStore) -> None:
    odd = StoredRecord("gw-x", 1, format_time(T0), "not json at all", "0" * 64)
    listed = StoredRecord("gw-x", 2, format_time(T0), '["a","list"]', "1" * 64)
    await qstore.append([odd, listed])
    page = await qstore.query(AuditQuery(since=format_time(T0)))
    assert [r.text for r in page.records] == ['["a","list"]', "not json at all"]
    assert (await qstore.query(AuditQuery(principal="not json at all"))).records == []


def test_cursor_is_opaque_and_bound_to_its_order() -> None:
    position = QueryPosition(format_time(T0), "gw-a", 7)
    cursor = encode_cursor(position, oldest_first=False)
    assert decode_cursor(cursor, oldest_first=False) == position
    for bad in ("", "!!", cursor[:-2], "W10", "x" * 600):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, oldest_first=False)
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, oldest_first=True)
    with pytest.raises(ValueError, match="limit"):
        AuditQuery(limit=0)


async def test_lookup_table_is_append_only(backend: Backend, store: AuditStore) -> None:
    await _write(store, "gw-a", [_event(1)])
    # SQLite writes lookup rows after the records, in chunks; a query flushes them first.
    assert len((await store.query(AuditQuery(principal="pw-1"))).records) == 1
    for sql in (
        "UPDATE audit_index SET principal = ? WHERE sequence = 1",
        "DELETE FROM audit_index WHERE sequence > ?",
    ):
        with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError)):
            await backend.execute(sql, "pw-other" if sql.startswith("UPDATE") else 0)
    assert len((await store.query(AuditQuery(principal="pw-1"))).records) == 1


async def test_migration_2_indexes_records_written_before_it(backend: Backend) -> None:
    # A store as release 1 left it: migration 1 only, records already written.
    old = MemoryAuditStore()
    await _write(old, "gw-old", [_event(n) for n in range(1, 13)])
    rows = list(old.records_of("gw-old"))
    rows.append(StoredRecord("gw-old", 13, format_time(T0), "tampered, not JSON", "f" * 64))
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
    await store.open()  # applies migration 2, which fills the lookup table
    try:
        found = await _all(store, AuditQuery(principal="pw-2", oldest_first=True))
        assert [r.sequence for r in found] == [2, 5, 8, 11]
        assert len((await store.query(AuditQuery(limit=100))).records) == 13
    finally:
        await store.aclose()


# --- SQLite: lookup rows trail the records (written in sorted chunks, made at open if lost) ---


async def _index_rows(path: Path) -> list[tuple[str, int, str | None]]:
    conn = await connect_sqlite(path)
    try:
        rows = await conn.execute_fetchall(
            "SELECT chain_id, sequence, principal FROM audit_index ORDER BY chain_id, sequence"
        )
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await conn.close()


async def test_sqlite_lookup_rows_lost_with_a_crash_are_made_at_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    await _write(store, "gw-a", [_event(n) for n in range(1, 6)])
    assert len(await _all(store, AuditQuery(principal="pw-1"))) == 2
    await store.aclose()
    written = list(await _index_rows(path))
    # A crash after more records were committed but before their lookup rows were: the file
    # has records without rows (written here directly, as a writer would have).
    other = MemoryAuditStore()
    await _write(other, "gw-a", [_event(n) for n in range(1, 10)])
    later = [r for r in other.records_of("gw-a") if r.sequence > 5]
    conn = await connect_sqlite(path)
    try:
        await conn.executemany(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?)",
            [(r.chain, r.sequence, r.time, r.text, r.hash) for r in later],
        )
        await conn.commit()
    finally:
        await conn.close()
    assert await _index_rows(path) == written

    reopened = SqliteAuditStore(path)
    await reopened.open()
    try:
        rows = await _index_rows(path)
        assert [r[1] for r in rows] == list(range(1, 10))
        assert rows[6] == ("gw-a", 7, "pw-1")  # made from the stored text
        found = await _all(reopened, AuditQuery(principal="pw-1"))
        assert [r.sequence for r in found] == [7, 4, 1]
    finally:
        await reopened.aclose()


async def test_sqlite_lookup_rows_follow_without_a_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 0.5)
    monkeypatch.setattr(sqlite_audit, "LOOKUP_CHUNK", 4)
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    try:
        writer = AuditWriter(
            store, chain="gw-a", signer=CheckpointSigner(StaticKeyStore([new_signing_key()]))
        )
        await writer.start()
        started = time.monotonic()
        for n in range(1, 4):  # fewer than a chunk: written after the delay
            await writer.append(_event(n))
        rows = await _index_rows(path)
        if time.monotonic() - started < 0.4:  # a loaded machine may take longer than the delay
            assert rows == []
        for _ in range(500):
            if len(await _index_rows(path)) == 3:
                break
            await asyncio.sleep(0.02)
        assert [r[1] for r in await _index_rows(path)] == [1, 2, 3]
        await asyncio.gather(*(writer.append(_event(n)) for n in range(4, 12)))
        for _ in range(500):  # a full chunk is written at once
            if len(await _index_rows(path)) == 11:
                break
            await asyncio.sleep(0.02)
        assert [r[1] for r in await _index_rows(path)] == list(range(1, 12))
        await writer.aclose()
    finally:
        await store.aclose()


# --- SQLite: batches are written on the loop and made durable by an fsync of the WAL --------


@pytest.mark.kernel_aio
@pytest.mark.parametrize("kernel_fsync", [True, False], ids=["kernel", "thread"])
async def test_sqlite_append_returns_after_the_wal_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_fsync: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    real_kernel_fsync = KernelFsync.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    async def kernel(self: KernelFsync, path: str) -> None:
        synced.append(path)
        await real_kernel_fsync(self, path)

    monkeypatch.setattr(os, "fsync", fsync)  # the thread's way
    monkeypatch.setattr(KernelFsync, "fsync", kernel)  # the kernel's way (Linux)
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path, kernel_fsync=kernel_fsync)
    await store.open()
    if kernel_fsync and store._fsync is None:
        await store.aclose()
        pytest.skip("no asynchronous fsync in this kernel")
    assert (store._fsync is not None) is kernel_fsync
    synced.clear()  # the kernel's context syncs the database file once when it opens
    try:
        await _write(store, "gw-a", [_event(n) for n in range(1, 4)])
        # One fsync of the WAL per committed batch (three appends one after the other, then
        # the checkpoint the writer signs on close), each before its append returned.
        assert len(synced) >= 3
        assert set(synced) == {f"{path}-wal"}
    finally:
        await store.aclose()


async def test_sqlite_append_waits_off_the_loop_while_another_connection_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    writer = AuditWriter(
        store, chain="gw-a", signer=CheckpointSigner(StaticKeyStore([new_signing_key()]))
    )
    await writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # e.g. `tongban audit verify` catching up lookup rows
        pending = asyncio.create_task(writer.append(_event(1)))
        started = time.monotonic()
        await asyncio.sleep(0.2)  # the loop keeps running: the batch waits on the thread
        assert time.monotonic() - started < 1.0
        assert not pending.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 5) == 1
        assert await writer.append(_event(2)) == 2  # and the next batch is on the loop again
    finally:
        other.close()
        await writer.aclose()
        await store.aclose()
    assert [r.sequence for r in await _all_of(path)] == [1, 2]


async def _all_of(path: Path) -> list[StoredRecord]:
    store = SqliteAuditStore(path)
    await store.open()
    try:
        return [r async for r in iter_records(store, "gw-a")]
    finally:
        await store.aclose()
