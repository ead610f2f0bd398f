"""Database back-ends for the store suites: open a store, and tamper behind its triggers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import pytest

from gateway.audit.store import AuditStore
from gateway.stores.postgres_audit import PostgresAuditStore
from gateway.stores.sqlite_audit import SqliteAuditStore

PG_DSN = os.environ.get("TONGBAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
T = TypeVar("T")


def run_private(coro: Coroutine[Any, Any, T]) -> T:
    """Run set-up or tear-down on a loop of its own, outside the test's loop."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class Backend(Protocol):
    name: str

    def new_store(self) -> AuditStore: ...

    def child_args(self) -> list[str]:
        """How the crash-test child process opens the same database."""

    async def execute(self, sql: str, *params: object) -> None:
        """Run SQL as the gateway would: triggers active."""

    async def tamper(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Run SQL as an intruder with direct database access: triggers bypassed."""


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def new_store(self) -> AuditStore:
        return SqliteAuditStore(self.path)

    def child_args(self) -> list[str]:
        return ["sqlite", str(self.path)]

    def _run(self, statements: Sequence[tuple[str, tuple[object, ...]]], drop: bool) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if drop:  # writing the file directly: the triggers are just more bytes in it
                names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                for (name,) in names.fetchall():
                    conn.execute(f"DROP TRIGGER {name}")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    async def execute(self, sql: str, *params: object) -> None:
        await asyncio.to_thread(self._run, [(sql, params)], False)

    async def tamper(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        await asyncio.to_thread(self._run, statements, True)


def _numbered(sql: str) -> str:
    parts = sql.split("?")
    return "".join(f"{part}${i}" if i < len(parts) else part for i, part in enumerate(parts, 1))


class PostgresBackend:
    name = "postgres"

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def new_store(self) -> AuditStore:
        return PostgresAuditStore(self.dsn, schema=self.schema, max_size=4)

    def child_args(self) -> list[str]:
        return ["postgres", self.dsn, self.schema]

    async def _run(
        self, statements: Sequence[tuple[str, tuple[object, ...]]], bypass: bool
    ) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": self.schema})
        try:
            async with conn.transaction():
                if bypass:  # superuser: replica mode fires no ordinary triggers
                    await conn.execute("SET LOCAL session_replication_role = replica")
                for sql, params in statements:
                    await conn.execute(_numbered(sql), *params)
        finally:
            await conn.close()

    async def execute(self, sql: str, *params: object) -> None:
        await self._run([(sql, params)], False)

    async def tamper(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        await self._run(statements, True)


async def _probe_postgres() -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=3)
    await conn.close()


def postgres_or_skip() -> None:
    """Skip a PostgreSQL test when the server is unreachable, or fail it when CI is set."""
    try:
        run_private(_probe_postgres())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL at {PG_DSN} unreachable: {type(exc).__name__}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()
