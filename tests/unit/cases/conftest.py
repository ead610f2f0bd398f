"""Case stores for the contract suite: SQLite always, PostgreSQL in a random schema (marker)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.cases.store import CaseStore
from gateway.stores.postgres_cases import PostgresCaseStore
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.stores.backends import PG_DSN, run_private

StoreFactory = Callable[[], CaseStore]


async def _probe() -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=3)
    await conn.close()


def postgres_or_skip() -> None:
    try:
        run_private(_probe())
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores on one database: two of them behave like two gateway instances."""
    if request.param == "sqlite":
        yield lambda: SqliteCaseStore(tmp_path / "cases.db")
        return
    postgres_or_skip()
    schema = f"t_cases_{secrets.token_hex(6)}"
    try:
        yield lambda: PostgresCaseStore(PG_DSN, schema=schema, max_size=4)
    finally:
        run_private(drop_schema(schema))


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[CaseStore]:
    opened = store_factory()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()
