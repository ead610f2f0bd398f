"""Fixtures for the store suites: every test runs on SQLite and on PostgreSQL (marker postgres).

PostgreSQL tests get a fresh random schema, dropped afterwards. If the server cannot be reached
they fail when the CI variable is set and are skipped otherwise, with the reason shown by -ra.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.store import AuditStore
from tests.stores.backends import PG_DSN, Backend, PostgresBackend, SqliteBackend, run_private


async def _pg_probe() -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=3)
    await conn.close()


def _postgres_or_skip() -> None:
    try:
        run_private(_pg_probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL at {PG_DSN} unreachable: {type(exc).__name__}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "audit.db")
        return
    _postgres_or_skip()
    schema = f"t_audit_{secrets.token_hex(6)}"
    try:
        yield PostgresBackend(PG_DSN, schema)
    finally:
        run_private(_drop_schema(schema))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AuditStore]:
    opened = backend.new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
