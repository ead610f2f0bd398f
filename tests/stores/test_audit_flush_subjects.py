"""A flush's subject rows go with their records' slice, however the records name subjects:
one each (taken as a slice of the sorted rows), or some none and some several (as many rows
as records, but not one each), appended out of order in several batches."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit.store import LookupRow, StoredRecord
from gateway.stores import sqlite_audit
from gateway.stores.sqlite_audit import SqliteAuditStore

Write = Callable[[sqlite3.Connection], dict[str, int]]


def _record(n: int, subjects: tuple[str, ...]) -> StoredRecord:
    lookup = ("gw-a", n, f"2026-12-08T01:00:{n:02d}Z", "t", f"p-{n % 3}", None, None,
              None, None, None, None)  # fmt: skip
    return StoredRecord(
        "gw-a", n, f"2026-12-08T01:00:{n:02d}Z", f'{{"n":{n}}}', f"{n:064x}", lookup, subjects
    )


@pytest.mark.parametrize(
    "shape",
    ["one each", "none and two", "two each"],
)
async def test_each_slice_writes_the_subject_rows_of_its_own_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    monkeypatch.setattr(sqlite_audit, "LOOKUP_DELAY", 60.0)  # flushed by the test only
    monkeypatch.setattr(sqlite_audit, "LOOKUP_TRANSACTION", 3)
    real = sqlite_audit._lookup_writer
    slices: list[tuple[list[int], list[tuple[int, str]]]] = []

    def watched(
        rows: list[LookupRow], subjects: list[tuple[str, str, str, int]], *a: object
    ) -> Write:
        slices.append((sorted(row[1] for row in rows), [(s[3], s[0]) for s in subjects]))
        return real(rows, subjects, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_audit, "_lookup_writer", watched)

    def subjects_of(n: int) -> tuple[str, ...]:
        if shape == "one each":
            return (f"pk-{n}",)
        if shape == "two each":
            return (f"pk-{n}", f"pa-{n}")
        return () if n % 2 else (f"pk-{n}", f"pa-{n}")  # as many rows as records in all

    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        # Batches of 4, 2 and 4 records: every slice but the last is three records.
        for batch in ((1, 2, 3, 4), (5, 6), (7, 8, 9, 10)):
            await store.append([_record(n, subjects_of(n)) for n in batch])
        await store.lookup_gaps()  # the flush
    finally:
        await store.aclose()
    assert [rows for rows, _ in slices] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    for rows, subjects in slices:
        assert subjects == [(n, key) for n in rows for key in subjects_of(n)]
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        found = conn.execute("SELECT sequence, subject FROM audit_subjects").fetchall()
    finally:
        conn.close()
    assert sorted(found) == sorted((n, key) for n in range(1, 11) for key in subjects_of(n))
