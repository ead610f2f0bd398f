"""Opening PostgreSQL for the shared stores: an asyncpg pool pinned to one schema."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import asyncpg

from gateway.stores.migrations import Migration, migrate_postgres

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    """Schema names are interpolated into SQL, so only plain lower-case identifiers pass."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


async def create_pool(
    dsn: str, *, schema: str = "public", min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """Create the schema if needed and return a pool whose connections use it first."""
    check_schema_name(schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    except asyncpg.UniqueViolationError:
        # Two processes creating it at the same instant (the workers of one `serve`): IF NOT
        # EXISTS is not atomic in PostgreSQL, and the loser sees the winner's catalogue row.
        pass
    finally:
        await conn.close()
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema},
    )
    return pool


async def open_migrated_pool(
    dsn: str,
    *,
    schema: str,
    component: str,
    migrations: Sequence[Migration],
    min_size: int,
    max_size: int,
) -> asyncpg.Pool:
    """A pool on ``schema`` with ``component``'s migrations applied; closed again if they fail."""
    pool = await create_pool(dsn, schema=schema, min_size=min_size, max_size=max_size)
    try:
        async with pool.acquire() as conn:
            await migrate_postgres(conn, component, migrations)
    except BaseException:
        await pool.close()
        raise
    return pool


class MigratedPool:
    """The pool of one PostgreSQL-backed store: opened with its component's migrations on its
    schema, closed once. ``unavailable`` builds the store's own "unavailable" error; only the
    driver's exception class goes into it (a driver message may carry the host or user)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        component: str,
        label: str,
        migrations: Sequence[Migration],
        min_size: int,
        max_size: int,
        errors: tuple[type[BaseException], ...],
        unavailable: Callable[[str], Exception],
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._component = component
        self._label = label
        self._migrations = migrations
        self._sizes = (min_size, max_size)
        self._errors = errors
        self._unavailable = unavailable
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await open_migrated_pool(
                self._dsn,
                schema=self._schema,
                component=self._component,
                migrations=self._migrations,
                min_size=self._sizes[0],
                max_size=self._sizes[1],
            )
        except self._errors as exc:
            raise self._unavailable(
                f"cannot open the {self._label} database: {type(exc).__name__}"
            ) from exc

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def get(self) -> asyncpg.Pool:
        if self._pool is None:
            raise self._unavailable(f"the {self._label} store is not open")
        return self._pool
