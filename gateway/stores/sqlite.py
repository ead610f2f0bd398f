"""Opening SQLite for the embedded stores: WAL, full fsync on commit, a busy timeout.

synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut may lose the last
commits although the caller was told they were durable. With group commit one fsync covers a
whole batch, so FULL costs little throughput and keeps "acknowledged" meaning "on disk".
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import aiosqlite

from gateway.stores.migrations import Migration, migrate_sqlite

Synchronous = Literal["FULL", "NORMAL"]
T = TypeVar("T")


async def connect_sqlite(
    path: str | Path, *, synchronous: Synchronous = "FULL", read_only: bool = False
) -> aiosqlite.Connection:
    """A connection in autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)."""
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if not read_only:
            await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_migrated_pair(
    path: Path,
    *,
    component: str,
    migrations: Sequence[Migration],
    synchronous: Synchronous = "FULL",
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """A writer with ``component``'s migrations applied and a reader on the same file.

    Two connections: SQLite has one writer at a time, and reads in WAL mode must not queue behind
    a batch being committed on the writer's thread.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = await connect_sqlite(path, synchronous=synchronous)
    try:
        await migrate_sqlite(writer, component, migrations)
        reader = await connect_sqlite(path, synchronous=synchronous)
    except BaseException:
        await writer.close()
        raise
    return writer, reader


class TransactionThread:
    """A writer connection on a thread of its own that runs a whole transaction per hand-over.

    aiosqlite hands every statement to its thread separately and wakes the event loop after
    each: BEGIN, two inserts and COMMIT were five thread round trips per audit batch, which at
    small batches cost more than the inserts. Here the caller passes one function that does the
    whole transaction on the ``sqlite3`` connection, so a batch is one round trip. Functions run
    one at a time, in submission order. A caller that stops waiting (timeout, cancellation)
    does not stop its function: the transaction still commits or rolls back as a whole.
    """

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor

    @classmethod
    async def open(
        cls, path: str | Path, *, synchronous: Synchronous = "FULL", name: str = "sqlite"
    ) -> TransactionThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-writer")

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(conn)`` inside BEGIN IMMEDIATE ... COMMIT; rolled back if it raises."""

        def transaction() -> T:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # The original error says more; SQLite rolls back on close anyway.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)
