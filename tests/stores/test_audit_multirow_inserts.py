"""SQLite: the lookup thread inserts many rows per statement; the rows are those of one by one.

The lookup thread writes its lookup and subject rows fifty to a statement (then 32, 16, 8, 4,
2, and a last row alone). What the tables hold must be what ``executemany`` of the one-row
statement left, for every count of rows around the sizes, with keys repeated among the rows and
with rows already present (``INSERT OR IGNORE``: the first one stays), NULLs and text of every
kind.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.audit.store import StoredRecord
from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import (
    AUDIT_MIGRATIONS,
    ROWS_PER_STATEMENT,
    SqliteAuditStore,
    insert_rows,
    values_statement,
)

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


@pytest.mark.parametrize(
    "count", [0, 1, 2, 3, 7, 8, 9, 15, 31, 37, 49, 50, 51, 58, 59, 107, 150, 173]
)
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
    # SQLite allows 32,766 parameters a statement; builds before 3.32 allowed 999.
    assert ROWS_PER_STATEMENT[0] * sqlite_audit._LOOKUP_COLUMNS <= 999
    assert 2 * (len(ROWS_PER_STATEMENT) + 1) < 20
    statements: list[str] = []

    class Recording:
        def execute(self, sql: str, params: Sequence[object]) -> None:
            statements.append(sql)
            assert sql.count("?") == len(params)

        def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
            statements.extend(sql for _ in rows)

    for count, sizes in ((59, [50, 8, 1]), (37, [32, 4, 1]), (49, [32, 16, 1]), (1, [1])):
        statements.clear()
        insert_rows(Recording(), "INSERT INTO t", 2, [(n, n) for n in range(count)])  # type: ignore[arg-type]
        assert [s.count("(") for s in statements] == sizes


async def test_the_stores_lookup_and_subject_rows_after_a_flush(tmp_path: Path) -> None:
    """Records appended in batches of several sizes, flushed in chunks of fifty: each lookup
    row is the record's own (NULL where the record has no value) and each subject row too."""
    rng = random.Random(5)
    records: list[StoredRecord] = []
    for n in range(1, 124):
        time = f"2026-12-07T10:{n // 60:02d}:{n % 60:02d}Z"
        values = [rng.choice((None, *_TEXTS)) for _ in range(8)]
        subjects = tuple(dict.fromkeys(rng.choice(_TEXTS[:4]) or "k" for _ in range(n % 4)))
        lookup = ("gw-a", n, time, *values)
        records.append(
            StoredRecord("gw-a", n, time, "{}", f"h{n}", lookup, subjects)  # type: ignore[arg-type]
        )
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    await store.open()
    try:
        start = 0
        while start < len(records):
            size = rng.choice((1, 6, 13))
            await store.append(records[start : start + size])
            start += size
        await store.lookup_gaps()  # flushes first
    finally:
        await store.aclose()
    conn = sqlite3.connect(tmp_path / "audit.sqlite")
    expected = _schema(sqlite3.connect(":memory:"))
    expected.executemany(
        values_statement(sqlite_audit._LOOKUP_ROWS, 11, 1), [r.lookup for r in records if r.lookup]
    )
    expected.executemany(
        values_statement(sqlite_audit._SUBJECT_ROWS, 4, 1),
        [(k, r.time, r.chain, r.sequence) for r in records for k in r.subjects or ()],
    )
    for table in ("audit_index", "audit_subjects"):
        assert _table(conn, table) == _table(expected, table)
    assert len(_table(conn, "audit_subjects")) > 100
