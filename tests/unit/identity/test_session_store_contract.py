"""One contract for every ``SessionStore``: in-memory and SQLite always, Redis (127.0.0.1:6379)
when marked. What only the SQLite store promises is in test_sqlite_sessions.py."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.identity.redis_sessions import RedisSessionStore
from gateway.identity.sessions import MemorySessionStore, SessionStore, SsoSession, handle_hash
from gateway.identity.sqlite_sessions import FILE_NAME, SqliteSessionStore

REDIS_URL = "redis://127.0.0.1:6379/0"

OpenStore = Callable[[float], Awaitable[SessionStore]]
"""Another handle on the test's store with the given grace (Redis: another instance's client;
SQLite: another connection to the same file)."""


class Clock:
    """Wall time plus an offset the test moves: deadlines pass without waiting, real TTLs run."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def open_store(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[OpenStore]:
    # A random prefix per run: parallel runs and old keys never meet.
    prefix = f"tongban-test:{secrets.token_hex(8)}:"
    opened: list[SessionStore] = []
    memory: dict[float, MemorySessionStore] = {}

    async def open_(grace: float = 60.0) -> SessionStore:
        if request.param == "memory":
            # One process, one store: a second "instance" is the same dictionaries.
            return memory.setdefault(grace, MemorySessionStore(clock=clock, grace=grace))
        if request.param == "sqlite":
            sqlite_store = SqliteSessionStore(tmp_path / FILE_NAME, clock=clock, grace=grace)
            opened.append(sqlite_store)
            return sqlite_store
        redis_store = RedisSessionStore.from_url(REDIS_URL, prefix, clock=clock, grace=grace)
        opened.append(redis_store)
        if not await redis_store.ping():
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        return redis_store

    try:
        yield open_
    finally:
        for opened_store in opened:
            await opened_store.aclose()
        if opened and request.param == "redis":
            # The deadline index has no TTL of its own: leave nothing behind.
            async with Redis.from_url(REDIS_URL) as redis:
                async for name in redis.scan_iter(match=f"{prefix}*"):
                    await redis.delete(name)


@pytest.fixture
async def store(open_store: OpenStore) -> SessionStore:
    return await open_store(60.0)


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


async def test_claim_once_holds_across_instances_until_it_expires(
    open_store: OpenStore,
) -> None:
    first, second = await open_store(60.0), await open_store(60.0)
    claims = await asyncio.gather(*(s.claim_once("used:t-1", 60) for s in (first, second) * 3))
    assert sorted(claims) == [False] * 5 + [True], "one claim wins, whichever instance"
    assert await second.claim_once("used:t-2", 60) is True
    assert await first.claim_once("used:t-short", 0.05) is True
    await asyncio.sleep(0.2)
    assert await second.claim_once("used:t-short", 60) is True, "an expired claim is free again"
    assert await first.claim_once("used:t-short", 60) is False
    assert await first.get_pending("used:t-1") is None, "claims are not pending logins"


async def test_ping(store: SessionStore) -> None:
    assert await store.ping() is True


# --- deadlines, the grace and claims ---------------------------------------------------------


async def test_past_its_deadline_a_session_is_absent_but_can_still_be_ended(
    store: SessionStore, clock: Clock
) -> None:
    key = handle_hash("deadline")
    await store.put_session(key, session("sid-5"), 600)
    clock.advance(599)
    assert await store.get_session(key) == session("sid-5")
    assert await store.key_for_sid("sid-5") == key
    assert await store.claim_expired(clock(), 10) == []
    clock.advance(2)
    assert await store.get_session(key) is None, "no authentication past the deadline"
    assert await store.key_for_sid("sid-5") is None
    # Within the grace whoever ends it still reads it, once.
    assert await store.delete_session(key) == session("sid-5")
    assert await store.delete_session(key) is None


async def test_storing_again_moves_the_deadline(store: SessionStore, clock: Clock) -> None:
    key = handle_hash("active")
    await store.put_session(key, session("sid-6"), 900)
    clock.advance(800)
    await store.put_session(key, session("sid-6", last_seen=clock()), 900)  # used again
    clock.advance(800)
    assert await store.get_session(key) is not None
    assert await store.claim_expired(clock(), 10) == []
    clock.advance(101)
    assert await store.claim_expired(clock(), 10) == [key]


async def test_a_claim_hands_out_each_expired_key_once_earliest_first(
    store: SessionStore, clock: Clock
) -> None:
    keys = [handle_hash(f"h-{i}") for i in range(5)]
    for i, key in enumerate(keys):
        await store.put_session(key, session(f"sid-c{i}"), 100 + 10 * i)
    await store.put_session(handle_hash("later"), session("sid-later"), 1000)
    clock.advance(150)  # past every deadline but the last, within the grace
    assert await store.claim_expired(clock(), 2) == keys[:2]
    assert await store.claim_expired(clock(), 10) == keys[2:]
    assert await store.claim_expired(clock(), 10) == []
    # A claimed session is no longer authenticated, and its claimer can still end it.
    assert await store.get_session(keys[0]) is None
    assert await store.delete_session(keys[0]) == session("sid-c0")


async def test_a_session_ended_by_logout_is_never_claimed(
    store: SessionStore, clock: Clock
) -> None:
    key = handle_hash("logged-out")
    await store.put_session(key, session("sid-7"), 60)
    assert await store.delete_session(key) is not None
    clock.advance(120)
    assert await store.claim_expired(clock(), 10) == []


async def test_rotation_leaves_only_the_new_handle_to_claim(
    store: SessionStore, clock: Clock
) -> None:
    old, new = handle_hash("old-r"), handle_hash("new-r")
    await store.put_session(old, session("sid-8"), 60)
    await store.delete_session(old)  # step-up: the old handle goes, the session goes on
    await store.put_session(new, session("sid-8"), 60)
    clock.advance(61)
    assert await store.claim_expired(clock(), 10) == [new]


async def test_two_instances_claiming_at_once_never_get_the_same_key(
    open_store: OpenStore, clock: Clock
) -> None:
    first, second = await open_store(60.0), await open_store(60.0)
    keys = {handle_hash(f"many-{i}") for i in range(60)}
    for i, key in enumerate(sorted(keys)):
        await first.put_session(key, session(f"sid-m{i}"), 30)
    clock.advance(31)

    async def drain(claimer: SessionStore) -> list[str]:
        got: list[str] = []
        while batch := await claimer.claim_expired(clock(), 7):
            got += batch
            await asyncio.sleep(0)
        return got

    won = await asyncio.gather(drain(first), drain(second), drain(first), drain(second))
    claimed = [key for batch in won for key in batch]
    assert sorted(claimed) == sorted(keys), "every expired key once, none twice"


async def test_after_the_grace_the_data_is_gone_but_the_key_is_still_claimed(
    open_store: OpenStore,
) -> None:
    store = await open_store(0.1)
    key = handle_hash("lost")
    await store.put_session(key, session("sid-9"), 0.05)
    await asyncio.sleep(0.4)
    # The claimer learns the session expired unseen, though nothing is left to end.
    assert await store.claim_expired(time.time(), 10) == [key]
    assert await store.delete_session(key) is None
