"""The rate-limit file's counters keyed by their key (``WITHOUT ROWID``, migration 2): a file
of the first schema keeps its live counters, expired ones are still purged, and two real
processes drawing on one file together never get more units than the budget."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.ratelimit import sqlite_storage
from gateway.ratelimit.sqlite_storage import MIGRATIONS, SqliteStorage
from gateway.stores.migrations import migrate_sqlite_blocking


def _first_schema_file(path: Path, rows: list[tuple[str, int, float]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        migrate_sqlite_blocking(conn, "ratelimits", MIGRATIONS[:1])
        conn.executemany("INSERT INTO rl_counters (key, count, expires_at) VALUES (?, ?, ?)", rows)
    finally:
        conn.close()


def _table_sql(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'rl_counters'"
        ).fetchone()
        indexes = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    finally:
        conn.close()
    assert "rl_counters_expiry" in indexes
    return str(row[0])


async def test_a_file_of_the_first_schema_keeps_its_live_counters(tmp_path: Path) -> None:
    path = tmp_path / sqlite_storage.FILE_NAME
    now = time.time()
    previous_key, current_key = SqliteStorage.sliding_window_keys("LIMITER/person/p1", 60, now)
    _first_schema_file(
        path,
        [(previous_key, 7, now + 60), (current_key, 3, now + 120), ("gone", 5, now - 1)],
    )
    assert "WITHOUT ROWID" not in _table_sql(path)

    store = SqliteStorage(path)
    try:
        assert "WITHOUT ROWID" in _table_sql(path)
        previous, _, current, _ = await store.get_sliding_window("LIMITER/person/p1", 60)
        assert (previous, current) == (7, 3)
        # The draw goes on from the carried counter; the first draw purges the expired row.
        drawn = store.acquire_all([("LIMITER/person/p1", 1000, 60, 2)])
        assert drawn.granted == [2]
        assert await store.get(current_key) == 5
        assert store._db.one("SELECT count(*) FROM rl_counters WHERE key = 'gone'", ()) == (0,)
    finally:
        await store.aclose()

    # Opened again: the second migration is not applied twice.
    SqliteStorage(path)._db.close()
    conn = sqlite3.connect(path)
    try:
        versions = conn.execute(
            "SELECT version FROM schema_migrations WHERE component = 'ratelimits' ORDER BY version"
        ).fetchall()
    finally:
        conn.close()
    assert versions == [(1,), (2,)]


def _draw_units(path: str, budget: int, draws: int, start: Any, results: Any) -> None:
    store = SqliteStorage(Path(path), busy_timeout=10.0)
    start.wait(timeout=60)
    granted = 0
    for i in range(draws):
        # Single units, and now and then a block of three beside one (as leases ask for them).
        calls = [[("LIMITER/client/portal", budget, 3600, 1)]]
        if i % 5 == 0:
            calls.append([("LIMITER/client/portal", budget, 3600, 3)])
        granted += sum(sum(drawn.granted) for drawn in store.acquire_calls(calls))
    store._db.close()
    results.put(granted)


def test_two_processes_drawing_on_one_file_get_exactly_the_budget(tmp_path: Path) -> None:
    """Each process asks for about twice the budget: together they are granted the budget,
    no unit more and none less (every draw that found room took it)."""
    budget = 500
    path = tmp_path / sqlite_storage.FILE_NAME
    SqliteStorage(path)._db.close()  # the schema, before the processes open the file
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=_draw_units, args=(str(path), budget, 700, start, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    granted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(granted) == budget
