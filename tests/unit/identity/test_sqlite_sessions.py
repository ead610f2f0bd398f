"""What only the SQLite session store promises (the contract is in test_session_store_contract.py):
a restart keeps sessions, deadlines and pending logins; several store objects on one file claim
each key once; the file is private; the purge reads only expired rows."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from gateway.identity.sessions import PURGE_INTERVAL, handle_hash
from gateway.identity.sqlite_sessions import FILE_NAME, SqliteSessionStore
from tests.unit.identity.test_session_store_contract import Clock, session


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


async def test_a_restart_keeps_sessions_their_sid_and_pending_logins(
    tmp_path: Path, clock: Clock
) -> None:
    key = handle_hash("kept")
    before = SqliteSessionStore.in_data_dir(tmp_path, clock=clock, grace=600)
    await before.put_session(key, session("sid-r"), 900)
    await before.put_pending("p-r", {"state": "s"}, 300)
    await before.aclose()

    after = SqliteSessionStore.in_data_dir(tmp_path, clock=clock, grace=600)
    try:
        assert await after.get_session(key) == session("sid-r")
        assert await after.key_for_sid("sid-r") == key
        assert await after.take_pending("p-r") == {"state": "s"}
        assert await after.take_pending("p-r") is None
        clock.advance(899)
        assert await after.claim_expired(clock(), 10) == [], "the deadline came along too"
    finally:
        await after.aclose()


async def test_a_session_that_expired_while_the_gateway_was_down_is_claimed_after_the_restart(
    tmp_path: Path, clock: Clock
) -> None:
    key = handle_hash("down")
    before = SqliteSessionStore.in_data_dir(tmp_path, clock=clock, grace=600)
    await before.put_session(key, session("sid-d"), 60)
    await before.aclose()
    clock.advance(120)  # the gateway is down past the deadline, within the grace

    after = SqliteSessionStore.in_data_dir(tmp_path, clock=clock, grace=600)
    try:
        assert await after.get_session(key) is None
        # The sweeper of the restarted gateway still gets it, and can end it (logout).
        assert await after.claim_expired(clock(), 10) == [key]
        assert await after.delete_session(key) == session("sid-d")
        assert await after.claim_expired(clock(), 10) == []
    finally:
        await after.aclose()


def test_two_store_objects_on_one_file_claim_disjoint_keys_from_two_threads(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / FILE_NAME
    stores = [SqliteSessionStore(path, clock=clock) for _ in range(2)]
    keys = {handle_hash(f"t-{i}") for i in range(200)}

    async def fill() -> None:
        for i, key in enumerate(sorted(keys)):
            await stores[0].put_session(key, session(f"sid-t{i}"), 30)

    asyncio.run(fill())
    clock.advance(31)
    won: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def drain(index: int) -> None:
        async def run() -> None:
            start.wait()
            while batch := await stores[index].claim_expired(clock(), 3):
                won[index] += batch

        asyncio.run(run())

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        asyncio.run(store.aclose())
    assert not set(won[0]) & set(won[1]), "no key claimed by both"
    assert sorted(won[0] + won[1]) == sorted(keys), "every expired key once"


async def test_the_file_is_private(tmp_path: Path, clock: Clock) -> None:
    store = SqliteSessionStore.in_data_dir(tmp_path / "data", clock=clock)
    try:
        await store.put_session(handle_hash("private"), session(), 60)
        for name in (FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm"):
            mode = stat.S_IMODE((tmp_path / "data" / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {mode:o}"
    finally:
        await store.aclose()


async def test_the_purge_removes_expired_rows_through_the_expiry_indexes(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / FILE_NAME
    store = SqliteSessionStore(path, clock=clock, grace=60)
    try:
        await store.put_session(handle_hash("old"), session("sid-old"), 10)
        await store.put_pending("p-old", {"a": "1"}, 10)
        clock.advance(10 + 60 + PURGE_INTERVAL)  # past the grace and the purge interval
        await store.put_session(handle_hash("new"), session("sid-new"), 600)  # purges
        for table in ("sso_sessions", "sso_sids", "sso_deadlines"):
            assert _rows(path, table) == 1, table
        assert _rows(path, "sso_pending") == 0
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        for table, column in (
            ("sso_sessions", "kept_until"),
            ("sso_sids", "kept_until"),
            ("sso_pending", "expires_at"),
            ("sso_deadlines", "deadline"),
        ):
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE {column} <= 0"
            ).fetchall()
            assert f"SEARCH {table} USING COVERING INDEX" in plan[0][3], plan


async def test_ping_and_close(tmp_path: Path, clock: Clock) -> None:
    store = SqliteSessionStore.in_data_dir(tmp_path, clock=clock)
    assert await store.ping() is True
    await store.aclose()
    await store.aclose()  # twice is harmless (the app's cleanup may run after a failed start)
    assert await store.ping() is False
