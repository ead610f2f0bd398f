"""Waiting for another process's write lock without SQLite's sleeping busy handler
(``begin_yielding``), as the rate-limit file's draws do."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.ratelimit.sqlite_storage import SqliteStorage
from gateway.stores.sqlite import begin_yielding, immediate


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


def _hold_lock(path: Path, release: threading.Event) -> threading.Thread:
    """Another connection takes the write lock and keeps it until ``release`` is set."""
    taken = threading.Event()

    def hold() -> None:
        other = _connect(path)
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        release.wait(10)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    return thread


def test_the_lock_is_taken_once_the_other_connection_lets_it_go(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    conn = _connect(path)
    conn.execute("CREATE TABLE t (n INTEGER)")
    release = threading.Event()
    holder = _hold_lock(path, release)
    # Without waiting, the lock is refused at once: the connection has no busy handler.
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("BEGIN IMMEDIATE")
    threading.Timer(0.05, release.set).start()
    with immediate(conn, wait=30.0):
        conn.execute("INSERT INTO t VALUES (1)")
    holder.join()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    conn.close()


def test_a_lock_held_past_the_wait_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    conn = _connect(path)
    release = threading.Event()
    holder = _hold_lock(path, release)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            begin_yielding(conn, 0.05)
        assert not conn.in_transaction
    finally:
        release.set()
        holder.join()
    begin_yielding(conn, 0.05)  # free again
    conn.execute("ROLLBACK")
    conn.close()


def test_other_errors_are_not_waited_for(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "f.sqlite")
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_yielding(conn, 30.0)
    conn.close()


async def test_rate_limit_draws_wait_for_another_workers_lock(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "ratelimits.sqlite", busy_timeout=30.0)
    try:
        with store._db.locked() as conn:
            assert conn.execute("PRAGMA busy_timeout").fetchone() == (0,)
        release = threading.Event()
        holder = _hold_lock(tmp_path / "ratelimits.sqlite", release)
        threading.Timer(0.05, release.set).start()
        drawn = store.acquire_all([("person", 10, 60, 1)])
        holder.join()
        assert drawn.granted == [1]
        assert await store.acquire_sliding_window_entry("person", 10, 60)
    finally:
        await store.aclose()
