"""identity_audit_middleware: identity answers wait for their buffered records' group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import StoredCheckpoint, StoredRecord
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.http.keys import STATE, GatewayState
from gateway.http.middlewares import identity_audit_middleware
from gateway.stores.memory_audit import MemoryAuditStore

COMMIT_DELAY = 0.3


class SlowStore(MemoryAuditStore):
    """Every commit takes COMMIT_DELAY seconds (a busy disk)."""

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        await asyncio.sleep(COMMIT_DELAY)
        await super().append(records, checkpoint)


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], SlowStore]]:
    store = SlowStore()
    writer = AuditWriter(
        store,
        chain="gw-a",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=WriterSettings(linger=0.0, commit_timeout=5.0),
    )
    await writer.start()

    async def token(request: web.Request) -> web.Response:
        # What the identity core does from its synchronous hooks: queue, do not await.
        writer.append_nowait(AuditEvent(type=EventType.TOKEN_ISSUED, client="portal-a"))
        return web.json_response({"access_token": "..."})

    app = web.Application(middlewares=[identity_audit_middleware])
    app[STATE] = GatewayState(audit=writer)
    app.router.add_post("/oauth2/token", token)
    app.router.add_post("/api/v1/other", token)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, store
    await writer.aclose()


async def test_an_identity_answer_leaves_after_its_record_is_committed(
    served: tuple[TestClient[web.Request, web.Application], SlowStore],
) -> None:
    client, store = served
    response = await client.post("/oauth2/token")
    assert response.status == 200
    assert [r.sequence for r in store.records_of("gw-a")] == [1], "committed before the answer"


async def test_other_paths_do_not_wait(
    served: tuple[TestClient[web.Request, web.Application], SlowStore],
) -> None:
    client, store = served
    response = await client.post("/api/v1/other")
    assert response.status == 200
    assert store.records_of("gw-a") == [], "still in the commit when the answer left"


async def test_a_store_known_to_be_down_does_not_hold_the_answer(
    served: tuple[TestClient[web.Request, web.Application], SlowStore],
) -> None:
    client, store = served
    store.available = False
    await client.post("/oauth2/token")  # this commit fails: the writer is degraded now
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post("/oauth2/token")
    assert response.status == 200
    assert loop.time() - started < COMMIT_DELAY, "no wait for a store known to be down"
    assert store.records_of("gw-a") == []
