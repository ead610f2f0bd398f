"""SQLite: a batch's records go in many to a statement, and None binds as NULL without a search.

The store inserts a batch's records as it inserts the lookup rows (``insert_rows``: fifty to a
statement, then 32, 16, 8, 4, 2 and a last one alone), and registers an adapter for ``None``
so that the binding does not look for one the slow way. What the file holds must be what one
statement per record left (value and type of every column), a sequence already written must
refuse the whole batch as before, and None must still be NULL.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from gateway.audit.store import ChainConflict, StoredRecord
from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import AUDIT_MIGRATIONS, SqliteAuditStore

_TEXTS = ("p", "0", "名字", "a'b", 'q"uote', "x" * 3000, "\u00e9\U0001f600", "NULL", "{}")
_ONE_BY_ONE = (
    "INSERT INTO audit_records (chain_id, sequence, recorded_at, record, hash)"
    " VALUES (?, ?, ?, ?, ?)"
)


def _records(rng: random.Random, chain: str, first: int, count: int) -> list[StoredRecord]:
    records = []
    for sequence in range(first, first + count):
        text = json.dumps({"n": sequence, "t": rng.choice(_TEXTS)}, ensure_ascii=False)
        time = f"2026-12-07T10:{sequence % 60:02d}:00.{sequence:06d}Z"
        records.append(StoredRecord(chain, sequence, time, text, f"{rng.getrandbits(256):064x}"))
    return records


def _records_table(path: Path | str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(
            conn.execute(
                "SELECT chain_id, typeof(chain_id), sequence, typeof(sequence), recorded_at,"
                " typeof(recorded_at), record, typeof(record), hash, typeof(hash)"
                " FROM audit_records ORDER BY chain_id, sequence"
            )
        )
    finally:
        conn.close()


def _one_by_one(batches: list[list[StoredRecord]]) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(":memory:")
    for migration in AUDIT_MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    for batch in batches:
        conn.executemany(
            _ONE_BY_ONE, [(r.chain, r.sequence, r.time, r.text, r.hash) for r in batch]
        )
    return list(
        conn.execute(
            "SELECT chain_id, typeof(chain_id), sequence, typeof(sequence), recorded_at,"
            " typeof(recorded_at), record, typeof(record), hash, typeof(hash)"
            " FROM audit_records ORDER BY chain_id, sequence"
        )
    )


@pytest.mark.parametrize("seed", range(4))
async def test_a_batchs_records_are_those_of_one_statement_each(tmp_path: Path, seed: int) -> None:
    """Batches of every size around the statements' sizes, on two chains: the table holds,
    value and type, what one INSERT per record left."""
    rng = random.Random(seed)
    sizes = [1, 2, 3, 5, 6, 7, 13, 16, 31, 49, 50, 51, 99, 100, 173]
    rng.shuffle(sizes)
    batches: list[list[StoredRecord]] = []
    next_of = {"gw-a": 1, "gw-b": 1}
    for size in sizes:
        chain = rng.choice(("gw-a", "gw-b"))
        batches.append(_records(rng, chain, next_of[chain], size))
        next_of[chain] += size
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        for batch in batches:
            await store.append(batch)
    finally:
        await store.aclose()
    stored = _records_table(tmp_path / "audit.sqlite")
    assert stored == _one_by_one(batches)
    assert len(stored) == sum(sizes)


@pytest.mark.parametrize(
    ("size", "clash"),
    [(1, 0), (2, 1), (3, 2), (50, 0), (50, 25), (50, 49), (59, 50), (59, 58), (120, 99)],
)
async def test_a_sequence_written_before_refuses_the_whole_batch(
    tmp_path: Path, size: int, clash: int
) -> None:
    """A record whose sequence is in the file already, first, inside or last of a statement
    of fifty or in the rows left over: ChainConflict, and nothing of the batch is written."""
    rng = random.Random(size * 1000 + clash)
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        written = _records(rng, "gw-a", 1, 3)
        await store.append(written)
        batch = _records(rng, "gw-a", 4, size)
        batch[clash] = _records(rng, "gw-a", 2, 1)[0]  # sequence 2 again
        with pytest.raises(ChainConflict):
            await store.append(batch)
        await store.append(_records(rng, "gw-a", 4, 2))  # the chain goes on
    finally:
        await store.aclose()
    assert [row[2] for row in _records_table(tmp_path / "audit.sqlite")] == [1, 2, 3, 4, 5]


def test_none_binds_as_null_on_every_connection() -> None:
    """The store's adapter for None (registered for the process) gives None itself back, and
    SQLite stores NULL: for a plain connection as for the store's rows."""
    adapter = sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)]
    assert adapter(None) is None
    assert adapter == sqlite_audit._NO_VALUES.get
    conn = sqlite3.connect(":memory:")
    assert conn.execute("SELECT typeof(?), ? IS NULL", (None, None)).fetchone() == ("null", 1)
    conn.execute("CREATE TABLE t (a, b TEXT, c INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, None, None), (1, "x", None)])
    assert conn.execute("SELECT typeof(a), typeof(b), typeof(c) FROM t").fetchall() == [
        ("null", "null", "null"),
        ("integer", "text", "null"),
    ]


async def test_the_lookup_rows_nulls_are_null(tmp_path: Path) -> None:
    """A record without actor, case or provinces: its lookup row holds NULL there, not text."""
    lookup = ("gw-a", 1, "2026-12-07T10:00:00Z", "t", "pw", None, None, "s", None, None, None)
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        await store.append(
            [StoredRecord("gw-a", 1, "2026-12-07T10:00:00Z", "{}", "0" * 64, lookup, ())]
        )
        await store.lookup_gaps()  # flushes first
    finally:
        await store.aclose()
    conn = sqlite3.connect(tmp_path / "audit.sqlite")
    row = conn.execute(
        "SELECT typeof(actor), typeof(case_id), typeof(receiving_province), typeof(system),"
        " typeof(principal) FROM audit_index"
    ).fetchone()
    assert row == ("null", "null", "null", "null", "text")
