"""A draw reads both windows of a budget in one statement (``_WINDOWS``): what it reads is what
the two point lookups it replaced read (``_COUNT``, once per window), for every mix of live,
expired, missing and zero counters, and at a row's expiry to the very second."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from gateway.ratelimit import sqlite_storage
from gateway.ratelimit.sqlite_storage import _COUNT, SqliteStorage, _window


def _two_lookups(
    conn: sqlite3.Connection, previous_key: str, current_key: str, expiry: int, now: float
) -> tuple[int, float, int, float]:
    """The read as it was: one ``_COUNT`` per window (the tree before this change)."""
    row = conn.execute(_COUNT, (previous_key, now)).fetchone()
    previous = int(row[0]) if row else 0
    row = conn.execute(_COUNT, (current_key, now)).fetchone()
    current = int(row[0]) if row else 0
    previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
    current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
    return previous, previous_ttl, current, current_ttl


def test_one_statement_reads_what_two_lookups_read(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / sqlite_storage.FILE_NAME)
    draw = random.Random(7)
    now = time.time()
    keys = [f"LIMITER/person/p{n}/300/1/minute" for n in range(40)]
    compared = 0
    with store._db.transaction() as conn:
        for key in keys:
            for expiry in (1, 60):
                previous_key, current_key = store.sliding_window_keys(key, expiry, now)
                for window_key in (previous_key, current_key):
                    kind = draw.choice(("live", "expired", "missing", "zero", "at now"))
                    if kind == "missing":
                        continue
                    expires_at = {
                        "live": now + draw.uniform(0.001, 120),
                        "expired": now - draw.uniform(0.001, 120),
                        "zero": now + 30,
                        "at now": now,  # not live: expires_at > now is the test
                    }[kind]
                    count = 0 if kind == "zero" else draw.randint(1, 500)
                    conn.execute(
                        "INSERT OR REPLACE INTO rl_counters (key, count, expires_at) "
                        "VALUES (?, ?, ?)",
                        (window_key, count, expires_at),
                    )
        for key in keys:
            for expiry in (1, 60):
                for moment in (now, now + 0.5, now + 61):
                    previous_key, current_key = store.sliding_window_keys(key, expiry, now)
                    got = _window(conn, previous_key, current_key, expiry, moment)
                    assert got == _two_lookups(conn, previous_key, current_key, expiry, moment)
                    assert all(type(v) is int for v in (got[0], got[2]))
                    compared += 1
        # A key with no row at all, and the same key as both windows.
        assert _window(conn, "nobody/a", "nobody/b", 60, now) == _two_lookups(
            conn, "nobody/a", "nobody/b", 60, now
        )
        same = keys[0] + "/60"
        assert _window(conn, same, same, 60, now) == _two_lookups(conn, same, same, 60, now)
    assert compared == 240
    store._db.close()


def test_a_draw_runs_one_statement_per_budget_and_reads_only_a_refusal(tmp_path: Path) -> None:
    """The structural count: a lone call drawing two budgets with room runs one statement per
    budget (``_DRAW``: the windows read and the count added in one) between the transaction's
    BEGIN and COMMIT; a budget that refuses is read once more (``_WINDOWS``), for the
    refusal's windows."""
    store = SqliteStorage(tmp_path / sqlite_storage.FILE_NAME)
    store._next_purge = float("inf")  # no purge in the count
    statements: list[str] = []
    store._db._conn.set_trace_callback(statements.append)
    drawn = store.acquire_all([("a/person", 1, 60, 1), ("a/client", 100, 60, 1)])
    assert drawn.granted == [1, 1]
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[-1] == "COMMIT"
    assert [s.split(" ")[0] for s in statements[1:-1]] == ["INSERT", "INSERT"], statements
    statements.clear()
    drawn = store.acquire_all([("a/person", 1, 60, 1), ("a/client", 100, 60, 1)])
    assert drawn.granted == [0]
    assert drawn.window is not None
    assert [s.split(" ")[0] for s in statements] == [
        "BEGIN",
        "INSERT",  # drew nothing: no room
        "SELECT",  # the refusal's windows
        "COMMIT",
    ], statements
    store._db._conn.set_trace_callback(None)
    store._db.close()
