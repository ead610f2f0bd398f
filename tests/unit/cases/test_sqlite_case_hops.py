"""The SQLite case store runs each call as one hand-over to a connection's thread: the whole
transaction there, rolled back as a whole when anything in it fails, whoever stops waiting."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.cases.lifecycle import plan_step
from gateway.cases.model import Case, CaseStatus, PartStatus
from gateway.cases.store import (
    CaseStoreUnavailable,
    CommitUnknown,
    FinishEntry,
    PartChange,
    Step,
)
from gateway.stores.cases_sql import SqlCaseStore
from gateway.stores.sqlite import TransactionThread
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.unit.cases.test_store_contract import AT, INITIAL, new_case


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteCaseStore]:
    opened = SqliteCaseStore(tmp_path / "cases.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads each hand-over ran on, in order."""
    seen: list[str] = []
    call = TransactionThread.call

    async def counted(self: TransactionThread, work: Callable[[Any], Any]) -> Any:
        def noted(conn: Any) -> Any:
            seen.append(threading.current_thread().name)
            return work(conn)

        return await call(self, noted)

    monkeypatch.setattr(TransactionThread, "call", counted)
    return seen


async def test_every_call_is_one_hand_over(store: SqliteCaseStore, hops: list[str]) -> None:
    loop_thread = threading.current_thread().name
    created = await store.create(new_case(parts=2), at=AT, now=1.0, initial=INITIAL, events=())
    case_id = created.case.case_id
    claimed = await store.claim("w1", now=2.0, lease=30.0, limit=10)
    assert len(claimed) == 2
    got = await store.get(case_id)
    assert got is not None
    # A commit reads the case back in the same hand-over.
    committed = await store.commit(
        plan_step(
            got,
            [PartChange(0, PartStatus.DONE, result={"ok": True})],
            at=AT,
            now=3.0,
            finish=FinishEntry(claimed[0].entry_id, "w1", "done"),
        )
    )
    assert committed.part(0).status == PartStatus.DONE
    applied = await store.apply(
        case_id, lambda case: None, otherwise=FinishEntry(claimed[1].entry_id, "w1", "done")
    )
    assert applied is not None
    assert applied.step is None
    assert [e.state for e in await store.entries(case_id) if e.part is not None] == ["done"] * 2
    await store.counts()
    await store.list_cases(subject="citizen-a")
    # create, claim, get, commit, apply, entries, counts, list_cases: one hand-over each.
    assert len(hops) == 8
    assert all(name.startswith("cases-") and name != loop_thread for name in hops)
    assert [n for n, name in enumerate(hops) if name.startswith("cases-writer")] == [0, 1, 3, 4]


async def test_a_failing_plan_rolls_back_the_whole_transaction(store: SqliteCaseStore) -> None:
    created = await store.create(new_case(), at=AT, now=1.0, initial=INITIAL, events=())
    case_id = created.case.case_id
    [entry] = await store.claim("w1", now=2.0, lease=30.0, limit=10)

    def failing(case: Case) -> Step | None:
        raise ValueError("the plan broke")

    with pytest.raises(ValueError, match="the plan broke"):
        await store.apply(case_id, failing, otherwise=FinishEntry(entry.entry_id, "w1", "done"))
    # Nothing of it landed and the writer is free: the same entry can still be finished.
    assert [e.state for e in await store.entries(case_id)] == ["pending"]
    applied = await store.apply(
        case_id, lambda case: None, otherwise=FinishEntry(entry.entry_id, "w1", "done")
    )
    assert applied is not None
    assert [e.state for e in await store.entries(case_id)] == ["done"]


async def test_the_plan_sees_the_callers_log_context(store: SqliteCaseStore) -> None:
    created = await store.create(new_case(), at=AT, now=1.0, initial=INITIAL, events=())
    seen: dict[str, Any] = {}

    def plan(case: Case) -> Step | None:
        seen.update(structlog.contextvars.get_contextvars())
        seen["thread"] = threading.current_thread().name
        return None

    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        await store.apply(created.case.case_id, plan)
    assert seen["request_id"] == "req-1"
    assert seen["thread"].startswith("cases-writer")


async def test_a_caller_that_stops_waiting_leaves_a_whole_transaction(
    store: SqliteCaseStore,
) -> None:
    cases = [new_case(f"key-{n:08d}", parts=3) for n in range(20)]
    tasks = [
        asyncio.ensure_future(store.create(c, at=AT, now=1.0, initial=INITIAL, events=()))
        for c in cases
    ]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Each case is there with all its parts and entries, or not at all.
    for case in cases:
        found = await store.get(case.case_id)
        entries = await store.entries(case.case_id)
        if found is None:
            assert entries == []
        else:
            assert len(found.parts) == 3
            assert len(entries) == 3
            assert found.status == CaseStatus.RECEIVED
    # The store goes on.
    again = await store.create(new_case("key-after"), at=AT, now=1.0, initial=INITIAL, events=())
    assert again.created


def test_every_shared_call_is_given_a_hop() -> None:
    # A shared call not overridden here would open its transaction outside any thread hop.
    shared = {
        name
        for name, value in vars(SqlCaseStore).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    }
    assert shared
    assert {name for name in shared if name not in vars(SqliteCaseStore)} == set()


def _count_elsewhere(path: Path) -> int:
    """The cases another process sees, through a connection it opens and closes."""
    script = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "print(conn.execute('SELECT count(*) FROM cases').fetchone()[0])\n"
        "conn.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _has_wal(path: Path) -> bool:
    return Path(f"{path}-wal").exists()


async def test_commits_stay_visible_after_another_process_closes_its_connection(
    store: SqliteCaseStore,
) -> None:
    # Opening the store must leave SQLite's locks on the file in place: without them another
    # process's closing connection deletes the WAL, and later commits go to a deleted file.
    await store.create(new_case("key-00000001"), at=AT, now=1.0, initial=INITIAL, events=())
    assert _count_elsewhere(store.path) == 1
    assert _has_wal(store.path)
    await store.create(new_case("key-00000002"), at=AT, now=1.0, initial=INITIAL, events=())
    assert _count_elsewhere(store.path) == 2


# --- what a failure says about the commit: a counted grant use spent for an application is
# given back only when the case was certainly not written (gateway/cases/service.py) ---------


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


async def test_a_statement_failing_before_the_commit_is_certainly_not_written(
    store: SqliteCaseStore,
) -> None:
    async def broken() -> None:
        async with store._tx() as tx:
            await tx.execute("INSERT INTO no_such_table VALUES (1)")

    # The statement's own error, rolled back: never taken for a commit of unknown outcome.
    with pytest.raises(sqlite3.OperationalError) as raised:
        await store._hop("write", broken)
    assert not isinstance(raised.value, CommitUnknown)


async def test_a_store_not_open_is_certainly_not_written(tmp_path: Path) -> None:
    store = SqliteCaseStore(tmp_path / "cases.db")
    with pytest.raises(CaseStoreUnavailable) as raised:
        await store.find("owner", "key-00000001")
    assert not isinstance(raised.value, CommitUnknown)
