"""Opening SQLite for the embedded stores: WAL, full fsync on commit, a busy timeout.

Files are private: the data directory is made 0700 and every database file 0600 before SQLite
opens it (SQLite gives the -wal and -shm files the database file's mode), whatever the umask.

synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut may lose the last
commits although the caller was told they were durable. With group commit one fsync covers a
whole batch, so FULL costs little throughput and keeps "acknowledged" meaning "on disk".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import aiosqlite

from gateway.stores.migrations import Migration, migrate_sqlite, migrate_sqlite_blocking

Synchronous = Literal["FULL", "NORMAL"]
T = TypeVar("T")
BUSY_TIMEOUT_MS: Final = 2000
"""How long a blocking store waits for another process's write lock (on the loop: keep short)."""
WAL_SWITCH_TIMEOUT: Final = 10.0
"""Seconds a connection keeps asking for WAL while another process switches the same file."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def use_wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (a lasting property of the file).

    The workers of one instance start together on one data directory. Two connections that
    switch a new file at the same moment both hold a shared lock and want the exclusive one, and
    SQLite answers one of them "database is locked" at once, without waiting its busy timeout
    (waiting could only deadlock). So the switch is asked again, for up to
    ``WAL_SWITCH_TIMEOUT`` seconds: once one of them has switched the file, the others find it
    in WAL and need no lock for it."""
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        # Blocking, but only while another process switches this file, at start-up (a store
        # opened on the loop does so before it serves anything), for milliseconds.
        time.sleep(delay)  # noqa: TID251
        delay = min(delay * 2, 0.1)


async def use_wal_async(conn: aiosqlite.Connection) -> None:
    """``use_wal`` for an aiosqlite connection."""
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    delay = 0.002
    while True:
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def connect_sqlite(
    path: str | Path, *, synchronous: Synchronous = "FULL", read_only: bool = False
) -> aiosqlite.Connection:
    """A connection in autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)."""
    if not read_only:
        create_private(Path(path))
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if not read_only:
            await use_wal_async(conn)
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
    writer = await connect_sqlite(path, synchronous=synchronous)
    try:
        await migrate_sqlite(writer, component, migrations)
        reader = await connect_sqlite(path, synchronous=synchronous)
    except BaseException:
        await writer.close()
        raise
    return writer, reader


@contextlib.contextmanager
def immediate(
    conn: sqlite3.Connection, *, wait: float | None = None
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on a stdlib connection in autocommit mode; rolled back if the
    body (or the COMMIT) raises. ``wait``: the connection's ``busy_timeout`` is 0 and the write
    lock is waited for by ``begin_yielding`` for up to that many seconds."""
    if wait is None:
        conn.execute("BEGIN IMMEDIATE")
    else:
        begin_yielding(conn, wait)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, after an error: a failure of the ROLLBACK
    itself is dropped, since the original error says more (SQLite rolls back on close
    anyway)."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


YIELDING_SPIN: Final = 0.002
"""Seconds ``begin_yielding`` retries with only a yield of the CPU between tries."""


def begin_yielding(conn: sqlite3.Connection, wait: float) -> None:
    """BEGIN IMMEDIATE on a connection whose ``busy_timeout`` is 0, waiting up to ``wait``
    seconds while another process holds the file's write lock; raises sqlite3.OperationalError
    ("database is locked") after that.

    For a store called synchronously on the event loop, whose transactions (a rate-limit draw)
    hold the lock for tens of microseconds. SQLite's own busy handler sleeps 1 ms, then 2, 5,
    10 ms and more between tries: with two workers drawing on one file, one draw in 20 to 100
    or so found the lock taken and stopped the worker's loop for one to three milliseconds,
    though the lock was free again within microseconds. Here the first ``YIELDING_SPIN``
    seconds of tries only yield the CPU (``sched_yield``) between them; after that the pauses
    grow from 0.5 ms, as SQLite's do, up to ``wait`` in all."""
    start: float | None = None
    pause = 0.0005
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        now = time.monotonic()
        start = now if start is None else start
        waited = now - start
        if waited >= wait:
            raise sqlite3.OperationalError("database is locked")
        if waited < YIELDING_SPIN:
            os.sched_yield()
        else:
            time.sleep(min(pause, wait - waited))  # noqa: TID251 - a synchronous store call
            pause = min(pause * 2, 0.025)


def lowest_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19; Linux sets it per thread).

    A worker pinned to one core, or sharing it, runs the event loop and its store threads on
    that core. At the same priority the scheduler shares the core between them in slices of a
    few milliseconds, so a thread writing a thousand lookup rows stalls every request on the
    loop for as long; at nice 19 the loop takes the core back as soon as it has work. Lowering
    a priority needs no privilege; where the call is refused the thread keeps its priority.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


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
        cls,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        name: str = "sqlite",
        background: bool = False,
    ) -> TransactionThread:
        """``background``: the thread runs at the lowest CPU priority (nice 19), for work no
        caller waits for; see ``lowest_priority``."""
        executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"{name}-writer",
            initializer=lowest_priority if background else None,
        )

        def connect() -> sqlite3.Connection:
            create_private(Path(path))
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                use_wal(conn)
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
            with immediate(self._conn) as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)

    async def call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(conn)`` on the thread outside any transaction (a WAL checkpoint, an fsync)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, self._conn)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600


