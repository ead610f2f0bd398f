"""``SessionStore`` on SQLite: one file (``sessions.sqlite``) per data dir, for one instance whose
SSO sessions must survive a restart (``identity.session.store: sqlite``; the default is memory).

With it a restart of the gateway keeps every SSO session, its ``sid`` lookup, its deadline and
the pending logins; a session whose deadline passed while the gateway was down is claimed after
the restart and ended like any other (back-channel logout, sessions.py), which the in-memory
store, forgetting everything at exit, cannot do.

The same choices as the identity store (store_sqlite.py, read its docstring): the stdlib
``sqlite3`` module called synchronously on the event loop (each call is one short statement or
transaction on a local file, cheaper than a hop to a worker thread), a lock serialising the calls,
WAL with ``synchronous = NORMAL`` (a commit survives a crash or kill of the process; a power cut
may lose the last commits: at worst a citizen signs in again, or a session is ended late), the
file created 0600 (it holds userinfo claims, personal data).

The semantics are the memory store's (sessions.py), table by table:

    sso_sessions   key -> session JSON, kept until deadline + grace
    sso_deadlines  the deadline index: key -> deadline; claims take from it, earliest first
    sso_sids       sid -> key, kept until deadline + grace
    sso_pending    pending logins, with their own expiry

What must be atomic is done by SQLite itself, so it also holds when a second process (or a second
store object) opens the same file: a claim reads and deletes its keys in one ``BEGIN IMMEDIATE``
transaction (the write lock is taken first, so two claimers never read the same keys), and
``take_pending`` is one ``DELETE ... RETURNING``. Several gateway instances on several hosts use
Redis instead (redis_sessions.py).

Expired rows are purged at most every ``PURGE_INTERVAL`` seconds, on a write, by range deletes
on indexed expiry columns: the cost is the number of expired rows, not of all rows. As in the
memory store, a deadline nobody claimed within the grace is dropped then (nothing is left to end).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import orjson

from gateway.identity.sessions import DEFAULT_GRACE, PURGE_INTERVAL, SsoSession
from gateway.stores.migrations import Migration
from gateway.stores.sqlite import LockedConnection

FILE_NAME: Final = "sessions.sqlite"

SESSION_MIGRATIONS: Final = (
    Migration(
        1,
        "SSO sessions, their sid index and deadlines, pending logins",
        (
            """CREATE TABLE sso_sessions (
                key TEXT PRIMARY KEY,
                sid TEXT NOT NULL,
                data BLOB NOT NULL,
                kept_until REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX sso_sessions_kept_until ON sso_sessions (kept_until)",
            """CREATE TABLE sso_deadlines (
                key TEXT PRIMARY KEY,
                deadline REAL NOT NULL
            ) WITHOUT ROWID""",
            # Claims (earliest first, ties by key like the memory store) and the purge.
            "CREATE INDEX sso_deadlines_deadline ON sso_deadlines (deadline, key)",
            """CREATE TABLE sso_sids (
                sid TEXT PRIMARY KEY,
                key TEXT NOT NULL,
                kept_until REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX sso_sids_kept_until ON sso_sids (kept_until)",
            """CREATE TABLE sso_pending (
                key TEXT PRIMARY KEY,
                data BLOB NOT NULL,
                expires_at REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX sso_pending_expires_at ON sso_pending (expires_at)",
        ),
    ),
)


_PUT_PENDING: Final = "INSERT OR REPLACE INTO sso_pending (key, data, expires_at) VALUES (?, ?, ?)"


def _pending(raw: bytes) -> dict[str, str]:
    return dict(orjson.loads(raw))


