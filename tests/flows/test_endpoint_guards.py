"""Guards of what anyone may call without a token, on two gateway instances over real loopback
HTTP, sharing one Redis: client-secret guessing and token-endpoint floods are throttled per
source address and per client, logins per source, and anonymous refusals cannot fill the audit
chain (recorded one by one up to a budget, then summarised). Sources are told apart by binding
the client to other loopback addresses (127.0.0.2, 127.0.0.3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import encode_basic_auth
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from gateway.adapter import Adapter, SystemSpec
from gateway.app import create_app
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.refusals import collecting, hold
from gateway.audit.setup import audit_store_for
from gateway.identity.authn import FakeAuthenticator
from gateway.identity.config import ProviderSettings
from gateway.identity.provider import OpenIDProvider
from gateway.identity.store import MemoryIdentityStore
from gateway.ratelimit.config import EndpointRateLimits, RateLimitSettings
from gateway.settings import Settings, SystemSettings
from tests.flows.test_oidc_provider import SYSTEM_SECRET, _clients
from tests.ports import HeldPort
from tests.redis_keys import REDIS_URL, own_prefix
from tests.unit.http.test_app import Backend
from tests.unit.http.test_app import _settings as base_settings


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with own_prefix(":ratelimit:") as prefix:
        yield prefix


@dataclasses.dataclass
class Gateway:
    http: TestClient[Any, Any]
    settings: Settings

    def url(self, path: str) -> str:
        return str(self.http.make_url(path))


async def two_gateways(
    stack: AsyncExitStack, tmp_path: Path, prefix: str, endpoints: EndpointRateLimits
) -> tuple[Gateway, Gateway]:
    backend = Backend()

    async def open_adapter(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return backend.adapter

    gateways = []
    for name in ("gw-1", "gw-2"):
        data_dir = tmp_path / name
        data_dir.mkdir()
        held = HeldPort()
        stack.callback(held.close)
        settings = base_settings(data_dir)
        limits = RateLimitSettings(
            store="redis", redis_url=REDIS_URL, redis_prefix=prefix, endpoints=endpoints
        )
        gateway = settings.gateway.model_copy(update={"rate_limits": limits, "instance_id": name})
        settings = dataclasses.replace(settings, gateway=gateway)
        provider = OpenIDProvider.from_config(
            ProviderSettings(
                issuer=f"http://127.0.0.1:{held.port}", pairwise_secret=SecretStr("p" * 40)
            ),
            [c for c in _clients() if c.client_id != "portal-sx"],  # ES256 only: no RSA key
            data_dir=data_dir,
            authenticator=FakeAuthenticator(None),
            store=MemoryIdentityStore(),
        )
        app = create_app(
            settings,
            verifier=provider.access_token_verifier(),
            oidc=provider,
            open_adapter=open_adapter,
        )
        server = TestServer(
            app, host="127.0.0.1", port=held.port, socket_factory=held.socket_factory
        )
        http = await stack.enter_async_context(TestClient(server))
        gateways.append(Gateway(http, settings))
    return gateways[0], gateways[1]


def from_address(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (another source to the gateway)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def client_credentials(
    session: aiohttp.ClientSession, gateway: Gateway, secret: str, client_id: str = "system-61"
) -> tuple[int, dict[str, Any], str | None]:
    async with session.post(
        gateway.url("/oauth2/token"),
        data={"grant_type": "client_credentials", "scope": "services:call"},
        headers={"Authorization": encode_basic_auth(client_id, secret)},
    ) as response:
        body = await response.json(content_type=None)
        return response.status, body, response.headers.get("Retry-After")


@pytest.mark.redis
async def test_guessing_a_client_secret_is_throttled_per_source_across_instances(
    tmp_path: Path, prefix: str
) -> None:
    endpoints = EndpointRateLimits(client_auth_failures="10/hour")
    async with AsyncExitStack() as stack:
        gateways = await two_gateways(stack, tmp_path, prefix, endpoints)
        attacker = await stack.enter_async_context(from_address("127.0.0.1"))
        statuses = []
        for n in range(30):
            status, body, retry_after = await client_credentials(
                attacker, gateways[n % 2], f"guess-{n:04d}"
            )
            statuses.append(status)
        assert statuses == [401] * 10 + [429] * 20
        assert body["error"] == "slow_down"
        assert retry_after is not None
        assert int(retry_after) >= 1
        # The right secret from that source waits too; from another source it works.
        assert (await client_credentials(attacker, gateways[0], SYSTEM_SECRET))[0] == 429
        portal = await stack.enter_async_context(from_address("127.0.0.2"))
        status, body, _ = await client_credentials(portal, gateways[1], SYSTEM_SECRET)
        assert status == 200, body


@pytest.mark.redis
async def test_token_endpoints_are_limited_per_client_and_per_source(
    tmp_path: Path, prefix: str
) -> None:
    endpoints = EndpointRateLimits(token_per_source="8/hour", token_per_client="5/hour")
    async with AsyncExitStack() as stack:
        one, two = await two_gateways(stack, tmp_path, prefix, endpoints)
        http = await stack.enter_async_context(from_address("127.0.0.1"))
        statuses = [
            (await client_credentials(http, (one, two)[n % 2], SYSTEM_SECRET))[0] for n in range(6)
        ]
        assert statuses == [200] * 5 + [429]  # the client's budget, counted on both
        # Another client from the same source: its own client budget, the source's is shared.
        answers = []
        for gateway in (one, two, one):
            async with http.post(
                gateway.url("/oauth2/introspect"),
                data={"token": "x" * 40},
                headers={"Authorization": encode_basic_auth("portal-other", "wrong")},
            ) as response:
                answers.append(response.status)
        assert answers == [401, 401, 429]
        # The same client from another source: still its spent client budget.
        elsewhere = await stack.enter_async_context(from_address("127.0.0.2"))
        assert (await client_credentials(elsewhere, two, SYSTEM_SECRET))[0] == 429


@pytest.mark.redis
async def test_login_pages_are_limited_per_source(tmp_path: Path, prefix: str) -> None:
    endpoints = EndpointRateLimits(login_per_source="3/hour")
    async with AsyncExitStack() as stack:
        one, two = await two_gateways(stack, tmp_path, prefix, endpoints)
        http = await stack.enter_async_context(from_address("127.0.0.1"))
        statuses = []
        for n, path in enumerate(("/login", "/login/callback/x", "/login", "/login")):
            async with http.get((one, two)[n % 2].url(path)) as response:
                statuses.append(response.status)
                last = await response.json(content_type=None)
        assert statuses[:3] != [429] * 3
        assert statuses[3] == 429
        assert last["code"] == "client.rate_limited"
        other = await stack.enter_async_context(from_address("127.0.0.3"))
        async with other.get(one.url("/login")) as response:
            assert response.status != 429


async def trail(gateway: Gateway) -> list[dict[str, Any]]:
    store = audit_store_for(gateway.settings.gateway.audit, gateway.settings.data_dir())
    await store.open()
    try:
        page = await store.query(AuditQuery(limit=500, oldest_first=True))
    finally:
        await store.aclose()
    return [json.loads(r.text) for r in page.records]


@pytest.mark.redis
async def test_anonymous_refusals_cannot_fill_the_audit_chain(tmp_path: Path, prefix: str) -> None:
    endpoints = EndpointRateLimits(
        refusal_records_per_source="5/hour",
        refusal_records_total="8/hour",
        refusal_summary_interval=0.2,
    )
    async with AsyncExitStack() as stack:
        one, two = await two_gateways(stack, tmp_path, prefix, endpoints)
        started = time.monotonic()
        for address, count in (("127.0.0.1", 40), ("127.0.0.2", 10)):
            http = await stack.enter_async_context(from_address(address))
            for n in range(count):
                gateway = (one, two)[n % 2]
                async with http.get(gateway.url("/admin/audit")) as response:
                    assert response.status == 401
                async with http.post(
                    gateway.url("/api/v1/callbacks/sys-unknown"),
                    data=b"{}",
                    headers={"X-Tongban-Timestamp": "1", "X-Tongban-Signature": "sha256=00"},
                ) as response:
                    assert response.status == 401
        await asyncio.sleep(0.5)  # a summary interval or two
        elapsed = time.monotonic() - started
    records = await trail(one) + await trail(two)
    refusals = [r for r in records if r["outcome"] == "denied"]
    single = [r for r in refusals if not (r.get("extra") or {}).get("summary")]
    summaries = [r for r in refusals if (r.get("extra") or {}).get("summary")]
    # 100 refused requests: 5 written one by one for the first source, 3 more (the total's
    # budget of 8) for the second; the rest counted in summaries, by kind.
    assert len(single) == 8
    assert sum(r["extra"]["count"] for r in summaries) == 100 - 8
    assert {r["type"] for r in summaries} == {"admin_action", "callback_received"}
    # Bounded by time, not by the refusals: at most one summary per kind, instance and interval
    # (the intervals the run lasted, however slow the machine, and the one after it).
    intervals = math.ceil(elapsed / endpoints.refusal_summary_interval) + 1
    assert len(summaries) <= 2 * 2 * intervals
    assert all(r["extra"]["sources"] in (1, 2) for r in summaries)


async def test_a_task_a_request_started_records_its_refusals_after_the_request() -> None:
    """Held records belong to their request: a task it started (and which inherits its
    context) records normally once the request is done."""
    event = AuditEvent(type=EventType.CALLBACK_RECEIVED, outcome="denied", system="sys-1")
    started: asyncio.Task[bool] | None = None
    release = asyncio.Event()

    async def later() -> bool:
        await release.wait()
        return hold(event)

    with collecting() as held:
        assert hold(event)
        started = asyncio.create_task(later())
    release.set()
    assert await started is False  # written as usual, not held by a finished request
    assert held == [event]
