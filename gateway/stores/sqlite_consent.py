"""ConsentStore on SQLite: ``consent.db`` in the data directory, the default for one instance.

Writes run on one connection on a thread of its own (``TransactionThread``), one hand-over per
transaction; reads (a grant check is one primary-key read) run on the event loop on a second,
read-only connection: in WAL mode a reader never waits for the writer, and the read takes a few
microseconds, less than a hand-over to a thread costs. A counted use is one conditional UPDATE;
SQLite's single writer makes the UPDATE's ``uses < max_uses`` test and increment one step (two
processes on one file included). Counted uses waiting at the same time are committed together
(group commit): one transaction, one fsync, each UPDATE still deciding for itself, so a burst
of uses costs one disk flush instead of one each. A use given back (its request was not sent)
is the mirror UPDATE (``uses > 0``) in a transaction of its own. The file is created 0600: it
names who lets whom see what.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Final, TypeVar

from gateway.consent.contract import ConsentStoreUnavailable, DataSubject
from gateway.consent.model import Grant
from gateway.stores.consent_sql import (
    FIND,
    GET,
    GIVE_BACK,
    INSERT,
    OF_AGENT,
    OF_SUBJECT,
    REVOKE,
    SPEND,
    consent_migrations,
    grant_from_row,
    grant_row,
    pair_from_row,
)
from gateway.stores.migrations import migrate_sqlite_blocking
from gateway.stores.sqlite import Synchronous, TransactionThread, create_private

CONSENT_MIGRATIONS: Final = consent_migrations("REAL")
READ_BUSY_TIMEOUT_MS: Final = 200
"""A WAL reader waits only while the file is being recovered; the loop never waits longer."""
T = TypeVar("T")


def _unavailable(exc: BaseException) -> ConsentStoreUnavailable:
    # The class name only: a driver message may name the file.
    return ConsentStoreUnavailable(f"The consent store (sqlite) failed: {type(exc).__name__}.")


class SqliteConsentStore:
    name = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: Synchronous = "FULL") -> None:
        self.path = Path(path)
        self._synchronous: Synchronous = synchronous
        self._thread: TransactionThread | None = None
        self._reader: sqlite3.Connection | None = None
        self._spends: list[tuple[str, float, asyncio.Future[int | None]]] = []
        self._spending: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            create_private(self.path)
            self._thread = await TransactionThread.open(
                self.path, synchronous=self._synchronous, name="consent"
            )
            await self._thread.call(
                lambda conn: migrate_sqlite_blocking(conn, "consent", CONSENT_MIGRATIONS)
            )
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            reader.execute(f"PRAGMA busy_timeout = {READ_BUSY_TIMEOUT_MS}")
            reader.execute("PRAGMA query_only = ON")
            self._reader = reader
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise _unavailable(exc) from exc

    async def aclose(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await thread.close()

    def _t(self) -> TransactionThread:
        if self._thread is None:
            raise ConsentStoreUnavailable("The consent store (sqlite) is not open.")
        return self._thread

    async def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        reader = self._reader
        if reader is None:
            raise ConsentStoreUnavailable("The consent store (sqlite) is not open.")
        try:
            rows: list[tuple[object, ...]] = reader.execute(sql, params).fetchall()
        except (sqlite3.Error, ValueError) as exc:
            raise _unavailable(exc) from exc
        return rows

    async def _write(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return await self._t().run(lambda conn: conn.execute(sql, params).fetchall())
        except (sqlite3.Error, ValueError) as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        await self._read("SELECT 1", ())

    async def insert(self, grant: Grant) -> None:
        await self._write(INSERT, grant_row(grant))

    async def find(self, grant_id: str) -> tuple[Grant | None, Grant | None]:
        rows = await self._read(FIND, (grant_id,))
        return pair_from_row(rows[0] if rows else None)

    async def spend(self, grant_id: str, now: float) -> int | None:
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._spends.append((grant_id, now, future))
        if self._spending is None:
            self._spending = asyncio.create_task(self._commit_spends())
        return await future

    async def _commit_spends(self) -> None:
        """Commit the waiting uses in one transaction per round until none wait."""
        try:
            while self._spends:
                batch, self._spends = self._spends, []

                def work(
                    conn: sqlite3.Connection,
                    batch: list[tuple[str, float, asyncio.Future[int | None]]] = batch,
                ) -> list[int | None]:
                    answers: list[int | None] = []
                    for grant_id, now, _ in batch:
                        row = conn.execute(SPEND, (grant_id, now)).fetchone()
                        answers.append(int(row[0]) if row is not None else None)
                    return answers

                try:
                    answers = await self._t().run(work)
                except (sqlite3.Error, ValueError, ConsentStoreUnavailable) as exc:
                    failed = exc if isinstance(exc, ConsentStoreUnavailable) else _unavailable(exc)
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(failed)
                    continue
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._spending = None

    async def give_back(self, grant_id: str) -> int | None:
        """Rare (a call that failed before it was sent): a transaction of its own."""
        rows = await self._write(GIVE_BACK, (grant_id,))
        left = rows[0][0] if rows else None
        return left if isinstance(left, int) else None

    async def revoke(self, grant_id: str, now: float) -> Grant | None:
        def work(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
            conn.execute(REVOKE, (now, grant_id, grant_id))
            return conn.execute(GET, (grant_id,)).fetchall()

        try:
            rows = await self._t().run(work)
        except (sqlite3.Error, ValueError) as exc:
            raise _unavailable(exc) from exc
        return grant_from_row(rows[0]) if rows else None

    async def of_subject(self, subject: DataSubject, *, limit: int = 200) -> list[Grant]:
        rows = await self._read(OF_SUBJECT, (subject.kind, subject.key, limit))
        return [g for g in map(grant_from_row, rows) if g is not None]

    async def of_agent(self, agent: DataSubject, *, limit: int = 200) -> list[Grant]:
        rows = await self._read(OF_AGENT, (agent.key, limit))
        return [g for g in map(grant_from_row, rows) if g is not None]
