"""One contract for every ``SessionStore``: in-memory always, Redis (127.0.0.1:6379) when marked."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gateway.identity.redis_sessions import RedisSessionStore
from gateway.identity.sessions import MemorySessionStore, SessionStore, SsoSession, handle_hash

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    # A random prefix per run: parallel runs and old keys never meet.
    redis_store = RedisSessionStore.from_url(REDIS_URL, f"tongban-test:{secrets.token_hex(8)}:")
    if not await redis_store.ping():
        await redis_store.aclose()
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    try:
        yield redis_store
    finally:
        await redis_store.aclose()


def session(sid: str = "sid-1", **changes: object) -> SsoSession:
    base = SsoSession(
        sid=sid,
        local_id="qinghai:qh-1",
        platform="qinghai",
        base_level="L2",
        level_raw="2",
        level_scale="qinghai-authlevel",
        auth_time=1_700_000_000,
        created_at=1_700_000_000.0,
        last_seen=1_700_000_000.0,
        amr=("fed",),
        claims={"name": "苏兰心"},
        clients=("portal-a",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_put_get_round_trip_and_sid_index(store: SessionStore) -> None:
    key = handle_hash("handle-1")
    await store.put_session(key, session(), 60)
    assert await store.get_session(key) == session()
    assert await store.key_for_sid("sid-1") == key
    assert await store.get_session(handle_hash("other")) is None


async def test_delete_returns_the_session_once_and_clears_the_index(store: SessionStore) -> None:
    key = handle_hash("handle-2")
    await store.put_session(key, session("sid-2"), 60)
    assert await store.delete_session(key) == session("sid-2")
    assert await store.delete_session(key) is None
    assert await store.get_session(key) is None
    assert await store.key_for_sid("sid-2") is None


async def test_rotation_moves_the_sid_to_the_new_handle(store: SessionStore) -> None:
    old, new = handle_hash("old"), handle_hash("new")
    await store.put_session(old, session("sid-3"), 60)
    await store.put_session(new, session("sid-3", base_level="L3"), 60)
    await store.delete_session(old)
    assert await store.key_for_sid("sid-3") == new
    found = await store.get_session(new)
    assert found is not None
    assert found.base_level == "L3"


async def test_sessions_and_pending_logins_expire(store: SessionStore) -> None:
    key = handle_hash("short")
    await store.put_session(key, session("sid-4"), 0.05)
    await store.put_pending("p-1", {"a": "1"}, 0.05)
    await asyncio.sleep(0.2)
    assert await store.get_session(key) is None
    assert await store.get_pending("p-1") is None


async def test_take_pending_is_one_time(store: SessionStore) -> None:
    await store.put_pending("p-2", {"state": "s", "nonce": "n"}, 60)
    assert await store.get_pending("p-2") == {"state": "s", "nonce": "n"}
    taken = await asyncio.gather(store.take_pending("p-2"), store.take_pending("p-2"))
    assert sorted(taken, key=lambda t: t is None) == [{"state": "s", "nonce": "n"}, None]
    assert await store.get_pending("p-2") is None


async def test_ping(store: SessionStore) -> None:
    assert await store.ping() is True
