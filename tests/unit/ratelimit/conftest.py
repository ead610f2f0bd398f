"""Fixtures of the rate-limit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.redis_keys import own_prefix


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own on the Redis at 127.0.0.1:6379; its keys deleted after."""
    async with own_prefix() as name:
        yield name
