"""The AuditStore contract, run unchanged on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gateway.audit.store import (
    AuditStore,
    ChainConflict,
    ChainHead,
    StoredCheckpoint,
    StoredRecord,
    iter_records,
)
from tests.stores.backends import Backend


def rec(chain: str, sequence: int, text: str | None = None) -> StoredRecord:
    return StoredRecord(
        chain,
        sequence,
        f"2025-01-01T00:00:{sequence % 60:02d}.000000Z",
        text if text is not None else f'{{"n":{sequence},"省":"青海"}}',
        f"{sequence:064x}",
    )


def cp(chain: str, sequence: int) -> StoredCheckpoint:
    return StoredCheckpoint(
        chain, sequence, f"{sequence:064x}", "2025-01-01T00:00:00.000000Z", "k1", f"jws.{sequence}"
    )


async def read_all(
    store: AuditStore, chain: str, start: int = 1, end: int | None = None
) -> list[StoredRecord]:
    return [r async for r in iter_records(store, chain, start, end)]


async def test_open_is_idempotent(backend: Backend, store: AuditStore) -> None:
    again = backend.new_store()
    await again.open()  # migrations already applied: nothing happens
    await again.aclose()
    await store.ping()


async def test_append_and_read_in_order(store: AuditStore) -> None:
    await store.register_chain("a", "2025-01-01T00:00:00Z")
    await store.append([rec("a", n) for n in range(1, 8)])
    await store.append([rec("a", n) for n in range(8, 13)], cp("a", 12))
    assert [r.sequence for r in await read_all(store, "a")] == list(range(1, 13))
    assert [r.sequence for r in await read_all(store, "a", 4, 6)] == [4, 5, 6]
    pages = [[r.sequence for r in page] async for page in store.read_pages("a", 2, page_size=5)]
    assert pages == [[2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12]]
    assert await store.head("a") == ChainHead("a", 12, f"{12:064x}")
    assert await store.head("nothing") is None


async def test_text_is_kept_byte_for_byte(store: AuditStore) -> None:
    # Not canonical on purpose: a store must never reorder keys or touch whitespace.
    odd = '{"z":1, "a":{"y":[3,2,1],"b":"\\u00e9 é 𠀋"},"A":null}'
    await store.append([rec("a", 1, odd)])
    [back] = await read_all(store, "a")
    assert back.text == odd
    [[raw]] = [page async for page in store.read_raw_pages("a")]
    assert raw == (1, odd.encode("utf-8"), f"{1:064x}")


async def test_batch_is_atomic_and_duplicates_conflict(store: AuditStore) -> None:
    await store.append([rec("a", 1), rec("a", 2)])
    with pytest.raises(ChainConflict):
        await store.append([rec("a", 3), rec("a", 4), rec("a", 2)], cp("a", 4))
    assert [r.sequence for r in await read_all(store, "a")] == [1, 2]
    assert await store.checkpoints("a") == []
    await store.append([rec("a", 3)])
    assert (await store.head("a")) == ChainHead("a", 3, f"{3:064x}")


async def test_checkpoints_chains_and_heads(store: AuditStore) -> None:
    for chain in ("b", "a", "a"):
        await store.register_chain(chain, "2025-01-01T00:00:00Z")
    await store.append([rec("a", 1), rec("a", 2)], cp("a", 2))
    await store.append([rec("b", 1)])
    await store.append_checkpoint(cp("b", 1))
    await store.append([rec("a", 3)])
    await store.append_checkpoint(cp("a", 3))
    with pytest.raises(ChainConflict):
        await store.append_checkpoint(cp("a", 3))
    assert await store.chains() == ["a", "b"]
    await store.append([rec("u", 1)])  # records without a registration are still found
    assert await store.chains() == ["a", "b", "u"]
    assert [c.sequence for c in await store.checkpoints("a")] == [2, 3]
    assert [c.sequence for c in await store.checkpoints("a", 3)] == [3]
    assert [c.sequence for c in await store.checkpoints("a", 0, 2)] == [2]
    assert await store.last_checkpoint("a") == cp("a", 3)
    assert await store.last_checkpoint("c") is None
    assert await store.heads() == {
        "a": ChainHead("a", 3, f"{3:064x}"),
        "b": ChainHead("b", 1, f"{1:064x}"),
        "u": ChainHead("u", 1, f"{1:064x}"),
    }


async def test_sequence_range_by_time(store: AuditStore) -> None:
    await store.append([rec("a", n) for n in range(1, 21)])
    assert await store.sequence_range("a", None, None) == (1, 20)
    assert await store.sequence_range("a", "2025-01-01T00:00:05", "2025-01-01T00:00:09") == (5, 8)
    assert await store.sequence_range("a", "2025-01-02", None) is None


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_records SET record = 'x'",
        "DELETE FROM audit_records WHERE sequence = 1",
        "DELETE FROM audit_records",
        "UPDATE audit_checkpoints SET jws = 'x'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_chains",
    ],
)
async def test_database_refuses_changes(backend: Backend, store: AuditStore, sql: str) -> None:
    await store.register_chain("a", "2025-01-01T00:00:00Z")
    await store.append([rec("a", 1)], cp("a", 1))
    with pytest.raises(Exception, match="append-only"):
        await backend.execute(sql)
    assert len(await read_all(store, "a")) == 1
    assert len(await store.checkpoints("a")) == 1


async def test_database_refuses_clearing_tables(backend: Backend, store: AuditStore) -> None:
    # PostgreSQL: TRUNCATE has its own trigger. SQLite has no TRUNCATE; its truncate
    # optimisation of an unqualified DELETE is off when a DELETE trigger exists.
    await store.register_chain("a", "2025-01-01T00:00:00Z")
    await store.append([rec("a", 1)], cp("a", 1))  # rows in every table: row triggers fire
    verb = "TRUNCATE" if backend.name == "postgres" else "DELETE FROM"
    for table in ("audit_records", "audit_checkpoints", "audit_chains"):
        with pytest.raises(Exception, match="append-only"):
            await backend.execute(f"{verb} {table}")
    assert len(await read_all(store, "a")) == 1
