"""Case stores for the contract suite: SQLite always, PostgreSQL in a random schema (marker)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.cases.store import CaseStore
from gateway.stores.postgres_cases import PostgresCaseStore
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

StoreFactory = Callable[[], CaseStore]


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
