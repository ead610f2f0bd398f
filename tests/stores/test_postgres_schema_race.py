"""Several processes opening one PostgreSQL schema at the same instant (the workers of one
`tongban serve`) all open it: `CREATE SCHEMA IF NOT EXISTS` is not atomic in PostgreSQL, and
the loser of the race used to fail its start-up with a unique violation."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from gateway.stores.postgres import create_pool
from tests.stores.backends import PG_DSN

pytestmark = pytest.mark.postgres


async def test_pools_opened_at_once_on_a_new_schema_all_open() -> None:
    try:
        probe = await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        for _ in range(10):
            schema = "race_" + secrets.token_hex(6)
            try:
                pools = await asyncio.gather(
                    *(create_pool(PG_DSN, schema=schema, max_size=1) for _ in range(4))
                )
                for pool in pools:
                    await pool.close()
            finally:
                await probe.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await probe.close()
