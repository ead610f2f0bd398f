"""A SQLite case transaction whose COMMIT fails says its outcome is unknown (CommitUnknown), while
a failure before the commit is plain CaseStoreUnavailable: a counted grant use spent for an
application is given back only in the second case (gateway/cases/service.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.cases.store import CaseStoreUnavailable, CommitUnknown
from gateway.stores.sqlite_cases import SqliteCaseStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteCaseStore]:
    opened = SqliteCaseStore(tmp_path / "cases.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_a_failing_commit_is_of_unknown_outcome(store: SqliteCaseStore) -> None:
    async def orphan() -> None:
        async with store._tx() as tx:
            # A deferred foreign key is checked at COMMIT, which then fails.
            await tx.execute("CREATE TEMP TABLE p (id INTEGER PRIMARY KEY)")
            await tx.execute(
                "CREATE TEMP TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)"
            )
            await tx.execute("INSERT INTO c VALUES (1)")

    with pytest.raises(CommitUnknown):
        await store._hop("write", orphan)


async def test_a_store_not_open_is_certainly_not_written(tmp_path: Path) -> None:
    store = SqliteCaseStore(tmp_path / "cases.db")
    with pytest.raises(CaseStoreUnavailable) as raised:
        await store.find("owner", "key-00000001")
    assert not isinstance(raised.value, CommitUnknown)
