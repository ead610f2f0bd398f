"""OpenID Connect Back-Channel Logout 1.0, delivered durably: a persisted queue and its worker.

When a session ends, one queue row per client of the session that registered a
``backchannel_logout_uri`` (§2.2) is committed to SQLite before the logout answer leaves, so a
crash loses no logout. The worker POSTs ``logout_token`` form-encoded (§2.5) and retries with
doubling backoff until the client answers 200 (or 204), recording every attempt; after
``max_attempts`` the row is kept as failed for operators.

Logout tokens (§2.4) are signed at each attempt, not when queued, so the queue never holds a
credential and a late retry still carries a fresh ``iat``/``exp``: ``iss``, ``aud``, ``iat``,
``exp``, ``jti``, ``events`` with the back-channel logout event, ``sid`` and ``sub``, header
``typ: logout+jwt`` (§2.4, RFC 8725 §3.11 explicit typing), and never a ``nonce``.

Must not: import aiohttp (the web layer hands in an ``httpx.AsyncClient``); log the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import httpx
import structlog

from gateway.audit.record import AuditEvent, EventType
from gateway.audit.sink import AuditSink
from gateway.errors import AuditUnavailable
from gateway.identity.config import BackchannelSettings
from gateway.identity.keys import SigningKeys
from gateway.stores.sqlite import create_private, use_wal_async

log = structlog.get_logger("tongban.identity")

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
State = Literal["pending", "delivered", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backchannel_logout (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    sid TEXT NOT NULL,
    subject TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS backchannel_logout_due ON backchannel_logout (state, next_at);
"""


_SELECT = (
    "SELECT id, client_id, uri, sid, subject, state, attempts, next_at, created_at, "
    "delivered_at, last_status, last_error FROM backchannel_logout "
)


@dataclass(frozen=True, slots=True)
class LogoutDelivery:
    id: str
    client_id: str
    uri: str
    sid: str
    subject: str
    state: State
    attempts: int
    next_at: float
    created_at: float
    delivered_at: float | None
    last_status: int | None
    last_error: str | None


def build_logout_token(
    keys: SigningKeys,
    *,
    issuer: str,
    algorithm: str,
    client_id: str,
    sid: str,
    subject: str,
    now: float,
    ttl: int,
) -> str:
    """A Back-Channel Logout 1.0 §2.4 logout token."""
    claims = {
        "iss": issuer,
        "aud": client_id,
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": uuid.uuid4().hex,
        "sub": subject,
        "sid": sid,
        "events": {LOGOUT_EVENT: {}},
    }
    return keys.sign(claims, algorithm=algorithm, typ="logout+jwt")


