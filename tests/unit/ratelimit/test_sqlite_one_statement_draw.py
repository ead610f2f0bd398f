"""A lone budget's draw on the rate-limit file in one statement (``_DRAW``), outside ``BEGIN``.

A call that draws one budget from the file (a person's unit, her portal's spent from a block)
runs one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... RETURNING`` in SQLite's own
transaction of that statement instead of ``BEGIN IMMEDIATE``, a read, a write and ``COMMIT``.
Held here to the transaction it replaces: the same answers and the same rows, through new, live
and refused windows, window edges and blocks the room cannot fill; one statement and no
transaction left open; another process's lock waited for and, past the wait, a store error
(the call let through unchecked). A new file's pages are 1 KB; an existing file keeps its own.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.principal import Principal
from gateway.ratelimit import sqlite_storage
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.draws import Drawn
from gateway.ratelimit.limiter import ApiRateLimiter
from gateway.ratelimit.sqlite_storage import SqliteStorage
from tests.unit.ratelimit.test_sqlite_counters_table import _rows, _StoreClock


async def test_one_statement_draws_what_the_transaction_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lone calls of one budget, random units (a unit, blocks) on small budgets, the store's
    clock moved across window edges: the one-statement store's answers and rows equal, after
    every call, those of a store that draws every call in the transaction. Both paths of the
    one-statement store are taken: drawn by the statement, and handed to the transaction (a
    refusal, a block larger than the room)."""
    clock = _StoreClock(1_800_000_000.0)
    monkeypatch.setattr(sqlite_storage, "time", clock)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store = SqliteStorage(tmp_path / "a" / sqlite_storage.FILE_NAME)
    reference = SqliteStorage(tmp_path / "b" / sqlite_storage.FILE_NAME)
    in_one = 0
    handed_on = 0
    draw_one = SqliteStorage._draw_one

    def counted(self: SqliteStorage, *args: Any) -> Drawn | None:
        nonlocal in_one, handed_on
        drawn = draw_one(self, *args)
        if self is store:
            in_one += drawn is not None
            handed_on += drawn is None
        return drawn

    monkeypatch.setattr(SqliteStorage, "_draw_one", counted)
    rng = random.Random(11)
    keys = ["LIMITER/person/a", "LIMITER/person/b", "LIMITER/client/portal"]
    try:
        for step in range(600):
            clock.now += rng.choice([0.0, 0.0, 0.05, 0.3, 0.7, 1.0, 1.3, 4.0])
            entry = (rng.choice(keys), rng.choice([3, 5, 8, 50]), rng.choice([1, 2, 60]), 0)
            entry = (*entry[:3], rng.choice([1, 1, 1, 2, 3, 4]))
            answer = store.acquire_calls([[entry]])
            with monkeypatch.context() as patched:
                patched.setattr(sqlite_storage, "_draw", lambda *args: False)
                expected = reference.acquire_calls([[entry]])
            assert answer == expected, step
            assert _rows(store) == _rows(reference), step
    finally:
        await store.aclose()
        await reference.aclose()
    assert in_one > 200
    assert handed_on > 50


def test_a_lone_budget_is_one_statement_and_no_transaction_stays_open(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / sqlite_storage.FILE_NAME)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        for wanted in (1, 3, 1):
            assert store.acquire_all([("LIMITER/person/a", 100, 60, wanted)]).granted == [wanted]
            assert not store._conn.in_transaction
        # The first draw purges expired windows too (at most once a minute), on its own.
        assert statements[1].startswith("DELETE FROM rl_counters WHERE expires_at <=")
        del statements[1]
        assert len(statements) == 3, statements
        assert all(statement.startswith("INSERT OR IGNORE INTO") for statement in statements)
        # Two budgets: the transaction, as before.
        statements.clear()
        drawn = store.acquire_all([("LIMITER/person/a", 100, 60, 1), ("c", 100, 60, 1)])
        assert drawn.granted == [1, 1]
        assert statements[0] == "BEGIN IMMEDIATE"
        assert statements[-1] == "COMMIT"
    finally:
        store._conn.set_trace_callback(None)
        store._db.close()
    assert _count(tmp_path, "LIMITER/person/a") == 1 + 3 + 1 + 1


def _count(data_dir: Path, key: str) -> int:
    conn = sqlite3.connect(data_dir / sqlite_storage.FILE_NAME)
    try:
        row = conn.execute(
            "SELECT sum(count) FROM rl_counters WHERE key LIKE ? || '/%'", (key,)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def test_an_expired_row_of_the_current_window_is_started_again(tmp_path: Path) -> None:
    """A current window's row found expired (a clock set back far could leave one): the
    statement leaves it, the transaction starts it again from the units drawn, as the upsert
    always did."""
    store = SqliteStorage(tmp_path / sqlite_storage.FILE_NAME)
    now = time.time()
    _, current_key = SqliteStorage.sliding_window_keys("k", 60, now)
    try:
        with store._db.locked() as conn:
            conn.execute(
                "INSERT INTO rl_counters (key, count, expires_at) VALUES (?, 9, ?)",
                (current_key, now - 1),
            )
        assert store.acquire_all([("k", 10, 60, 2)]).granted == [2]
        count, expires_at = store._db.one(
            "SELECT count, expires_at FROM rl_counters WHERE key = ?", (current_key,)
        ) or (0, 0.0)
        assert count == 2
        assert expires_at > now + 60
    finally:
        store._db.close()


async def test_a_lone_check_waits_for_another_process_lock_then_fails_open(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past the store timeout: the lone check's statement
    is refused at once, the transaction's wait runs out, the call goes through unchecked and
    nothing is drawn; once the lock is free the next check is drawn again."""
    settings = RateLimitSettings.model_validate(
        {
            "store": "sqlite",
            "store_timeout": 0.05,
            "retry_interval": 5,
            "client": "10/hour",
            "person": "2/hour",
        }
    )
    paused = _StoreClock(100.0)  # the breaker's clock
    limiter = ApiRateLimiter.from_settings(settings, data_dir=tmp_path, clock=paused.time)
    other = sqlite3.connect(tmp_path / sqlite_storage.FILE_NAME, isolation_level=None)
    citizen = Principal(subject="sub-p", level="L2", client_id="portal-a", person="p")
    try:
        other.execute("BEGIN IMMEDIATE")
        verdict = await limiter.check(citizen)
        assert verdict.allowed
        assert not verdict.checked
        other.execute("COMMIT")
        assert other.execute("SELECT count(*) FROM rl_counters").fetchone() == (0,)
        paused.now += 5  # the store is asked again
        verdict = await limiter.check(citizen)
        assert verdict.checked
        assert verdict.allowed
        assert other.execute("SELECT sum(count) FROM rl_counters").fetchone() == (2,)
    finally:
        other.close()
        await limiter.aclose()


def test_a_new_file_has_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    new = tmp_path / "new" / sqlite_storage.FILE_NAME
    new.parent.mkdir()
    SqliteStorage(new)._db.close()
    old = tmp_path / "old" / sqlite_storage.FILE_NAME
    old.parent.mkdir()
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE other (a)")
    conn.close()
    store = SqliteStorage(old)
    assert store.acquire_all([("k", 10, 60, 1)]).granted == [1]
    store._db.close()
    sizes = []
    for path in (new, old):
        conn = sqlite3.connect(path)
        sizes.append(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.close()
    assert sizes == [sqlite_storage.PAGE_SIZE, 4096]
    assert sqlite_storage.PAGE_SIZE == 1024
    assert oct(new.stat().st_mode & 0o777) == "0o600"
