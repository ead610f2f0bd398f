"""The records' transaction on the loop's connection (``SqliteAuditStore._write_on_loop``):
committed whole, rolled back whole when its statements fail, and handed to the thread when
another connection holds the write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.stores.sqlite_audit import SqliteAuditStore

_ROW = "INSERT INTO audit_chains (chain_id, created_at) VALUES (?, '2026-12-07T06:00:00Z')"


def _insert(chain: str) -> Callable[[sqlite3.Connection], None]:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute(_ROW, (chain,))

    return write


def _chains(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT chain_id FROM audit_chains ORDER BY 1")]


async def test_a_failing_write_is_rolled_back_and_the_next_one_commits(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    try:

        def failing(conn: sqlite3.Connection) -> None:
            conn.execute(_ROW, ("gw-lost",))
            raise KeyError("a bug in the middle of the batch")

        with pytest.raises(KeyError):
            store._write_on_loop(failing)
        assert not store._loop_conn().in_transaction
        assert _chains(path) == []

        def duplicate(conn: sqlite3.Connection) -> None:
            conn.execute(_ROW, ("gw-twice",))
            conn.execute(_ROW, ("gw-twice",))  # the primary key refuses it

        with pytest.raises(sqlite3.IntegrityError):
            store._write_on_loop(duplicate)
        assert not store._loop_conn().in_transaction
        assert _chains(path) == []

        assert store._write_on_loop(_insert("gw-a"))
        assert _chains(path) == ["gw-a"]
    finally:
        await store.aclose()


async def test_a_locked_file_is_left_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert not store._write_on_loop(_insert("gw-b"))
        assert not store._loop_conn().in_transaction
        other.execute("COMMIT")
        assert store._write_on_loop(_insert("gw-b"))
        assert _chains(path) == ["gw-b"]
    finally:
        other.close()
        await store.aclose()
