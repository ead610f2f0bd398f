"""Ending expired SSO sessions (sso.py): the sweeper, ``current`` at the deadline, several instances.

No provider here (the flow test tests/flows/test_sso_session_expiry.py covers grants, back-channel
logout and audit over HTTP): what ended, when, why and how often is read from the log events.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import structlog.testing
from redis.asyncio import Redis

from gateway.identity.config import SessionSettings
from gateway.identity.redis_sessions import RedisSessionStore
from gateway.identity.sessions import MemorySessionStore, SessionStore, SsoSession, handle_hash
from gateway.identity.sso import SessionAuthenticator

REDIS_URL = "redis://127.0.0.1:6379/0"
SETTINGS = SessionSettings(idle_timeout=900, absolute_timeout=1800, sweep_interval=0.02)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def instances(
    request: pytest.FixtureRequest, clock: Clock
) -> AsyncIterator[tuple[SessionAuthenticator, SessionAuthenticator]]:
    """Two gateway instances sharing one session store (memory: one process, one store)."""
    prefix = f"tongban-test:{secrets.token_hex(8)}:"
    stores: list[SessionStore] = []
    if request.param == "memory":
        stores = [MemorySessionStore(clock=clock)] * 2
    else:
        stores = [RedisSessionStore.from_url(REDIS_URL, prefix, clock=clock) for _ in range(2)]
        if not await stores[0].ping():
            for store in stores:
                await store.aclose()
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    first, second = (
        SessionAuthenticator(SETTINGS, store, {}, issuer="http://127.0.0.1:1", clock=clock)
        for store in stores
    )
    try:
        yield first, second
    finally:
        if request.param == "redis":
            for store in stores:
                await store.aclose()
            async with Redis.from_url(REDIS_URL) as redis:
                async for name in redis.scan_iter(match=f"{prefix}*"):
                    await redis.delete(name)


async def signed_in(authenticator: SessionAuthenticator, sid: str) -> dict[str, str]:
    """A session as a login leaves it; the browser's Cookie header."""
    now = authenticator.clock()
    session = SsoSession(
        sid=sid,
        local_id="qinghai:qh-1",
        platform="qinghai",
        base_level="L2",
        level_raw="2",
        level_scale="qinghai-authlevel",
        auth_time=int(now),
        created_at=now,
        last_seen=now,
        clients=("portal-a",),
    )
    handle = secrets.token_urlsafe(32)
    ttl = authenticator.deadline(session) - now
    await authenticator.store.put_session(handle_hash(handle), session, ttl)
    return {"Cookie": f"{SETTINGS.cookie_name}={handle}"}


def ended(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "sso_session_ended"]


