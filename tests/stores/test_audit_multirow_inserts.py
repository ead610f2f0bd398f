"""SQLite: the audit store inserts many rows per statement; the rows are those of one by one.

The lookup thread writes its lookup and subject rows fifty to a statement (then eight, then
one), and a batch's records go in one statement per sixteen. What the tables hold, the conflict
rules and the errors must be those of ``executemany`` of the one-row statement, for every count
of rows around the sizes, with rows already present, NULLs and text of every kind.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.audit.store import ChainConflict, StoredRecord
from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import (
    AUDIT_MIGRATIONS,
    RECORDS_PER_STATEMENT,
    ROWS_PER_STATEMENT,
    SqliteAuditStore,
    insert_rows,
    values_statement,
)
from gateway.stores.sqlite_audit import _insert_records as insert_records

_TEXTS = ("p", "", "0", "名字", "a'b", 'q"uote', "x" * 300, "\u00e9\U0001f600", "NULL")


def _schema(conn: sqlite3.Connection) -> sqlite3.Connection:
    for migration in AUDIT_MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    return conn


def _lookup_rows(rng: random.Random, count: int) -> list[tuple[object, ...]]:
    """Rows with keys repeated (with other values) within them and with the table's: which
    one is kept depends on the order the rows go in."""
    rows: list[tuple[object, ...]] = []
    for _ in range(count):
        chain = rng.choice(("gw-a", "gw-b"))
        sequence = rng.randrange(1, max(3, count // 3))
        values = [rng.choice((None, *_TEXTS)) for _ in range(8)]
        rows.append((chain, sequence, f"2026-12-07T10:{sequence % 60:02d}:00Z", *values))
    return rows


def _table(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    typed = ", ".join(f"{c}, typeof({c})" for c in columns)
    return list(conn.execute(f"SELECT {typed} FROM {table} ORDER BY 1, 2, 3, 4, 5, 6"))


def _both(
    head: str, columns: int, rows: Sequence[tuple[object, ...]], present: list[tuple[object, ...]]
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    one, many = _schema(sqlite3.connect(":memory:")), _schema(sqlite3.connect(":memory:"))
    for conn in (one, many):
        conn.executemany(values_statement(head, columns, 1), present)
    one.executemany(values_statement(head, columns, 1), rows)
    insert_rows(many, head, columns, rows)
    return one, many


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 49, 50, 51, 58, 59, 107, 150, 173])
def test_lookup_rows_are_those_of_one_by_one(count: int) -> None:
    rng = random.Random(count)
    present = _lookup_rows(rng, 3)
    one, many = _both(
        sqlite_audit._LOOKUP_ROWS, sqlite_audit._LOOKUP_COLUMNS, _lookup_rows(rng, count), present
    )
    assert _table(many, "audit_index") == _table(one, "audit_index")
    assert len(_table(one, "audit_index")) > 0


@pytest.mark.parametrize("count", [0, 1, 8, 50, 51, 66, 130])
def test_subject_rows_are_those_of_one_by_one(count: int) -> None:
    rng = random.Random(count)

    def rows(n: int) -> list[tuple[object, ...]]:
        return [
            (rng.choice(_TEXTS[:6]), "2026-12-07T10:00:00Z", "gw-a", rng.randrange(1, 5))
            for _ in range(n)
        ]

    one, many = _both(
        sqlite_audit._SUBJECT_ROWS, sqlite_audit._SUBJECT_COLUMNS, rows(count), rows(2)
    )
    assert _table(many, "audit_subjects") == _table(one, "audit_subjects")


def test_the_statement_sizes_are_few_and_fit_the_cache() -> None:
    # Each size is a statement of its own in the connection's cache (128 by default).
    assert list(ROWS_PER_STATEMENT) == sorted(ROWS_PER_STATEMENT, reverse=True)
    assert ROWS_PER_STATEMENT[0] * sqlite_audit._LOOKUP_COLUMNS < 32766  # SQLite's limit
    assert RECORDS_PER_STATEMENT + 2 * (len(ROWS_PER_STATEMENT) + 1) < 100
    statements: list[str] = []

    class Recording:
        def execute(self, sql: str, params: Sequence[object]) -> None:
            statements.append(sql)
            assert sql.count("?") == len(params)

        def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
            statements.extend(sql for _ in rows)

    insert_rows(Recording(), "INSERT INTO t", 2, [(n, n) for n in range(59)])  # type: ignore[arg-type]
    assert [s.count("(") for s in statements] == [50, 8, 1]


def _record(sequence: int) -> tuple[str, int, str, str, str]:
    return ("gw-a", sequence, "2026-12-07T10:00:00Z", f'{{"sequence":{sequence}}}', f"h{sequence}")


@pytest.mark.parametrize("count", [1, 2, 6, 15, 16, 17, 33, 40])
def test_a_batch_of_records_is_stored_in_order(count: int) -> None:
    conn = _schema(sqlite3.connect(":memory:"))
    rows = [_record(n) for n in range(1, count + 1)]
    insert_records(conn, rows)
    assert list(conn.execute("SELECT * FROM audit_records ORDER BY sequence")) == rows


@pytest.mark.parametrize("clash", [1, 16, 17, 30])
def test_a_record_that_exists_fails_the_batch_as_before(clash: int) -> None:
    one, many = _schema(sqlite3.connect(":memory:")), _schema(sqlite3.connect(":memory:"))
    for conn in (one, many):
        conn.execute(values_statement(sqlite_audit._RECORD_ROWS, 5, 1), _record(clash))
    rows = [_record(n) for n in range(1, 31) if n != clash] + [_record(clash)]
    with pytest.raises(sqlite3.IntegrityError):
        one.executemany(values_statement(sqlite_audit._RECORD_ROWS, 5, 1), rows)
    with pytest.raises(sqlite3.IntegrityError):
        insert_records(many, rows)


async def test_the_store_keeps_a_batch_whole_or_not_at_all(tmp_path: Path) -> None:
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        first = [StoredRecord("gw-a", n, "2026-12-07T10:00:00Z", "{}", f"h{n}") for n in (1, 2)]
        await store.append(first)
        batch = [
            StoredRecord("gw-a", n, "2026-12-07T10:00:01Z", "{}", f"h{n}") for n in range(3, 40)
        ]
        with pytest.raises(ChainConflict):
            await store.append([*batch, first[1]])
        head = await store.head("gw-a")
        assert head is not None
        assert head.sequence == 2
        await store.append(batch)
        pages = [r async for page in store.read_pages("gw-a") for r in page]
        assert [r.sequence for r in pages] == list(range(1, 40))
    finally:
        await store.aclose()
