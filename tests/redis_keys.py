"""A key prefix of a test's own on the Redis at 127.0.0.1:6379, its keys deleted afterwards."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.asynccontextmanager
async def own_prefix(tail: str = "") -> AsyncIterator[str]:
    """``tongban-test:<random>`` and ``tail``: parallel runs and old keys never meet. Skips the
    test when Redis is not reachable (which CI turns into a failure for tests marked redis)."""
    prefix = f"tongban-test:{secrets.token_hex(8)}{tail}"
    async with Redis.from_url(REDIS_URL) as client:
        try:
            await client.ping()
        except RedisError:
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        try:
            yield prefix
        finally:
            async for key in client.scan_iter(match=f"{prefix}*"):
                await client.delete(key)
