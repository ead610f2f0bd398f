"""When the rate-limit store fails, calls go through unchecked (fail open), and it is said once.

Real failures on loopback: a port nobody listens on (refused at once) and a server that accepts
and never answers (the ``store_timeout`` bounds the wait). Recovery uses a memory store that can
be switched off, since a real Redis cannot be stopped from a test.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import unused_port
from limits.aio.storage import MemoryStorage
from limits.errors import StorageError

from gateway.principal import Principal
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.limiter import ApiRateLimiter
from gateway.ratelimit.memory_storage import LocalMemoryStorage, Window

CITIZEN = Principal(subject="sub-1", level="L2", client_id="portal-a", person="p1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SwitchableStorage(MemoryStorage):
    """A memory store that fails like an unreachable Redis while ``down``, or waits on ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.gate: asyncio.Event | None = None
        self.draws = 0

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        self.draws += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StorageError(ConnectionError("store down"))
        return await super().acquire_sliding_window_entry(key, limit, expiry, amount)


def redis_settings(url: str, **changes: object) -> RateLimitSettings:
    return RateLimitSettings.model_validate(
        {"store": "redis", "redis_url": url, "person": "1/hour", "client": None, **changes}
    )


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A loopback server that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_redis_fails_open_logs_once_and_pauses() -> None:
    clock = FakeClock()
    settings = redis_settings(f"redis://127.0.0.1:{unused_port()}/0", retry_interval=5)
    limiter = ApiRateLimiter.from_settings(settings, clock=clock)
    try:
        with structlog.testing.capture_logs() as logs:
            # The budget is 1/hour: were these counted, the second would be refused.
            first = await limiter.check(CITIZEN)
            second = await limiter.check(CITIZEN)
            clock.now += 6  # the pause is over: one call probes Redis again, still down
            third = await limiter.check(CITIZEN)
        for verdict in (first, second, third):
            assert verdict.allowed
            assert not verdict.checked
        assert [b.scope for b in first.budgets] == ["person"]
        failed = [e for e in logs if e["event"] == "rate_limit_store_failed"]
        assert len(failed) == 1
        assert failed[0]["log_level"] == "warning"
        assert failed[0]["error_code"] == "ConnectionError"
        assert not limiter.healthy
    finally:
        await limiter.aclose()


async def test_a_silent_redis_costs_at_most_the_store_timeout(silent_server: str) -> None:
    limiter = ApiRateLimiter.from_settings(redis_settings(silent_server, store_timeout=0.1))
    try:
        started = time.perf_counter()
        verdict = await limiter.check(CITIZEN)
        waited = time.perf_counter() - started
        assert verdict.allowed
        assert not verdict.checked
        assert waited < 1.0
        # Paused: the next call does not wait at all.
        started = time.perf_counter()
        assert not (await limiter.check(CITIZEN)).checked
        assert time.perf_counter() - started < 0.05
    finally:
        await limiter.aclose()


async def test_the_store_coming_back_is_used_again_and_said() -> None:
    clock = FakeClock()
    storage = SwitchableStorage()
    settings = RateLimitSettings(person="2/hour", client=None, retry_interval=5)
    limiter = ApiRateLimiter(storage, settings, clock=clock)
    storage.down = True
    with structlog.testing.capture_logs() as logs:
        assert not (await limiter.check(CITIZEN)).checked
        storage.down = False
        assert not (await limiter.check(CITIZEN)).checked, "asked again before the pause ended"
        assert storage.draws == 1
        clock.now += 5
        verdicts = [await limiter.check(CITIZEN) for _ in range(3)]
    assert [(v.allowed, v.checked) for v in verdicts] == [(True, True), (True, True), (False, True)]
    assert limiter.healthy
    assert [e["event"] for e in logs] == ["rate_limit_store_failed", "rate_limit_store_recovered"]