class SqliteLogoutQueue:
    """The persisted queue (one file in the data directory)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> SqliteLogoutQueue:
        create_private(path)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            await use_wal_async(conn)
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.executescript(_SCHEMA)
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    async def enqueue(self, rows: list[tuple[str, str, str, str]], now: float) -> None:
        """Commit one row per (client_id, uri, sid, subject) in one transaction."""
        if not rows:
            return
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            await self._conn.executemany(
                "INSERT INTO backchannel_logout (id, client_id, uri, sid, subject, next_at, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(uuid.uuid4().hex, c, u, s, sub, now, now) for c, u, s, sub in rows],
            )
            await self._conn.execute("COMMIT")
        except BaseException:
            await self._conn.execute("ROLLBACK")
            raise

    async def due(self, now: float, limit: int = 32) -> list[LogoutDelivery]:
        return await self._select(
            "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?", (now, limit)
        )

    async def all(self) -> list[LogoutDelivery]:
        return await self._select("ORDER BY created_at", ())

    async def next_due(self) -> float | None:
        async with self._conn.execute(
            "SELECT MIN(next_at) FROM backchannel_logout WHERE state = 'pending'"
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def _select(self, where: str, args: tuple[Any, ...]) -> list[LogoutDelivery]:
        async with self._conn.execute(
            _SELECT + where,  # where: one of two fixed fragments in this class, never input
            args,
        ) as cursor:
            rows = await cursor.fetchall()
        return [LogoutDelivery(*row) for row in rows]

    async def record(
        self,
        delivery_id: str,
        *,
        state: State,
        attempts: int,
        next_at: float,
        now: float,
        status: int | None,
        error: str | None,
    ) -> None:
        await self._conn.execute(
            "UPDATE backchannel_logout SET state = ?, attempts = ?, next_at = ?, "
            "delivered_at = ?, last_status = ?, last_error = ? WHERE id = ?",
            (
                state,
                attempts,
                next_at,
                now if state == "delivered" else None,
                status,
                error,
                delivery_id,
            ),
        )

    async def aclose(self) -> None:
        await self._conn.close()


TokenSigner = Callable[[str, str, str], str]
"""(client_id, sid, subject) → a signed logout token."""


class BackchannelDelivery:
    """The worker: delivers due rows, records each attempt, backs off on failure."""

    def __init__(
        self,
        queue: SqliteLogoutQueue,
        http: httpx.AsyncClient,
        sign: TokenSigner,
        settings: BackchannelSettings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        audit: AuditSink | None = None,
    ) -> None:
        self.queue = queue
        self._audit = audit
        self._http = http
        self._sign = sign
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def enqueue(self, rows: list[tuple[str, str, str, str]]) -> None:
        await self.queue.enqueue(rows, self._clock())
        self.wake()

    async def run_once(self) -> int:
        """Attempt every due row once; returns how many were delivered."""
        delivered = 0
        now = self._clock()
        due = await self.queue.due(now)
        results = await asyncio.gather(*(self._attempt(row) for row in due))
        for row, (status, error) in zip(due, results, strict=True):
            attempts = row.attempts + 1
            now = self._clock()
            if error is None:
                delivered += 1
                await self.queue.record(
                    row.id,
                    state="delivered",
                    attempts=attempts,
                    next_at=now,
                    now=now,
                    status=status,
                    error=None,
                )
                log.info("backchannel_logout_delivered", client=row.client_id, attempt=attempts)
                self._record(row, "delivered", attempts, status, None)
                continue
            final = attempts >= self._settings.max_attempts
            backoff = min(
                self._settings.initial_backoff * 2 ** (attempts - 1), self._settings.max_backoff
            )
            await self.queue.record(
                row.id,
                state="failed" if final else "pending",
                attempts=attempts,
                next_at=now + backoff,
                now=now,
                status=status,
                error=error,
            )
            log.warning(
                "backchannel_logout_failed",
                client=row.client_id,
                attempt=attempts,
                error_code=error,
                final=final,
            )
            self._record(row, "failed" if final else "retrying", attempts, status, error)
        return delivered

    def _record(
        self,
        row: LogoutDelivery,
        outcome: str,
        attempts: int,
        status: int | None,
        error: str | None,
    ) -> None:
        """Each delivery attempt in the audit trail; the worker carries on if it cannot."""
        if self._audit is None:
            return
        try:
            self._audit.record(
                AuditEvent(
                    type=EventType.LOGOUT,
                    principal=row.subject,  # the pairwise subject at that client
                    client=row.client_id,
                    operation="backchannel_logout",
                    outcome=outcome,
                    error_code=error,
                    attempts=attempts,
                    extra={"delivery": row.id, "status": status or 0},
                )
            )
        except AuditUnavailable:
            log.warning("backchannel_logout_unaudited", client=row.client_id)

    async def _attempt(self, row: LogoutDelivery) -> tuple[int | None, str | None]:
        token = self._sign(row.client_id, row.sid, row.subject)
        try:
            response = await self._http.post(
                row.uri,
                data={"logout_token": token},
                headers={"Cache-Control": "no-store"},
                timeout=self._settings.timeout,
            )
        except httpx.HTTPError as exc:
            return None, type(exc).__name__
        if response.status_code in (200, 204):
            return response.status_code, None
        return response.status_code, f"http_{response.status_code}"

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except (aiosqlite.Error, OSError) as exc:
                log.error("backchannel_queue_failed", error_code=type(exc).__name__)
            next_at = await self.queue.next_due()
            wait = 30.0 if next_at is None else max(0.05, min(30.0, next_at - self._clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
