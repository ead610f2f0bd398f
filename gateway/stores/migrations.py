"""A tiny versioned migration runner for SQLite and PostgreSQL, applied at start-up.

Each component (``audit``, ``cases``...) owns an ordered list of migrations; the runner applies
the missing ones, each in its own transaction together with its ``schema_migrations`` row.
Migrations are never edited once released: a change is a new version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiosqlite
import asyncpg


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    """Executed one by one; a SQLite trigger body is one statement."""


_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version)
)"""

_PG_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)"""


def _check_order(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise ValueError("migration versions must be unique, positive and ascending")


async def migrate_sqlite(
    conn: aiosqlite.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """Apply missing migrations; the connection must be in autocommit mode (isolation_level None).

    BEGIN IMMEDIATE takes the write lock first, so two processes starting on one file apply
    each migration once.
    """
    _check_order(migrations)
    await conn.execute(_SQLITE_TABLE)
    applied: list[int] = []
    for migration in migrations:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            rows = await conn.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                (component, migration.version),
            )
            if not list(rows):
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, applied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (component, migration.version, migration.name, datetime.now(UTC).isoformat()),
                )
                applied.append(migration.version)
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
    return applied


def migrate_sqlite_blocking(
    conn: sqlite3.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """``migrate_sqlite`` for a stdlib ``sqlite3`` connection in autocommit mode (the stores that
    are called synchronously, gateway/identity/store_sqlite.py)."""
    _check_order(migrations)
    conn.execute(_SQLITE_TABLE)
    applied: list[int] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
                (component, migration.version),
            ).fetchone()
            if row is None:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, applied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (component, migration.version, migration.name, datetime.now(UTC).isoformat()),
                )
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied


async def migrate_postgres(
    conn: asyncpg.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """Apply missing migrations under a transaction advisory lock: one instance at a time."""
    _check_order(migrations)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tongban.migrations'))")
        await conn.execute(_PG_TABLE)
        done = {
            row["version"]
            for row in await conn.fetch(
                "SELECT version FROM schema_migrations WHERE component = $1", component
            )
        }
        for migration in migrations:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                component,
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied
