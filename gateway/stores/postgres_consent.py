"""ConsentStore on PostgreSQL (asyncpg): grants shared by any number of gateway instances.

A counted use is one conditional UPDATE: PostgreSQL's row lock serialises concurrent spenders
of one grant and each re-checks ``uses < max_uses`` on the row it then holds (READ COMMITTED
re-evaluates the WHERE clause after the lock), so no instance ever spends past the count. A use
given back is the mirror UPDATE (``uses > 0``), serialised on the same row lock.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from gateway.consent.contract import ConsentStoreUnavailable, DataSubject
from gateway.consent.model import Grant
from gateway.stores.consent_sql import (
    FIND,
    GET,
    GIVE_BACK,
    INSERT,
    OF_AGENT,
    OF_SUBJECT,
    REVOKE,
    SPEND,
    consent_migrations,
    grant_from_row,
    grant_row,
    pair_from_row,
)
from gateway.stores.postgres import MigratedPool, check_schema_name
from gateway.stores.postgres_cases import numbered

CONSENT_MIGRATIONS: Final = consent_migrations("DOUBLE PRECISION")
_UNAVAILABLE: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def _unavailable(detail: str) -> ConsentStoreUnavailable:
    return ConsentStoreUnavailable(f"The consent store (postgres): {detail}.")


class PostgresConsentStore:
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float = 5.0,
    ) -> None:
        self._timeout = command_timeout
        self._pool = MigratedPool(
            dsn,
            schema=check_schema_name(schema),
            component="consent",
            label="consent",
            migrations=CONSENT_MIGRATIONS,
            min_size=min_size,
            max_size=max_size,
            errors=_UNAVAILABLE,
            unavailable=_unavailable,
        )

    async def open(self) -> None:
        await self._pool.open()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self._pool.get().fetch(
                numbered(sql), *args, timeout=self._timeout
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(f"failed: {type(exc).__name__}") from exc
        return rows

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def insert(self, grant: Grant) -> None:
        await self._fetch(INSERT, *grant_row(grant))

    async def find(self, grant_id: str) -> tuple[Grant | None, Grant | None]:
        rows = await self._fetch(FIND, grant_id)
        return pair_from_row(tuple(rows[0]) if rows else None)

    async def spend(self, grant_id: str, now: float) -> int | None:
        rows = await self._fetch(SPEND, grant_id, now)
        return int(rows[0][0]) if rows else None

    async def give_back(self, grant_id: str) -> int | None:
        rows = await self._fetch(GIVE_BACK, grant_id)
        return int(rows[0][0]) if rows else None

    async def revoke(self, grant_id: str, now: float) -> Grant | None:
        try:
            async with self._pool.get().acquire() as conn, conn.transaction():
                await conn.execute(numbered(REVOKE), now, grant_id, grant_id, timeout=self._timeout)
                row = await conn.fetchrow(numbered(GET), grant_id, timeout=self._timeout)
        except _UNAVAILABLE as exc:
            raise _unavailable(f"failed: {type(exc).__name__}") from exc
        return grant_from_row(tuple(row)) if row is not None else None

    async def of_subject(self, subject: DataSubject, *, limit: int = 200) -> list[Grant]:
        rows = await self._fetch(OF_SUBJECT, subject.kind, subject.key, limit)
        return [g for g in (grant_from_row(tuple(r)) for r in rows) if g is not None]

    async def of_agent(self, agent: DataSubject, *, limit: int = 200) -> list[Grant]:
        rows = await self._fetch(OF_AGENT, agent.key, limit)
        return [g for g in (grant_from_row(tuple(r)) for r in rows) if g is not None]
