"""SQLite: rows whose chain is one value go in with the chain bound once per statement.

``insert_rows(..., shared=column)`` binds a column that holds one value in every row (a batch's
chain) once per statement as ``?1``. What the tables hold (value and type of every column) must
be what ``executemany`` of the one-row statement left, for every count of rows around the
statements' sizes, for records, lookup rows and subject rows, with keys repeated and rows
already present (``INSERT OR IGNORE``: the first one stays), NULLs and text of every kind; rows
of several chains go in as before; a sequence written twice is still refused.
"""

from __future__ import annotations

import random
import sqlite3
from typing import Any

import pytest

from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import (
    AUDIT_MIGRATIONS,
    insert_rows,
    shared_statement,
    values_statement,
)

_TEXTS = ("p", "", "0", "名字", "a'b", 'q"uote', "x" * 300, "\u00e9\U0001f600", "NULL", "?1")
_COUNTS = [0, 1, 2, 3, 7, 8, 9, 15, 31, 32, 33, 49, 50, 51, 59, 107, 173]


def _schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for migration in AUDIT_MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    return conn


def _table(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    typed = ", ".join(f"{c}, typeof({c})" for c in columns)
    return list(conn.execute(f"SELECT {typed} FROM {table} ORDER BY 1, 2, 3, 4, 5, 6, 7, 8"))


def _text(rng: random.Random) -> str | None:
    return rng.choice((None, *_TEXTS))


def _lookup_rows(
    rng: random.Random, count: int, chains: tuple[str, ...]
) -> list[tuple[object, ...]]:
    return [
        (rng.choice(chains), rng.randrange(1, max(3, count // 3)), f"2026-12-07T10:{n % 60:02d}Z",
         *(_text(rng) for _ in range(8)))
        for n in range(count)
    ]  # fmt: skip


def _subject_rows(
    rng: random.Random, count: int, chains: tuple[str, ...]
) -> list[tuple[object, ...]]:
    return [
        (rng.choice(_TEXTS[:4]), f"2026-12-07T10:{n % 7:02d}Z", rng.choice(chains),
         rng.randrange(1, max(3, count // 2)))
        for n in range(count)
    ]  # fmt: skip


def _record_rows(rng: random.Random, count: int, chain: str) -> list[tuple[object, ...]]:
    start = rng.randrange(1, 1000)
    rows: list[tuple[object, ...]] = [
        (chain, start + n, f"2026-12-07T10:{n % 60:02d}Z", rng.choice(_TEXTS[:-1]) + str(n),
         f"{n:064x}")
        for n in range(count)
    ]  # fmt: skip
    rng.shuffle(rows)
    return rows


def _same_as_one_by_one(
    table: str, head: str, columns: int, rows: list[tuple[object, ...]], shared: int,
    present: list[tuple[object, ...]],
) -> None:  # fmt: skip
    one, many = _schema(), _schema()
    for conn in (one, many):
        conn.executemany(values_statement(head, columns, 1), present)
    one.executemany(values_statement(head, columns, 1), rows)
    insert_rows(many, head, columns, rows, shared=shared)
    assert _table(many, table) == _table(one, table)


@pytest.mark.parametrize("count", _COUNTS)
@pytest.mark.parametrize("chains", [("gw-a",), ("gw-a", "gw-b")])
def test_lookup_and_subject_rows_are_those_of_one_by_one(
    count: int, chains: tuple[str, ...]
) -> None:
    rng = random.Random(count * 7 + len(chains))
    _same_as_one_by_one(
        "audit_index", sqlite_audit._LOOKUP_ROWS, sqlite_audit._LOOKUP_COLUMNS,
        _lookup_rows(rng, count, chains), 0, _lookup_rows(rng, 3, chains),
    )  # fmt: skip
    _same_as_one_by_one(
        "audit_subjects", sqlite_audit._SUBJECT_ROWS, sqlite_audit._SUBJECT_COLUMNS,
        _subject_rows(rng, count, chains), 2, _subject_rows(rng, 3, chains),
    )  # fmt: skip


@pytest.mark.parametrize("count", _COUNTS)
def test_records_are_those_of_one_by_one(count: int) -> None:
    rng = random.Random(count)
    _same_as_one_by_one(
        "audit_records", sqlite_audit._RECORD_ROWS, sqlite_audit._RECORD_COLUMNS,
        _record_rows(rng, count, "gw-a"), 0, [],
    )  # fmt: skip


@pytest.mark.parametrize("count", [1, 2, 5, 50, 51, 83])
def test_a_sequence_written_twice_is_refused_and_nothing_of_the_statement_stays(
    count: int,
) -> None:
    rng = random.Random(count)
    conn = _schema()
    rows = _record_rows(rng, count, "gw-a")
    head, columns = sqlite_audit._RECORD_ROWS, sqlite_audit._RECORD_COLUMNS
    conn.execute(values_statement(head, columns, 1), rows[-1])
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):
        insert_rows(conn, head, columns, rows, shared=0)  # (a transaction the binding began)
    conn.rollback()
    assert _table(conn, "audit_records") == _table_of([rows[-1]])


def _table_of(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    conn = _schema()
    conn.executemany(
        values_statement(sqlite_audit._RECORD_ROWS, sqlite_audit._RECORD_COLUMNS, 1), rows
    )
    return _table(conn, "audit_records")


def test_the_shared_statement_binds_the_column_once() -> None:
    assert shared_statement("INSERT INTO t", 3, 2, 0) == (
        "INSERT INTO t VALUES (?1, ?2, ?3), (?1, ?4, ?5)"
    )
    assert shared_statement("INSERT INTO t", 4, 2, 2) == (
        "INSERT INTO t VALUES (?2, ?3, ?1, ?4), (?5, ?6, ?1, ?7)"
    )


def test_one_chain_goes_in_the_statements_of_the_sizes() -> None:
    """A batch of 53 records of one chain: statements of 50, 2 and 1 rows, the chain bound
    once in each (``?1``)."""
    rng = random.Random(5)
    rows = _record_rows(rng, 53, "gw-a")
    seen: list[str] = []
    conn = _schema()
    conn.set_trace_callback(seen.append)
    insert_rows(conn, sqlite_audit._RECORD_ROWS, sqlite_audit._RECORD_COLUMNS, rows, shared=0)
    inserts = [sql for sql in seen if sql.startswith("INSERT")]
    assert [sql.count("),") + 1 for sql in inserts] == [50, 2, 1]
    assert len(_table(conn, "audit_records")) == 53


@pytest.mark.parametrize("seed", range(40))
def test_a_slice_is_sorted_as_by_the_python_key(seed: int) -> None:
    """``_by_principal`` (the key made in C, else the Python key) gives the order of
    ``sorted(chunk, key=_principal_order)``, rows without a principal among them or not, and
    leaves the slice as it was."""
    rng = random.Random(seed)
    principals: tuple[str | None, ...] = ("pw-b", "pw-a", "", "pw-c")
    if seed % 2:
        principals += (None,)
    chunk: list[Any] = [
        ("gw-" + rng.choice("ab"), n, "t", "service_call_requested", rng.choice(principals),
         None, None, "s", "63", "61", "y")
        for n in range(rng.randrange(0, 40))
    ]  # fmt: skip
    before = list(chunk)
    assert sqlite_audit._by_principal(chunk) == sorted(chunk, key=sqlite_audit._principal_order)
    assert chunk == before