async def test_a_cancelled_probe_does_not_leave_the_limiter_unchecked_for_good() -> None:
    clock = FakeClock()
    storage = SwitchableStorage()
    limiter = ApiRateLimiter(
        storage, RateLimitSettings(person="5/hour", client=None, retry_interval=5), clock=clock
    )
    storage.down = True
    assert not (await limiter.check(CITIZEN)).checked
    storage.down = False
    clock.now += 5
    storage.gate = asyncio.Event()
    probe = asyncio.create_task(limiter.check(CITIZEN))
    await asyncio.sleep(0)  # the probe is waiting on the store
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    storage.gate = None
    assert (await limiter.check(CITIZEN)).checked


class FailingLocalStorage(LocalMemoryStorage):
    """The in-process counters (drawn without awaiting), failing while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def acquire_now(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if self.down:
            raise StorageError(ConnectionError("counters broken"))
        return super().acquire_now(key, limit, expiry, amount)

    def draw_each(self, windows: Sequence[Window]) -> int:
        if self.down:
            raise StorageError(ConnectionError("counters broken"))
        return super().draw_each(windows)


async def test_the_in_process_counters_keep_the_guard_of_every_store() -> None:
    """The in-process path draws without a coroutine per step; a failure there still lets the
    call through unchecked and pauses the store, and a spent budget is still refused after
    calls that were let through (their verdict shared, not made per call)."""
    clock = FakeClock()
    storage = FailingLocalStorage()
    settings = RateLimitSettings(person="2/hour", client=None, retry_interval=5)
    limiter = ApiRateLimiter(storage, settings, clock=clock)
    first, second = await limiter.check(CITIZEN), await limiter.check(CITIZEN)
    assert first == second
    assert first.allowed
    assert first.checked
    assert [b.scope for b in first.budgets] == ["person"]
    third = await limiter.check(CITIZEN)
    assert third.refused_by is not None
    assert third.retry_after >= 1
    other = Principal(subject="sub-2", level="L2", client_id="portal-a", person="p2")
    storage.down = True
    with structlog.testing.capture_logs() as logs:
        assert not (await limiter.check(other)).checked
        storage.down = False
        assert not (await limiter.check(other)).checked, "asked again before the pause ended"
        clock.now += 6
        assert (await limiter.check(other)).checked
    assert [e["event"] for e in logs] == ["rate_limit_store_failed", "rate_limit_store_recovered"]
    assert (await limiter.check(CITIZEN)).refused_by is not None, "still spent"


async def test_a_locked_sqlite_file_fails_open_logs_once_and_pauses(tmp_path: Path) -> None:
    """The SQLite step runs on the loop without a coroutine or timeout of its own: a file
    another process holds locked past the store timeout (its busy timeout) still lets the call
    through unchecked, said once, and pauses the store until ``retry_interval`` has passed."""
    clock = FakeClock()
    settings = RateLimitSettings.model_validate(
        {
            "store": "sqlite",
            "person": "1/hour",
            "client": None,
            "store_timeout": 0.05,
            "retry_interval": 5,
        }
    )
    limiter = ApiRateLimiter.from_settings(settings, data_dir=tmp_path, clock=clock)
    other = sqlite3.connect(tmp_path / "ratelimits.sqlite", isolation_level=None)
    try:
        assert (await limiter.check(CITIZEN)).checked  # the budget's one call
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        with structlog.testing.capture_logs() as logs:
            first = await limiter.check(CITIZEN)
            other.execute("COMMIT")
            second = await limiter.check(CITIZEN)  # paused: the store is not asked
            clock.now += 6
            third = await limiter.check(CITIZEN)
        assert (first.allowed, first.checked) == (True, False)
        assert (second.allowed, second.checked) == (True, False)
        assert third.checked
        assert third.refused_by is not None, "the budget counted before the outage"
        assert [e["event"] for e in logs] == [
            "rate_limit_store_failed",
            "rate_limit_store_recovered",
        ]
        assert logs[0]["error_code"] == "OperationalError"
    finally:
        other.close()
        await limiter.aclose()