async def test_the_sweeper_ends_idle_sessions_whose_browser_never_returns(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    gateway, _ = instances
    await signed_in(gateway, "sid-idle")
    clock.advance(899)
    assert await gateway.sweep_expired() == 0
    clock.advance(2)
    with structlog.testing.capture_logs() as logs:
        assert await gateway.sweep_expired() == 1
        assert await gateway.sweep_expired() == 0
    assert ended(logs) == ["idle_timeout"]


async def test_an_active_session_is_swept_at_its_absolute_timeout(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    gateway, _ = instances
    browser = await signed_in(gateway, "sid-active")
    for _ in range(2):  # used every 800 s: the store learns each new deadline
        clock.advance(800)
        found = await gateway.current(browser)
        assert found is not None
        key, session = found
        session = session.with_client("portal-b", clock())
        await gateway.store.put_session(key, session, gateway.deadline(session) - clock())
    clock.advance(199)
    assert await gateway.sweep_expired() == 0
    clock.advance(2)  # 1801 s after the login, 201 s after the last use
    with structlog.testing.capture_logs() as logs:
        assert await gateway.sweep_expired() == 1
    assert ended(logs) == ["absolute_timeout"]
    assert await gateway.current(browser) is None


async def test_two_instances_sweeping_at_once_end_each_session_once(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    first, second = instances
    for i in range(250):  # more than one claim batch
        await signed_in(first, f"sid-{i}")
    clock.advance(901)
    with structlog.testing.capture_logs() as logs:
        counts = await asyncio.gather(
            first.sweep_expired(), second.sweep_expired(), first.sweep_expired()
        )
    assert sum(counts) == 250
    assert ended(logs) == ["idle_timeout"] * 250


async def test_a_session_ended_by_logout_is_not_swept_again(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    gateway, other = instances
    browser = await signed_in(gateway, "sid-logout")
    found = await gateway.current(browser)
    assert found is not None
    assert await gateway.end_session(found[0]) is True
    clock.advance(3600)
    with structlog.testing.capture_logs() as logs:
        assert await other.sweep_expired() == 0
    assert ended(logs) == []


async def test_current_ends_a_session_past_the_deadline_of_the_settings_now_in_force(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    gateway, _ = instances
    browser = await signed_in(gateway, "sid-reconfigured")
    # Restarted with a shorter idle timeout: the stored deadline is later than the new one.
    gateway.settings = SETTINGS.model_copy(update={"idle_timeout": 300})
    clock.advance(301)
    with structlog.testing.capture_logs() as logs:
        assert await gateway.current(browser) is None
        assert await gateway.sweep_expired() == 0
    assert ended(logs) == ["idle_timeout"]


async def test_a_session_whose_data_outlived_the_grace_is_counted_as_lost(clock: Clock) -> None:
    store = MemorySessionStore(clock=clock, grace=60)
    gateway = SessionAuthenticator(SETTINGS, store, {}, issuer="http://127.0.0.1:1", clock=clock)
    await signed_in(gateway, "sid-lost")
    clock.advance(900 + 61)  # every instance was down for longer than the grace
    with structlog.testing.capture_logs() as logs:
        assert await gateway.sweep_expired() == 0
    assert [(e["count"], e["lost"]) for e in logs if e["event"] == "sso_sessions_swept"] == [(0, 1)]


async def test_the_periodic_sweeper_runs_until_stopped(clock: Clock) -> None:
    gateway = SessionAuthenticator(
        SETTINGS, MemorySessionStore(clock=clock), {}, issuer="http://127.0.0.1:1", clock=clock
    )
    browser = await signed_in(gateway, "sid-periodic")
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        sweeper = asyncio.create_task(gateway.sweep_forever(stop))
        await asyncio.sleep(0.05)
        assert ended(logs) == []
        clock.advance(901)
        for _ in range(100):
            if ended(logs):
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(sweeper, 1)
    assert ended(logs) == ["idle_timeout"]
    assert await gateway.current(browser) is None


async def test_a_session_whose_ending_failed_is_ended_by_the_next_sweep(
    instances: tuple[SessionAuthenticator, SessionAuthenticator],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: the first attempt to revoke / audit / queue fails after the session left
    the store. It must come back as due, not vanish with its portals never told."""
    first, _ = instances
    await signed_in(first, "sid-retry")
    clock.advance(901)
    real = first._finish_ending
    attempts = 0

    async def flaky(*args: Any) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("the back-channel queue is unavailable")
        await real(*args)

    monkeypatch.setattr(first, "_finish_ending", flaky)
    with structlog.testing.capture_logs() as logs:
        assert await first.sweep_expired() == 0, "the failed attempt ends nothing"
        assert await first.sweep_expired() == 1, "the next sweep ends it"
        assert await first.sweep_expired() == 0
    assert attempts == 2
    assert ended(logs) == ["idle_timeout"]
    assert [e["event"] for e in logs].count("sso_session_end_incomplete") == 1


async def test_a_session_that_ends_takes_its_releasable_attributes_with_it(
    instances: tuple[SessionAuthenticator, SessionAuthenticator], clock: Clock
) -> None:
    gateway, _ = instances
    await signed_in(gateway, "sid-attrs")
    # As a login leaves it (sso.py): what the legacy faces may release, for the session's sake.
    await gateway.store.put_pending("attrs:sid-attrs", {"name": "x"}, SETTINGS.absolute_timeout)
    clock.advance(901)
    assert await gateway.sweep_expired() == 1
    # Not kept for the rest of the absolute timeout (hours) after the session is gone.
    assert await gateway.store.get_pending("attrs:sid-attrs") is None
