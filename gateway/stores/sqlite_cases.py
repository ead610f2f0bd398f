"""CaseStore on SQLite (aiosqlite): the embedded default for `tongban demo` and one instance.

One writer connection behind a lock, one reader (WAL lets it read while the writer writes).
``BEGIN IMMEDIATE`` makes every write transaction, claims included, the only writer of the file,
so even two processes on one file never claim the same entry; still, run one dispatcher.
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

from gateway.cases.store import CaseStoreUnavailable, OutboxEntry
from gateway.stores.cases_sql import (
    OUTBOX_COLUMNS,
    SqlCaseStore,
    Tx,
    case_migrations,
    entry_from_row,
)
from gateway.stores.sqlite import Synchronous, open_migrated_pair

CASE_MIGRATIONS: Final = case_migrations("INTEGER PRIMARY KEY AUTOINCREMENT", "REAL")


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
    def __init__(self, path: str | Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            self._writer, self._reader = await open_migrated_pair(
                self.path,
                component="cases",
                migrations=CASE_MIGRATIONS,
                synchronous=self._synchronous,
            )
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise CaseStoreUnavailable(f"cannot open the case database: {exc}") from exc

    async def aclose(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

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
