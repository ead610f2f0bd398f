"""Fixtures for the store suites: every test runs on SQLite and on PostgreSQL (marker postgres).

PostgreSQL tests get a fresh random schema, dropped afterwards. If the server cannot be reached
they fail when the CI variable is set and are skipped otherwise, with the reason shown by -ra.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.audit.store import AuditStore
from tests.stores.backends import (
    PG_DSN,
    Backend,
    PostgresBackend,
    SqliteBackend,
    drop_schema,
    postgres_or_skip,
    run_private,
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "audit.db")
        return
    postgres_or_skip()
    schema = f"t_audit_{secrets.token_hex(6)}"
    try:
        yield PostgresBackend(PG_DSN, schema)
    finally:
        run_private(drop_schema(schema))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AuditStore]:
    opened = backend.new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
