"""The rate-limit file's counters keyed by their key (``WITHOUT ROWID``, migration 2): a file
of the first schema keeps its live counters, expired ones are still purged, and two real
processes drawing on one file together never get more units than the budget."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

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


class _StoreClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def _rows(store: SqliteStorage) -> list[tuple[Any, ...]]:
    with store._db.locked() as conn:
        return conn.execute(
            "SELECT key, count, expires_at FROM rl_counters ORDER BY key"
        ).fetchall()


async def test_a_live_window_is_added_to_as_the_single_upsert_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live window's counter is added to by an ``UPDATE`` that leaves its expiry (and so the
    expiry index) alone; a new or expired window by the upsert. Drawn side by side with a store
    that writes every draw by the upsert alone, through new, live and expired windows (the
    store's clock moved across them, back to a window long expired too), the answers and the
    rows are the same after every transaction. A lone call's one-statement draw (``_DRAW``)
    adds to a live window the same way, and is held to the same upsert here."""
    clock = _StoreClock(1_800_000_000.0)
    monkeypatch.setattr(sqlite_storage, "time", clock)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store = SqliteStorage(tmp_path / "a" / sqlite_storage.FILE_NAME)
    reference = SqliteStorage(tmp_path / "b" / sqlite_storage.FILE_NAME)
    upsert_alone = sqlite_storage._ADD

    def always_upsert(
        conn: sqlite3.Connection, key: str, current: int, units: int, expiry: int, now: float
    ) -> None:
        conn.execute(upsert_alone, (key, units, now + 2 * expiry, now, now))

    rng = random.Random(7)
    keys = ["LIMITER/person/a", "LIMITER/person/b", "LIMITER/client/portal"]
    live_updates = 0
    try:
        for step in range(400):
            clock.now += rng.choice([0.0, 0.1, 0.7, 1.3, 4.0])
            calls = [
                [(key, rng.choice([3, 5, 50]), rng.choice([1, 2]), rng.choice([1, 1, 2]))]
                for key in rng.sample(keys, rng.randint(1, 3))
            ]
            before = _rows(store)
            answers = store.acquire_calls(calls)
            after = {key: (count, expires) for key, count, expires in _rows(store)}
            live_updates += sum(
                1
                for key, count, expires in before
                if key in after and after[key][1] == expires and after[key][0] != count
            )
            with monkeypatch.context() as patched:
                patched.setattr(sqlite_storage, "_add", always_upsert)
                # and a lone call in the transaction too, not in the one statement
                patched.setattr(sqlite_storage, "_draw", lambda *args: False)
                expected = reference.acquire_calls(calls)
            assert answers == expected, step
            assert _rows(store) == _rows(reference), step
    finally:
        await store.aclose()
        await reference.aclose()
    assert live_updates > 50  # the live path was taken, and often
