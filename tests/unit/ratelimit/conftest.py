"""Fixtures of the rate-limit tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the Redis at 127.0.0.1:6379; its keys deleted after."""
    name = f"tongban-test:{secrets.token_hex(8)}"
    async with Redis.from_url(REDIS_URL) as client:
        try:
            await client.ping()
        except RedisError:
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        try:
            yield name
        finally:
            async for key in client.scan_iter(match=f"{name}*"):
                await client.delete(key)