class SqliteSessionStore:
    """The session store in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.path = path
        self._clock = clock
        self._grace = grace
        self._next_purge = 0.0
        self._db = LockedConnection(path, component="sessions", migrations=SESSION_MIGRATIONS)

    @classmethod
    def in_data_dir(
        cls,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE,
    ) -> SqliteSessionStore:
        return cls(data_dir / FILE_NAME, clock=clock, grace=grace)

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        """Inside a write transaction, at most once per PURGE_INTERVAL (memory store's rhythm)."""
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        conn.execute("DELETE FROM sso_sessions WHERE kept_until <= ?", (now,))
        conn.execute("DELETE FROM sso_sids WHERE kept_until <= ?", (now,))
        conn.execute("DELETE FROM sso_pending WHERE expires_at <= ?", (now,))
        # Keys nobody claimed before their data went: nothing is left to end.
        conn.execute("DELETE FROM sso_deadlines WHERE deadline <= ?", (now - self._grace,))

    async def put_session(self, key: str, session: SsoSession, ttl: float) -> None:
        now = self._clock()
        deadline = now + ttl
        kept_until = deadline + self._grace
        with self._db.transaction() as conn:
            self._purge(conn, now)
            conn.execute(
                "INSERT OR REPLACE INTO sso_sessions (key, sid, data, kept_until) "
                "VALUES (?, ?, ?, ?)",
                (key, session.sid, session.to_json(), kept_until),
            )
            conn.execute(
                "INSERT OR REPLACE INTO sso_deadlines (key, deadline) VALUES (?, ?)",
                (key, deadline),
            )
            conn.execute(
                "INSERT OR REPLACE INTO sso_sids (sid, key, kept_until) VALUES (?, ?, ?)",
                (session.sid, key, kept_until),
            )

    async def get_session(self, key: str) -> SsoSession | None:
        now = self._clock()
        # No deadline row: claimed (about to be ended), so no longer authenticated.
        row = self._db.one(
            "SELECT s.data FROM sso_sessions AS s JOIN sso_deadlines AS d ON d.key = s.key "
            "WHERE s.key = ? AND s.kept_until > ? AND d.deadline > ?",
            (key, now, now),
        )
        return None if row is None else SsoSession.from_json(row[0])

    async def delete_session(self, key: str) -> SsoSession | None:
        now = self._clock()
        with self._db.transaction() as conn:
            # fetchall: a RETURNING statement is finished (and its changes done) only when read
            # to the end.
            rows = conn.execute(
                "DELETE FROM sso_sessions WHERE key = ? RETURNING data, kept_until", (key,)
            ).fetchall()
            conn.execute("DELETE FROM sso_deadlines WHERE key = ?", (key,))
            if not rows or rows[0][1] <= now:
                return None
            session = SsoSession.from_json(rows[0][0])
            # The sid may already point at a newer handle (rotation): only if it is still ours.
            conn.execute("DELETE FROM sso_sids WHERE sid = ? AND key = ?", (session.sid, key))
        return session

    async def key_for_sid(self, sid: str) -> str | None:
        now = self._clock()
        row = self._db.one(
            "SELECT i.key FROM sso_sids AS i JOIN sso_deadlines AS d ON d.key = i.key "
            "WHERE i.sid = ? AND i.kept_until > ? AND d.deadline > ?",
            (sid, now, now),
        )
        return None if row is None else str(row[0])

    async def claim_expired(self, now: float, limit: int) -> list[str]:
        # BEGIN IMMEDIATE takes the write lock before the read: another claimer (this store's
        # or another process's) waits, then reads what is left.
        with self._db.transaction() as conn:
            keys = [
                str(key)
                for (key,) in conn.execute(
                    "SELECT key FROM sso_deadlines WHERE deadline <= ? "
                    "ORDER BY deadline, key LIMIT ?",
                    (now, limit),
                )
            ]
            conn.executemany("DELETE FROM sso_deadlines WHERE key = ?", [(k,) for k in keys])
        return keys

    async def put_pending(self, key: str, data: Mapping[str, str], ttl: float) -> None:
        now = self._clock()
        row = (key, orjson.dumps(dict(data)), now + ttl)
        if now < self._next_purge:
            # One statement commits by itself: no BEGIN / COMMIT round of its own (a login
            # writes four of these).
            with self._db.locked() as conn:
                conn.execute(_PUT_PENDING, row)
            return
        with self._db.transaction() as conn:
            self._purge(conn, now)
            conn.execute(_PUT_PENDING, row)

    async def get_pending(self, key: str) -> dict[str, str] | None:
        row = self._db.one(
            "SELECT data FROM sso_pending WHERE key = ? AND expires_at > ?", (key, self._clock())
        )
        return None if row is None else _pending(row[0])

    async def take_pending(self, key: str) -> dict[str, str] | None:
        now = self._clock()
        # One statement: atomic, also against another process on the file.
        with self._db.locked() as conn:
            rows = conn.execute(
                "DELETE FROM sso_pending WHERE key = ? RETURNING data, expires_at", (key,)
            ).fetchall()
        return None if not rows or rows[0][1] <= now else _pending(rows[0][0])

    async def claim_once(self, key: str, ttl: float) -> bool:
        now = self._clock()
        # One statement: an insert, or the take-over of an expired row; a live row stays and
        # nothing changes (atomic, also against another process on the file).
        with self._db.locked() as conn:
            changed = conn.execute(
                "INSERT INTO sso_pending (key, data, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET data = excluded.data, "
                "expires_at = excluded.expires_at WHERE sso_pending.expires_at <= ?",
                (f"once:{key}", b"{}", now + ttl, now),
            ).rowcount
        return changed == 1

    async def ping(self) -> bool:
        try:
            return self._db.one("SELECT 1", ()) is not None
        except sqlite3.Error:
            return False

    async def aclose(self) -> None:
        self._db.close()
