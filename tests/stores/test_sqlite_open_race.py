"""Several connections opening one new SQLite file at the same instant (the workers of one
`tongban serve` starting on a new data directory) all open it. Two connections that switch a
new file to WAL at once both hold a shared lock and want the exclusive one; SQLite refuses one
of them at once with "database is locked", without waiting its busy timeout, and that worker
used to fail its start-up (about one start in three for the case store, two workers)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from gateway.stores.sqlite import use_wal, use_wal_async
from gateway.stores.sqlite_cases import SqliteCaseStore

ROUNDS = 200
"""Rounds of two connections at once: without the retry, 5-10 of 200 rounds failed here."""


def at_once(work: Callable[[], None], count: int = 2) -> list[BaseException]:
    """Run ``work`` in ``count`` threads released together; the errors they raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            work()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_connections_switching_a_new_file_to_wal_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        path = tmp_path / f"new-{round_}.sqlite"

        def switch(path: Path = path) -> None:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                use_wal(conn)
            finally:
                conn.close()

        assert at_once(switch) == []
        assert journal_mode(path) == "wal"


def test_aiosqlite_connections_switching_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(ROUNDS // 4):
        path = tmp_path / f"new-{round_}.sqlite"

        async def switch_async(path: Path = path) -> None:
            async with aiosqlite.connect(str(path), isolation_level=None) as conn:
                await conn.execute("PRAGMA busy_timeout = 5000")
                await use_wal_async(conn)

        assert at_once(lambda: asyncio.run(switch_async())) == []
        assert journal_mode(path) == "wal"


def test_case_stores_opened_at_once_on_a_new_file_all_open(tmp_path: Path) -> None:
    """The store the serve start-up failed on: its writer and reader threads, migrations."""
    for round_ in range(ROUNDS // 4):
        path = tmp_path / f"cases-{round_}.sqlite"

        async def open_and_close(path: Path = path) -> None:
            store = SqliteCaseStore(path)
            await store.open()
            await store.aclose()

        assert at_once(lambda: asyncio.run(open_and_close())) == []
