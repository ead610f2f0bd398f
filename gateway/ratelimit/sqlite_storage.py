"""Rate-limit counters in a SQLite file: one budget for every process on one host.

``rate_limits.store: sqlite`` keeps the sliding-window counters in ``ratelimits.sqlite`` in the
data directory, so the workers of one instance (``serve --workers N``, where a 'memory' store is
moved here) draw on one budget instead of N. Instances on several hosts use Redis.

The windows are ``limits``' own sliding-window counter (the same keys, the same weighting of
the previous window, ``limits.storage.base.SlidingWindowCounterSupport``): a draw is one
``BEGIN IMMEDIATE`` transaction that reads both windows' counters and, if the weighted count
leaves room, adds to the current one, so two processes never both take the last call of a
budget. A call drawing one budget alone (a person's unit, her portal's spent from a block) is
one statement instead, ``_DRAW``, which SQLite runs as a transaction of its own with the write
lock held from its read to its write; when it draws nothing (no room for all it asks, another
worker holding the lock) the transaction decides. Like the identity stores it is the stdlib
``sqlite3`` called on the event loop (each draw is a few tens of microseconds on a local
file, less than a hop to a thread and back); unlike them nothing here needs to survive a
crash, so ``synchronous = OFF``: the counters are a protection, not a record. Expired
windows are deleted at most once a minute, on a draw. A draw that finds another worker's draw
holding the file's write lock waits for it with yields of the CPU, not with SQLite's busy
handler, which sleeps the whole worker for a millisecond or more each time
(``gateway.stores.sqlite.begin_yielding``); the store's timeout still bounds it.

Calls in flight together share a transaction. ``BEGIN IMMEDIATE`` and ``COMMIT`` are most of a
lone draw's cost (the lock, the WAL frame written, the statements around two lookups and an
upsert), so the draws of the calls a worker's loop runs in one turn go in one transaction:
``draw`` queues a call's draws and arms one callback (``loop.call_soon``) that runs every call
queued by then (``MAX_CALLS`` at most per transaction) and answers each. The calls are drawn one
after the other, each call's budgets in order and stopping at its own first refusal, so each
gets the ``Drawn`` it would have got alone had the calls come one right after the other, at
the transaction's instant (one transaction: nothing of another worker comes in between). A call
whose caller gave up while queued (cancelled) draws nothing. A transaction that fails gives
every call still queued the store error its own draw would have met (each its own
``StorageError``), and the limiter lets each through unchecked.

A draw goes at once, alone, without a future or a turn of the loop, when nothing could share its
transaction: nothing is queued and the loop has nothing else ready to run in this turn
(asyncio's loop: its ready queue is empty). A callback armed then would run before anything
that could queue another draw, so waiting for company would only cost the turn. On a loop that
does not show its ready queue (uvloop) every draw is queued.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from limits.aio.storage import SlidingWindowCounterSupport, Storage
from limits.errors import StorageError
from limits.storage.base import TimestampedSlidingWindow

from gateway.event_loop import KeptLoop
from gateway.ratelimit.draws import Drawn, Window, caller_error
from gateway.stores.migrations import Migration
from gateway.stores.sqlite import (
    LockedConnection,
    begin_yielding,
    create_private,
    rollback_quietly,
    use_wal,
)

FILE_NAME = "ratelimits.sqlite"
PURGE_INTERVAL = 60.0
MAX_CALLS = 32
"""The most calls' draws one transaction carries; more go in the next turn's. The write lock is
held for the whole transaction (some 25 µs a call), and another worker waits for it."""

Entries = Sequence[tuple[str, int, int, int]]
"""One call's budgets: ``(key, limit, expiry, wanted)`` each, in order."""

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
    # A draw of a sparse budget (a person of a portal's traffic) writes a new window's row:
    # in a rowid table that is three b-trees (the rows, the key's own index, the expiry
    # index), each a page in the WAL and, after another worker's write, a page read again.
    # Keyed by the key itself the rows and the key's index are one b-tree. The live counters
    # are carried over.
    Migration(
        2,
        "rate-limit counters in a table keyed by their key (WITHOUT ROWID)",
        (
            """CREATE TABLE rl_counters_by_key (
                key TEXT PRIMARY KEY,
                count INTEGER NOT NULL,
                expires_at REAL NOT NULL
            ) WITHOUT ROWID""",
            "INSERT INTO rl_counters_by_key (key, count, expires_at) "
            "SELECT key, count, expires_at FROM rl_counters",
            "DROP TABLE rl_counters",
            "ALTER TABLE rl_counters_by_key RENAME TO rl_counters",
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

_ADD_LIVE = "UPDATE rl_counters SET count = count + ? WHERE key = ?"
"""Add to a window's counter the transaction has just read live (its ``_COUNT`` found it). Its
expiry stays as it is, and this statement does not name it: an ``UPDATE`` that sets
``expires_at``, even to its own value (``_ADD``'s ``CASE``), rewrites the row's entry in the
expiry index too, a second page written to the WAL at every draw of a live window, and one more
read again by the other workers after it."""


class SqliteStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """``limits`` async storage on one SQLite file; sliding-window counter strategy only."""

    STORAGE_SCHEME: list[str] | None = ["tongban+sqlite"]  # noqa: RUF012 - as limits declares it

    def __init__(self, path: Path, *, busy_timeout: float = 0.25) -> None:
        super().__init__(None, wrap_exceptions=True)
        _small_pages(path)
        self._db = LockedConnection(path, component="ratelimits", migrations=MIGRATIONS)
        with self._db.locked() as conn:
            conn.execute("PRAGMA synchronous = OFF")
            # Another worker's draw holds the write lock for microseconds: waited for by
            # begin_yielding, not by SQLite's busy handler, which sleeps a millisecond or more.
            conn.execute("PRAGMA busy_timeout = 0")
            self._conn = conn
            """The connection, for the draws on the loop's thread (``locked``'s lock is for
            other threads, and the draws are synchronous: none comes between another's
            statements on this thread)."""
        self._wait = busy_timeout
        self._next_purge = 0.0
        self._queued: list[tuple[Entries, asyncio.Future[Drawn]]] = []
        self._drain: asyncio.Handle | None = None
        """The callback armed to run the queued draws, or None."""
        self._running = KeptLoop()
        """The loop the draws run on (``KeptLoop``)."""
        self.at_once = True
        """A draw with nothing to share its transaction goes at once (False: every draw is
        queued, as on a loop that does not show its ready queue; for measuring)."""

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
            _add(conn, current_key, current, amount, expiry, now)
            self._purge_if_due(conn, now)
        return True

    def acquire_all(self, entries: Entries) -> Drawn:
        """Draw from each ``(key, limit, expiry, wanted)`` in order, in one transaction: the
        units granted to each budget drawn (``min(wanted, room)``), ending at the first without
        room with a 0 (the draws before it stay counted), and that one's windows as
        ``get_sliding_window`` reads them. Asking for one unit, it is the library's draw; more
        is a block for a local lease (leases.py).

        One transaction per call (or per the calls in flight together, ``draw``) for all its
        budgets instead of one per budget through ``limits``' strategy (same keys and windows,
        so both read each other). Synchronous: some tens of microseconds on the loop. Raises
        sqlite3.Error."""
        return self.acquire_calls((entries,))[0]

    def acquire_calls(self, calls: Sequence[Entries]) -> list[Drawn]:
        """``acquire_all`` for each call's entries, the calls one after the other, in one
        transaction; each call's answer. Raises sqlite3.Error (nothing drawn).

        The calls are one process's (one limiter's), so a block one of them asks for is this
        process's lease (leases.py): a later call of the transaction that asks one unit of the
        same budget (it came while that block was on its way) is given one of the block's
        units instead of a unit drawn anew, and the block's call is granted one unit fewer.
        The store counts the same units as if the later call had waited for the block and
        spent a unit of it locally, with no room test and no statement for it; a block of two
        goes wholly to the later call, and when the block is used up (or was never granted:
        the room ran short, or an earlier budget of its call refused) the next call draws
        from the store as usual.

        A budget with room for all it asks is one statement, ``_DRAW`` (``_draw``); one short
        of room, or refusing, is read (``_window``) and drawn what is left (``_add``). One
        call drawing one budget (a lone person's call, her portal's units spent from a block)
        is that statement in SQLite's own transaction of it (``_draw_one``), without ``BEGIN``
        and ``COMMIT``; when it draws nothing, the transaction below decides."""
        now = time.time()
        conn = self._conn
        if len(calls) == 1 and len(calls[0]) == 1:
            drawn = self._draw_one(conn, calls[0][0], now)
            if drawn is not None:
                return [drawn]
        answers: list[Drawn] = []
        # A block granted to an earlier call of this transaction, by key: (its call's granted
        # units, the budget's index there). A later call asking one unit of that budget takes
        # it from the block (see the docstring).
        blocks: dict[str, tuple[list[int], int]] = {}
        # BEGIN IMMEDIATE ... COMMIT written out (``immediate``'s steps without its two
        # context managers); rolled back if anything raises.
        begin_yielding(conn, self._wait)
        try:
            for entries in calls:
                granted: list[int] = []
                refused: Window | None = None
                for key, limit, expiry, wanted in entries:
                    if wanted == 1 and key in blocks:
                        holder, index = blocks[key]
                        if holder[index] > 2:  # its call's own unit and one more stay
                            holder[index] -= 1
                        else:
                            del blocks[key]
                            holder[index] = 1  # what is left of it, given to this call
                        granted.append(1)
                        continue
                    # limits' sliding_window_keys, written out (a method call less a budget)
                    previous_key = f"{key}/{int((now - expiry) / expiry)}"
                    current_key = f"{key}/{int(now / expiry)}"
                    if _draw(conn, previous_key, current_key, limit, expiry, wanted, now):
                        units = wanted  # room for all of it: one statement
                    else:  # short of room, or refused: read, and draw what is left
                        window = _window(conn, previous_key, current_key, expiry, now)
                        previous, previous_ttl, current, _ = window
                        room = limit - math.floor(previous * previous_ttl / expiry + current)
                        if room < 1:
                            granted.append(0)
                            refused = window
                            break
                        units = min(wanted, room)
                        _add(conn, current_key, current, units, expiry, now)
                    if units > 1:
                        blocks[key] = (granted, len(granted))
                    granted.append(units)
                answers.append(Drawn(granted, refused))
            self._purge_if_due(conn, now)
            conn.execute("COMMIT")
        except BaseException:
            rollback_quietly(conn)
            raise
        return answers

    def _purge_if_due(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete the expired windows, once every ``PURGE_INTERVAL`` seconds, in the caller's
        transaction (or as a statement of its own)."""
        if now >= self._next_purge:
            conn.execute(_PURGE, (now,))
            self._next_purge = now + PURGE_INTERVAL

    def _draw_one(
        self, conn: sqlite3.Connection, entry: tuple[str, int, int, int], now: float
    ) -> Drawn | None:
        """One budget's ``wanted`` units drawn by one statement (``_DRAW``) when its windows
        leave room for all of them: SQLite runs a write statement outside ``BEGIN`` as a
        transaction of its own, the file's write lock taken at its start and the commit at its
        end, so its read of the windows and its write are one step no other process comes
        between, as in ``BEGIN IMMEDIATE``, with no ``BEGIN`` and ``COMMIT`` statements around
        it. The answer is what the transaction would give: ``[wanted]`` granted. None when the
        statement drew nothing (the room short of ``wanted``, a live row's expiry not as a
        draw writes it, another process holding the write lock): then ``acquire_calls``'
        transaction draws, at its own instant, ``min(wanted, room)``, and says a refusal's
        windows. Raises sqlite3.Error."""
        key, limit, expiry, wanted = entry
        previous_key = f"{key}/{int((now - expiry) / expiry)}"  # limits' sliding_window_keys
        current_key = f"{key}/{int(now / expiry)}"
        try:
            if not _draw(conn, previous_key, current_key, limit, expiry, wanted, now):
                return None
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return None  # the transaction waits for the lock (begin_yielding)
            raise
        self._purge_if_due(conn, now)
        return Drawn([wanted])

    def alone(self) -> bool:
        """Whether a draw now would be alone in its transaction however long it waited: nothing
        is queued and the running loop has nothing else ready in this turn (see the module
        docstring). Then ``acquire_all`` at once; otherwise ``draw``."""
        if self._queued or not self.at_once:
            return False
        ready = getattr(self._running(), "_ready", None)  # None: a loop that does not show it
        return ready is not None and not ready

    def draw(self, entries: Entries) -> asyncio.Future[Drawn]:
        """``acquire_all``'s answer for ``entries``, drawn in the transaction the queued calls
        share (the next turn of the loop, or the one after when more than ``MAX_CALLS`` are
        queued). Fails with StorageError when that transaction fails."""
        loop = self._running()
        answer: asyncio.Future[Drawn] = loop.create_future()
        self._queued.append((entries, answer))
        if self._drain is None:
            self._drain = loop.call_soon(self._run_queued)
        return answer

    def _run_queued(self) -> None:
        """The drain: one transaction for up to ``MAX_CALLS`` queued calls, each answered; the
        rest in the next turn's."""
        self._drain = None
        batch = self._queued[:MAX_CALLS]
        del self._queued[:MAX_CALLS]
        if self._queued:
            self._drain = self._running().call_soon(self._run_queued)
        # A caller that gave up while queued draws nothing, as it would have drawn nothing alone.
        batch = [(entries, answer) for entries, answer in batch if not answer.done()]
        if not batch:
            return
        try:
            answers = self.acquire_calls([entries for entries, _ in batch])
        except BaseException as exc:
            # Every call still queued hears it: the store is failing (the limiter then lets
            # them through unchecked and spares the store), and the rest would meet it too.
            waiting = batch + self._queued
            self._queued.clear()
            if self._drain is not None:
                self._drain.cancel()
                self._drain = None
            failure = StorageError(exc) if isinstance(exc, sqlite3.Error) else exc
            for _, answer in waiting:
                if answer.done():
                    continue
                if isinstance(failure, Exception):
                    answer.set_exception(caller_error(failure))
                else:
                    answer.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        for (_, answer), drawn in zip(batch, answers, strict=True):
            answer.set_result(drawn)

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
        # Calls still queued are drawn (or hear the store's error) before the file closes.
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        while self._queued:
            self._run_queued()
            if self._drain is not None:
                self._drain.cancel()
                self._drain = None
        self._db.close()


PAGE_SIZE = 1024
"""The page size of a new rate-limit file (SQLite's default is 4096). A draw writes one or two
pages (the counters' leaf, the expiry index's) to the WAL at each commit, and SQLite checksums
every byte of a frame; another worker's draw reads those pages again. The rows are some 60
bytes, so a 1 KB leaf still holds a dozen or more. A file's page size is set when it is first
written: an existing file keeps its own."""


def _small_pages(path: Path) -> None:
    """Create the file (0600, ``create_private``) with ``PAGE_SIZE`` pages and in WAL, if it
    is new and empty; a file with content is left as it is. Two workers starting together may
    both do it: both ask for the same page size, and the first to write the header sets it."""
    create_private(path)
    if path.stat().st_size:
        return
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        use_wal(conn)
    finally:
        conn.close()


_PURGE = "DELETE FROM rl_counters WHERE expires_at <= ?"

_DRAW = (
    "INSERT OR IGNORE INTO rl_counters (key, count, expires_at) VALUES (?2, CASE WHEN ?4 - CAST("
    "coalesce((SELECT count FROM rl_counters WHERE key = ?1 AND expires_at > ?3), 0) * ?7 / ?8"
    " + coalesce((SELECT count FROM rl_counters WHERE key = ?2 AND expires_at > ?3), 0)"
    " AS INTEGER) >= ?5 THEN ?5 END, ?6) "
    "ON CONFLICT (key) DO UPDATE SET count = count + excluded.count WHERE expires_at > ?3"
)
"""A draw of ``?5`` units of one budget in one statement, if its windows leave room for them
all (``_draw_one``): ``?1``/``?2`` the previous and the current window's keys, ``?3`` now,
``?4`` the limit, ``?6`` a new window's expiry, ``?7`` the previous window's seconds left and
``?8`` the window's. The room test is the transaction's, ``limit - floor(previous *
previous_ttl / expiry + current) >= wanted``, on the same reads (``_WINDOWS``' live counters)
and the same IEEE double operations in the same order (``CAST AS INTEGER`` truncates: the
floor of a count that is never negative; a previous count of 0 makes the product 0 whatever
``?7``). Without room the count is NULL, which the ``NOT NULL`` column refuses and ``OR
IGNORE`` turns into no row written; with room a new window's row is inserted and a live one
added to as ``_ADD_LIVE`` does, its expiry not named (so its expiry index entry is not
written). A row of the current key that is there but expired (a window's row lives twice its
window, so only a clock set back far could leave one) is not touched either. So the statement
changed one row (``rowcount``) exactly when it drew. The scalar subqueries in ``VALUES`` are
read before the row is written; an ``INSERT ... SELECT`` reading its own table would go
through a temporary table, and ``RETURNING`` through a trigger program: both measured dearer
than the transaction's four statements."""

_COUNT = "SELECT count FROM rl_counters WHERE key = ? AND expires_at > ?"
"""A window's live counter (``get_sliding_window``'s reference; the draws use ``_WINDOWS``)."""

_WINDOWS = (
    "SELECT (SELECT count FROM rl_counters WHERE key = ?1 AND expires_at > ?3), "
    "(SELECT count FROM rl_counters WHERE key = ?2 AND expires_at > ?3)"
)
"""Both windows' live counters in one statement (NULL: no live row): each scalar subquery is
the point lookup ``_COUNT`` makes (``key IN (?, ?)`` would build a temporary index of its list
on each run), and one statement is one ``execute`` (a cursor, its bindings, a step and a
``fetchone``) instead of two. With two workers every person's draw is a transaction on the loop
of its own (docs/performance.md, "Two workers against one: where the instructions go")."""


def _draw(
    conn: sqlite3.Connection,
    previous_key: str,
    current_key: str,
    limit: int,
    expiry: int,
    wanted: int,
    now: float,
) -> bool:
    """``_DRAW``: ``wanted`` units added to the current window ``current_key`` if the windows
    leave room for all of them; whether they were (the statement changed its row). Inside a
    transaction it is one statement instead of ``_window`` and ``_add``; outside, a
    transaction of its own (``SqliteStorage._draw_one``)."""
    return (
        conn.execute(
            _DRAW,
            (
                previous_key,
                current_key,
                now,
                limit,
                wanted,
                now + 2 * expiry,
                (1 - (((now - expiry) / expiry) % 1)) * expiry,  # the previous window's TTL
                expiry,
            ),
        ).rowcount
        == 1
    )


def _add(
    conn: sqlite3.Connection, key: str, current: int, units: int, expiry: int, now: float
) -> None:
    """Add ``units`` to the current window's counter ``key``, which this transaction read as
    ``current`` (``_window``; live only): a live counter (``current > 0``) by ``_ADD_LIVE``,
    its expiry left alone; otherwise by ``_ADD`` (a new row, or an expired one started again).
    Both give the row what ``_ADD`` alone would: nothing changes the file between the read and
    this write (the transaction holds its write lock)."""
    if current > 0:
        conn.execute(_ADD_LIVE, (units, key))
    else:
        conn.execute(_ADD, (key, units, now + 2 * expiry, now, now))


def _window(
    conn: sqlite3.Connection, previous_key: str, current_key: str, expiry: int, now: float
) -> tuple[int, float, int, float]:
    """(previous count, previous TTL, current count, current TTL) as limits' memory storage."""
    found_previous, found_current = conn.execute(
        _WINDOWS, (previous_key, current_key, now)
    ).fetchone()
    previous = int(found_previous) if found_previous is not None else 0
    current = int(found_current) if found_current is not None else 0
    previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
    current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
    return previous, previous_ttl, current, current_ttl
