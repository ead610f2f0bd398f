"""Fixtures of the adapter contract suite: one loopback back-end per adapter kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.adapters.loopback_backends import KINDS, Backend, Kind, running_backend


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
async def backend(kind: Kind) -> AsyncIterator[Backend]:
    async with running_backend(kind) as server:
        yield server
