"""CaseStore on PostgreSQL (asyncpg): the outbox shared by any number of gateway instances.

Claims use ``FOR UPDATE SKIP LOCKED``: concurrent claimers take disjoint entries without
waiting on each other; a lease (``lease_until``) returns an entry to the pool when the worker
holding it dies. Errors become CaseStoreUnavailable; driver exceptions never escape.
"""

# ruff: noqa: S608 - SQL is built only from this package's constants and runs of '?' marks;
# every value is a bound parameter.

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg

from gateway.cases.store import CaseStoreUnavailable, CommitUnknown, OutboxEntry
from gateway.stores.cases_sql import (
    OUTBOX_COLUMNS,
    SqlCaseStore,
    Tx,
    case_migrations,
    entry_from_row,
)
from gateway.stores.postgres import MigratedPool, check_schema_name

CASE_MIGRATIONS: Final = case_migrations("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION")
_UNAVAILABLE: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_PLACEHOLDER = re.compile(r"\?")
_CACHE: dict[str, str] = {}


def numbered(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, ...`` (the shared SQL never has '?' inside a literal)."""
    found = _CACHE.get(sql)
    if found is None:
        counter = iter(range(1, 10_000))
        found = _CACHE[sql] = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)
    return found


def _count(status: str) -> int:
    # asyncpg answers the command tag: 'UPDATE 3', 'INSERT 0 1'.
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _PgTx:
    def __init__(self, conn: asyncpg.Connection, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def execute(self, sql: str, *args: Any) -> int:
        status = await self._conn.execute(numbered(sql), *args, timeout=self._timeout)
        return _count(str(status))

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows = await self._conn.fetch(numbered(sql), *args, timeout=self._timeout)
        return list(rows)


class PostgresCaseStore(SqlCaseStore):
    _LOCK_ROW = " FOR UPDATE"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 10.0,
    ) -> None:
        self._schema = check_schema_name(schema)
        self._timeout = command_timeout
        self._pool = MigratedPool(
            dsn,
            schema=self._schema,
            component="cases",
            label="case",
            migrations=CASE_MIGRATIONS,
            min_size=min_size,
            max_size=max_size,
            errors=_UNAVAILABLE,
            unavailable=CaseStoreUnavailable,
        )

    async def open(self) -> None:
        await self._pool.open()

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _p(self) -> asyncpg.Pool:
        return self._pool.get()

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Tx]:
        committing = False
        try:
            async with self._p().acquire() as conn, conn.transaction():
                yield _PgTx(conn, self._timeout)
                committing = True
        except _UNAVAILABLE as exc:
            if committing:  # the COMMIT's answer was lost: it may have been committed
                raise CommitUnknown(type(exc).__name__) from exc
            raise CaseStoreUnavailable(type(exc).__name__) from exc

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        try:
            async with self._p().acquire() as conn, conn.transaction(readonly=True):
                yield _PgTx(conn, self._timeout)
        except _UNAVAILABLE as exc:
            raise CaseStoreUnavailable(type(exc).__name__) from exc

    async def claim(self, owner: str, *, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        async with self._tx() as tx:
            rows = await tx.fetch(
                "WITH due AS (SELECT entry_id FROM case_outbox WHERE state = 'pending'"
                " AND due <= ? AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY due LIMIT ? FOR UPDATE SKIP LOCKED)"
                " UPDATE case_outbox o SET lease_owner = ?, lease_until = ?,"
                " claims = o.claims + 1 FROM due WHERE o.entry_id = due.entry_id"
                f" RETURNING {', '.join('o.' + c.strip() for c in OUTBOX_COLUMNS.split(','))}",
                now,
                now,
                limit,
                owner,
                now + lease,
            )
        return sorted((entry_from_row(r) for r in rows), key=lambda e: (e.due, e.entry_id))
