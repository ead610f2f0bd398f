"""Opening PostgreSQL for the shared stores: an asyncpg pool pinned to one schema."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
