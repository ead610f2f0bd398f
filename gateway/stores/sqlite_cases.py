"""CaseStore on SQLite (aiosqlite): the embedded default for `tongban demo` and one instance.

One writer connection behind a lock, one reader (WAL lets it read while the writer writes).
``BEGIN IMMEDIATE`` makes every write transaction, claims included, the only writer of the file,
so even two processes on one file never claim the same entry; still, run one dispatcher.

A closed case's payload (用而不存) leaves the disk, not only the table: the writer runs with
``secure_delete`` (SQLite zeroes the freed space of a page, so the erased value is not left in
the database file), and after an erasure a ``wal_checkpoint(TRUNCATE)`` copies the pages into
the database file and empties the WAL, whose older frames still held the payload. The checkpoint
runs at most every ``ERASE_CHECKPOINT_INTERVAL`` seconds, on the writer connection, between
transactions (docs/operations.md, "Personal data at rest").
"""

# ruff: noqa: S608 - SQL is built only from this package's constants and runs of '?' marks;
# every value is a bound parameter.

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import structlog

from gateway.cases.store import CaseStoreUnavailable, OutboxEntry, Step
from gateway.stores.cases_sql import (
    OUTBOX_COLUMNS,
    SqlCaseStore,
    Tx,
    case_migrations,
    entry_from_row,
)
from gateway.stores.sqlite import Synchronous, open_migrated_pair

log = structlog.get_logger("tongban.cases")
CASE_MIGRATIONS: Final = case_migrations("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")
ERASE_CHECKPOINT_INTERVAL: Final = 5.0
"""Seconds between an erasure and the checkpoint that takes it out of the WAL (at most)."""


class _SqliteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._conn.execute(sql, args)
        count = cursor.rowcount
        await cursor.close()
        return int(count)

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return list(await self._conn.execute_fetchall(sql, args))


class SqliteCaseStore(SqlCaseStore):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        erase_checkpoint_interval: float = ERASE_CHECKPOINT_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._erase_interval = erase_checkpoint_interval
        self._erased = asyncio.Event()
        self._scrubber: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            self._writer, self._reader = await open_migrated_pair(
                self.path,
                component="cases",
                migrations=CASE_MIGRATIONS,
                synchronous=self._synchronous,
            )
            await self._writer.execute("PRAGMA secure_delete = ON")
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise CaseStoreUnavailable(f"cannot open the case database: {exc}") from exc
        self._scrubber = asyncio.create_task(self._scrub_forever(), name="case-erasure-checkpoint")

    async def aclose(self) -> None:
        if self._scrubber is not None:
            self._scrubber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrubber
            self._scrubber = None
        if self._erased.is_set():
            with contextlib.suppress(CaseStoreUnavailable):
                await self.scrub_erased()
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _write_step(self, tx: Tx, step: Step, *, check_version: bool) -> None:
        await super()._write_step(tx, step, check_version=check_version)
        if step.erase_data:
            self._erased.set()

    async def scrub_erased(self) -> bool:
        """Checkpoint the WAL into the database file and truncate it, so payloads erased since
        the last call are gone from both files. False when a reader still held old pages (the
        next erasure or call tries again)."""
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise CaseStoreUnavailable("the case store is not open")
            self._erased.clear()
            try:
                rows = await conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._erased.set()
                raise CaseStoreUnavailable(type(exc).__name__) from exc
            busy = bool(rows and next(iter(rows))[0])
            if busy:
                self._erased.set()
            return not busy

    async def _scrub_forever(self) -> None:
        while True:
            await self._erased.wait()
            await asyncio.sleep(self._erase_interval)
            try:
                if not await self.scrub_erased():
                    log.info("case_erasure_checkpoint_busy")
            except CaseStoreUnavailable as exc:
                log.warning("case_erasure_checkpoint_failed", error=str(exc))

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Tx]:
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise CaseStoreUnavailable("the case store is not open")
            try:
                if conn.in_transaction:  # left open by a cancelled call
                    await conn.execute("ROLLBACK")
                await conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, ValueError) as exc:
                raise CaseStoreUnavailable(type(exc).__name__) from exc
            try:
                yield _SqliteTx(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                raise
            try:
                await conn.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                raise CaseStoreUnavailable(type(exc).__name__) from exc

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        conn = self._reader
        if conn is None:
            raise CaseStoreUnavailable("the case store is not open")
        # One read transaction at a time, so a multi-query read sees one snapshot.
        async with self._read_lock:
            try:
                await conn.execute("BEGIN")
            except (sqlite3.Error, ValueError) as exc:
                raise CaseStoreUnavailable(type(exc).__name__) from exc
            try:
                yield _SqliteTx(conn)
            except sqlite3.Error as exc:
                raise CaseStoreUnavailable(type(exc).__name__) from exc
            finally:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.execute("COMMIT")

    async def claim(self, owner: str, *, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        async with self._tx() as tx:
            rows = await tx.fetch(
                "SELECT entry_id FROM case_outbox WHERE state = 'pending' AND due <= ?"
                " AND (lease_until IS NULL OR lease_until < ?) ORDER BY due LIMIT ?",
                now,
                now,
                limit,
            )
            if not rows:
                return []
            ids = [int(r[0]) for r in rows]
            marks = ", ".join("?" for _ in ids)
            claimed = await tx.fetch(
                "UPDATE case_outbox SET lease_owner = ?, lease_until = ?, claims = claims + 1"
                f" WHERE entry_id IN ({marks}) RETURNING {OUTBOX_COLUMNS}",
                owner,
                now + lease,
                *ids,
            )
        return sorted((entry_from_row(r) for r in claimed), key=lambda e: (e.due, e.entry_id))