def private_dir(path: Path) -> Path:
    """Make the data directory (and missing parents) with mode 0700 when it does not exist yet:
    the stores in it hold personal data and keys. An existing directory keeps its mode (an
    operator's choice, `docs/operations.md`)."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        with contextlib.suppress(OSError):
            os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    return path


def create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would follow the umask); SQLite gives
    its -wal and -shm files the mode of the database file.

    A file that exists is not opened at all: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included. A connection already open on the file
    would then hold no lock the kernel knows of, and another process closing its connection
    would take itself for the last one and delete the WAL (and the -shm) under it: later commits
    would go to a deleted file."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def open_private_append(path: Path) -> Any:
    """``path`` opened for appending bytes, created 0600 (in a 0700 directory) if missing."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, PRIVATE_FILE_MODE)
    return os.fdopen(fd, "ab")


class LockedConnection:
    """A stdlib ``sqlite3`` connection for the stores called synchronously on the loop (the
    identity and SSO session stores): each call is microseconds, less than a thread hop.

    The file is created 0600, in WAL with ``synchronous=NORMAL`` (a commit survives a process
    crash; the last ones may not survive a power cut) and ``component``'s migrations applied.
    ``check_same_thread=False``: it may be opened in a start-up thread and used on the loop;
    the lock keeps every call, and its transaction, to one thread at a time.

    Another process's write lock is waited for by SQLite's busy handler (``BUSY_TIMEOUT_MS``),
    which sleeps the loop, not by ``begin_yielding`` as the rate-limit file's draws are: the
    handler also serves the stores' one-statement writes (``change``, and the session store's
    through ``locked``), which no ``BEGIN`` precedes, and a stdlib connection switches it only by
    a PRAGMA statement. Switched off around each ``BEGIN IMMEDIATE`` and on again it cost some
    30k instructions a transaction (55k → 86k for a one-row write); off for good, those
    one-statement writes would fail at once on a lock instead of waiting. These stores write at
    a login or a token's issue, not at every routed call. ``transaction(wait=...)`` waits with
    ``begin_yielding`` on a connection whose busy timeout was set to 0 (the rate-limit file).
    """

    def __init__(self, path: Path, *, component: str, migrations: Sequence[Migration]) -> None:
        create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate_sqlite_blocking(conn, component, migrations)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection for statements that commit on their own (autocommit)."""
        with self._lock:
            yield self._conn

    @contextlib.contextmanager
    def transaction(self, *, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back if the body raises; ``wait`` as ``immediate``'s
        (for a connection whose ``busy_timeout`` was set to 0)."""
        with self._lock, immediate(self._conn, wait=wait) as conn:
            yield conn

    def one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._conn.execute(sql, params).fetchone()
        return row

    def change(self, sql: str, params: tuple[object, ...]) -> int:
        """One statement, committed on its own; how many rows it changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        """Close once; later calls do nothing."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
