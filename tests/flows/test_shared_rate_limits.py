"""Two gateway instances on one Redis enforce one budget together, over real loopback HTTP.

What `rate_limits.store: redis` is for (docker/compose.cluster.yaml): a person's budget and a
portal's budget hold across instances, so a balancer spreading calls over two gateways does not
double them. With the memory store each instance would count alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.adapter import Adapter, SystemSpec
from gateway.app import create_app
from gateway.ratelimit.config import RateLimitSettings
from gateway.settings import Settings, SystemSettings
from tests.redis_keys import REDIS_URL, own_prefix
from tests.subject_fixtures import TEST_SUBJECT_KEYS, person_key
from tests.unit.http.test_app import ID, ISSUER, Backend, auth, call_body
from tests.unit.http.test_app import _settings as base_settings

CALLS = "/api/v1/services/degree-verification/calls"
Store = Literal["memory", "redis"]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with own_prefix(":ratelimit:") as prefix:
        yield prefix


def instance(tmp_path: Path, name: str, prefix: str, store: Store = "redis") -> Settings:
    settings = base_settings(tmp_path / name)
    limits = RateLimitSettings(
        person="3/hour",
        client="5/hour",
        store=store,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
    )
    gateway = settings.gateway.model_copy(update={"rate_limits": limits, "instance_id": name})
    return dataclasses.replace(settings, gateway=gateway)


async def two_instances(
    stack: AsyncExitStack, tmp_path: Path, prefix: str, backend: Backend, store: Store = "redis"
) -> tuple[TestClient[Any, Any], TestClient[Any, Any]]:
    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    clients = []
    for name in ("gw-1", "gw-2"):
        (tmp_path / name).mkdir()
        app = create_app(
            instance(tmp_path, name, prefix, store),
            verifier=ISSUER,
            open_adapter=open_adapter,
            subjects=TEST_SUBJECT_KEYS,
        )
        clients.append(
            await stack.enter_async_context(TestClient(TestServer(app, host="127.0.0.1")))
        )
    return clients[0], clients[1]


@pytest.mark.redis
async def test_a_person_budget_holds_across_two_instances(tmp_path: Path, prefix: str) -> None:
    backend = Backend()
    # The call's data is hers (the holder's ID number the test app's calls name).
    citizen = ISSUER.issue("sub-p1", "L2", client_id="portal-a", person=person_key(ID))
    async with AsyncExitStack() as stack:
        one, two = await two_instances(stack, tmp_path, prefix, backend)
        statuses = []
        for n in range(5):
            response = await (one, two)[n % 2].post(CALLS, json=call_body(), headers=auth(citizen))
            statuses.append(response.status)
        assert statuses == [200, 200, 200, 429, 429]
        assert len(backend.adapter.calls) == 3
        # The same person through another portal, at either instance: the same budget.
        elsewhere = ISSUER.issue("sub-p1-b", "L2", client_id="portal-b", person=person_key(ID))
        response = await two.get("/api/v1/services", headers=auth(elsewhere))
        assert response.status == 429


@pytest.mark.redis
async def test_a_client_budget_holds_across_two_instances(tmp_path: Path, prefix: str) -> None:
    backend = Backend()
    async with AsyncExitStack() as stack:
        one, two = await two_instances(stack, tmp_path, prefix, backend)
        statuses = []
        for n in range(6):
            person = ISSUER.issue(f"sub-{n}", "L2", client_id="portal-a", person=f"person-{n}")
            response = await (one, two)[n % 2].get("/api/v1/services", headers=auth(person))
            statuses.append(response.status)
        assert statuses == [200, 200, 200, 200, 200, 429]
        assert response.headers["RateLimit"].startswith('"client";r=0;t=')


async def test_with_the_memory_store_each_instance_counts_alone(tmp_path: Path) -> None:
    backend = Backend()
    citizen = ISSUER.issue("sub-p1", "L2", client_id="portal-a", person="p1")
    async with AsyncExitStack() as stack:
        one, two = await two_instances(stack, tmp_path, "unused:", backend, store="memory")
        statuses = []
        for n in range(6):
            response = await (one, two)[n % 2].get("/api/v1/services", headers=auth(citizen))
            statuses.append(response.status)
        assert statuses == [200] * 6  # 3/hour at each: why a cluster needs the redis store
