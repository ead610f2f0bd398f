"""Rate-limit counters in a SQLite file: one budget for every process on one host.

``rate_limits.store: sqlite`` keeps the sliding-window counters in ``ratelimits.sqlite`` in the
data directory, so the workers of one instance (``serve --workers N``, where a 'memory' store is
moved here) draw on one budget instead of N. Instances on several hosts use Redis.

The windows are ``limits``' own sliding-window counter (the same keys, the same weighting of
the previous window, ``limits.storage.base.SlidingWindowCounterSupport``): a draw is one
``BEGIN IMMEDIATE`` transaction that reads both windows' counters and, if the weighted count
leaves room, adds to the current one, so two processes never both take the last call of a
budget. Like the identity stores it is the stdlib ``sqlite3`` called on the event loop (each
draw is a few tens of microseconds on a local file, less than a hop to a thread and back);
unlike them nothing here needs to survive a crash, so ``synchronous = OFF``: the counters are
a protection, not a record. Expired windows are deleted at most once a minute, on a draw.
A draw that finds another worker's draw holding the file's write lock waits for it with yields
of the CPU, not with SQLite's busy handler, which sleeps the whole worker for a millisecond or
more each time (``gateway.stores.sqlite.begin_yielding``); the store's timeout still bounds it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

from limits.aio.storage import SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

from gateway.ratelimit.draws import Drawn, Window
from gateway.stores.migrations import Migration
from gateway.stores.sqlite import LockedConnection

FILE_NAME = "ratelimits.sqlite"
PURGE_INTERVAL = 60.0

MIGRATIONS = (
    Migration(
        1,
        "sliding-window rate-limit counters",
        (
            """CREATE TABLE rl_counters (
                key TEXT PRIMARY KEY,
                count INTEGER NOT NULL,
                expires_at REAL NOT NULL
            )""",
            "CREATE INDEX rl_counters_expiry ON rl_counters (expires_at)",
        ),
    ),
)


_ADD = (
    "INSERT INTO rl_counters (key, count, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET count = CASE WHEN expires_at > ? "
    "THEN count + excluded.count ELSE excluded.count END, "
    "expires_at = CASE WHEN expires_at > ? THEN expires_at ELSE excluded.expires_at END"
)
"""Add to a window's counter; an expired row starts again from the amount."""


class SqliteStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """``limits`` async storage on one SQLite file; sliding-window counter strategy only."""

    STORAGE_SCHEME: list[str] | None = ["tongban+sqlite"]  # noqa: RUF012 - as limits declares it

    def __init__(self, path: Path, *, busy_timeout: float = 0.25) -> None:
        super().__init__(None, wrap_exceptions=True)
        self._db = LockedConnection(path, component="ratelimits", migrations=MIGRATIONS)
        with self._db.locked() as conn:
            conn.execute("PRAGMA synchronous = OFF")
            # Another worker's draw holds the write lock for microseconds: waited for by
            # begin_yielding, not by SQLite's busy handler, which sleeps a millisecond or more.
            conn.execute("PRAGMA busy_timeout = 0")
        self._wait = busy_timeout
        self._next_purge = 0.0

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, busy_timeout: float = 0.25) -> SqliteStorage:
        return cls(data_dir / FILE_NAME, busy_timeout=busy_timeout)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    # --- the sliding-window counter -------------------------------------------------------

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self._db.transaction(wait=self._wait) as conn:
            previous, previous_ttl, current, _ = _window(
                conn, previous_key, current_key, expiry, now
            )
            if math.floor(previous * previous_ttl / expiry + current) + amount > limit:
                return False
            conn.execute(_ADD, (current_key, amount, now + 2 * expiry, now, now))
            if now >= self._next_purge:
                conn.execute("DELETE FROM rl_counters WHERE expires_at <= ?", (now,))
                self._next_purge = now + PURGE_INTERVAL
        return True

    def acquire_all(self, entries: list[tuple[str, int, int, int]]) -> Drawn:
        """Draw from each ``(key, limit, expiry, wanted)`` in order, in one transaction: the
        units granted to each budget drawn (``min(wanted, room)``), ending at the first without
        room with a 0 (the draws before it stay counted), and that one's windows as
        ``get_sliding_window`` reads them. Asking for one unit, it is the library's draw; more
        is a block for a local lease (leases.py).

        The limiter's path: one transaction per call for all its budgets instead of one per
        budget through ``limits``' strategy (same keys and windows, so both read each other).
        Synchronous: a few tens of microseconds on the loop. Raises sqlite3.Error."""
        now = time.time()
        granted: list[int] = []
        refused: Window | None = None
        with self._db.transaction(wait=self._wait) as conn:
            for key, limit, expiry, wanted in entries:
                previous_key, current_key = self.sliding_window_keys(key, expiry, now)
                window = _window(conn, previous_key, current_key, expiry, now)
                previous, previous_ttl, current, _ = window
                room = limit - math.floor(previous * previous_ttl / expiry + current)
                if room < 1:
                    granted.append(0)
                    refused = window
                    break
                units = min(wanted, room)
                conn.execute(_ADD, (current_key, units, now + 2 * expiry, now, now))
                granted.append(units)
            if now >= self._next_purge:
                conn.execute("DELETE FROM rl_counters WHERE expires_at <= ?", (now,))
                self._next_purge = now + PURGE_INTERVAL
        return Drawn(granted, refused)

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self._db.locked() as conn:
            return _window(conn, previous_key, current_key, expiry, now)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        await self.clear(previous_key)
        await self.clear(current_key)

    # --- the plain counter interface (not used by the sliding-window strategy) --------------

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._db.transaction(wait=self._wait) as conn:
            row = conn.execute(
                "INSERT INTO rl_counters (key, count, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET count = CASE WHEN expires_at > ? "
                "THEN count + excluded.count ELSE excluded.count END, "
                "expires_at = CASE WHEN expires_at > ? THEN expires_at "
                "ELSE excluded.expires_at END RETURNING count",
                (key, amount, now + expiry, now, now),
            ).fetchone()
        return int(row[0])

    async def get(self, key: str) -> int:
        row = self._db.one(
            "SELECT count FROM rl_counters WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        return int(row[0]) if row else 0

    async def get_expiry(self, key: str) -> float:
        row = self._db.one("SELECT expires_at FROM rl_counters WHERE key = ?", (key,))
        return float(row[0]) if row else time.time()

    async def check(self) -> bool:
        try:
            self._db.one("SELECT 1", ())
        except sqlite3.Error:
            return False
        return True

    async def reset(self) -> int | None:
        with self._db.transaction(wait=self._wait) as conn:
            return conn.execute("DELETE FROM rl_counters").rowcount

    async def clear(self, key: str) -> None:
        with self._db.transaction(wait=self._wait) as conn:
            conn.execute("DELETE FROM rl_counters WHERE key = ?", (key,))

    async def aclose(self) -> None:
        self._db.close()


_COUNT = "SELECT count FROM rl_counters WHERE key = ? AND expires_at > ?"
"""A window's live counter. Asked once per window: two point lookups cost less in SQLite than
one ``key IN (?, ?)`` (which builds a temporary index of its list on each run)."""


def _window(
    conn: sqlite3.Connection, previous_key: str, current_key: str, expiry: int, now: float
) -> tuple[int, float, int, float]:
    """(previous count, previous TTL, current count, current TTL) as limits' memory storage."""
    row = conn.execute(_COUNT, (previous_key, now)).fetchone()
    previous = int(row[0]) if row else 0
    row = conn.execute(_COUNT, (current_key, now)).fetchone()
    current = int(row[0]) if row else 0
    previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
    current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
    return previous, previous_ttl, current, current_ttl
