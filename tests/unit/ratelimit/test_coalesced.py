"""Draws of calls in flight together, sent in one store step: each call's answer as alone.

On the real Redis: a draw that comes while another is on the wire waits and goes with the
others queued meanwhile in one script run. Each call's answer is held to what the same calls
drawn one at a time, in the same order, answer under another prefix (moved through the same
window edges by shortening the keys' TTLs, as in test_redis_storage.py). The steps are seen by
wrapping the script: how many calls each carried, and when it was sent. A step is held on the
wire, where a test needs one in flight, by a gate in that wrapper.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.principal import Principal
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.draws import Drawn
from gateway.ratelimit.limiter import ApiRateLimiter
from gateway.ratelimit.redis_storage import Draws, RedisBudgetStorage
from tests.unit.ratelimit.redis_time import AGE, hours

REDIS_URL = "redis://127.0.0.1:6379/0"


class Wire:
    """The script of a storage, wrapped: each step's number of calls, an optional gate that
    holds a step on the wire, and an optional error in place of Redis's answer."""

    def __init__(self, storage: RedisBudgetStorage) -> None:
        self.script = storage._acquire_all
        self.steps: list[int] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        storage._acquire_all = self  # type: ignore[assignment]

    async def __call__(self, keys: list[str], args: list[int]) -> Any:
        self.steps.append(args[0])  # ARGV[1]: the calls in this step
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await self.script(keys, args)


def storage(prefix: str, name: str) -> RedisBudgetStorage:
    return RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=f"{prefix}:{name}")


async def close(*storages: RedisBudgetStorage) -> None:
    for each in storages:
        await each.bridge.storage.aclose()  # type: ignore[attr-defined]


Call = list[tuple[str, int, int, int]]
"""One call's budgets: (key, limit, window seconds, units wanted), in order."""


def as_draws(store: RedisBudgetStorage, call: Call) -> list[tuple[list[str], int, int, int]]:
    return [(store.window_keys(key), limit, window, wanted) for key, limit, window, wanted in call]


def same(together: Drawn, alone: Drawn) -> None:
    assert together.granted == alone.granted
    if alone.window is None:
        assert together.window is None
        return
    assert together.window is not None
    assert (together.window[0], together.window[2]) == (alone.window[0], alone.window[2])
    assert together.window[1] == pytest.approx(alone.window[1], abs=1.0)
    assert together.window[3] == pytest.approx(alone.window[3], abs=1.0)


@pytest.mark.redis
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_calls_drawn_together_get_the_answers_they_get_alone(prefix: str, seed: int) -> None:
    together, alone = storage(prefix, "together"), storage(prefix, "alone")
    wire = Wire(together)
    rng = random.Random(seed)
    budgets = [("a", 4, 3600), ("b", 6, 7200), ("c", 9, 10800), ("d", 30, 3600)]
    refused = 0
    async with Redis.from_url(REDIS_URL) as client:
        age = client.register_script(AGE)
        try:
            for _ in range(40):
                jump = rng.choice([0, 0, 0, 1000, hours(1), hours(2), hours(5)])
                if jump:
                    await age(args=[f"{prefix}:*", jump])
                calls: list[Call] = []
                for _ in range(rng.randint(1, 12)):
                    chosen = rng.sample(budgets, rng.randint(1, 3))
                    calls.append(
                        [
                            (key, limit, window, rng.choice([1, 1, 1, 3]))
                            for key, limit, window in chosen
                        ]
                    )
                # Started together: the first goes alone, the others wait and go in one step.
                answers = await asyncio.gather(
                    *(together.acquire_all(as_draws(together, call)) for call in calls)
                )
                for call, answer in zip(calls, answers, strict=True):
                    on_its_own = await alone.acquire_all(as_draws(alone, call))
                    same(answer, on_its_own)
                    refused += on_its_own.window is not None
        finally:
            await close(together, alone)
    assert max(wire.steps) > 1  # calls did go together
    assert refused > 10  # and budgets ran out among them


@pytest.mark.redis
async def test_a_call_in_a_shared_step_stops_at_its_own_refusal(prefix: str) -> None:
    """Budgets of one call stay in order and atomic inside a shared step: a refusal ends that
    call's draws only, and a later call sees what the earlier ones drew."""
    store = storage(prefix, "order")
    wire = Wire(store)
    person = store.window_keys("person")
    portal = store.window_keys("portal")
    other = store.window_keys("other-person")
    wire.gate = asyncio.Event()
    try:
        first = asyncio.ensure_future(store.acquire_all([(portal, 10, 3600, 1)]))
        await asyncio.sleep(0)
        assert wire.steps == [1]  # on the wire, held
        queued = [
            asyncio.ensure_future(store.acquire_all(call))
            for call in (
                [(person, 1, 3600, 1), (portal, 10, 3600, 4)],
                [(person, 1, 3600, 1), (portal, 10, 3600, 4)],  # the person is spent
                [(other, 1, 3600, 1), (portal, 10, 3600, 4)],  # the portal has 5 left
                [(portal, 10, 3600, 4)],  # and then 1
            )
        ]
        await asyncio.sleep(0)
        wire.gate.set()
        assert (await first).granted == [1]
        granted = [(await call).granted for call in queued]
        assert granted == [[1, 4], [0], [1, 4], [1]]
        assert wire.steps == [1, 4]
        assert (await store.get_sliding_window("portal", 3600))[2] == 10
        assert (await store.get_sliding_window("person", 3600))[2] == 1
    finally:
        await close(store)


@pytest.mark.redis
async def test_a_lone_draw_is_sent_at_once(prefix: str) -> None:
    """Nothing else in flight: the draw is on the wire before its caller yields to the loop
    once, alone in its step (no timer, no waiting for company)."""
    store = storage(prefix, "lone")
    wire = Wire(store)
    draws = [(store.window_keys("portal"), 10, 3600, 1)]
    try:
        for n in range(3):
            task = asyncio.ensure_future(store.acquire_all(draws))
            await asyncio.sleep(0)  # the task's first step: up to the wire
            assert wire.steps == [1] * (n + 1)
            assert (await task).granted == [1]
        assert store._sender is None  # nothing queued, no task left behind
    finally:
        await close(store)


async def held_with_queue(
    store: RedisBudgetStorage, wire: Wire, draws: Draws, queued: int
) -> tuple[asyncio.Event, asyncio.Task[Drawn], list[asyncio.Task[Drawn]]]:
    """A lone draw's step held on the wire until the returned gate is set, then ``queued``
    calls of the same draws waiting behind it for the next step."""
    wire.gate = gate = asyncio.Event()
    first = asyncio.ensure_future(store.acquire_all(draws))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(store.acquire_all(draws)) for _ in range(queued)]
    await asyncio.sleep(0)
    return gate, first, waiting


@pytest.mark.redis
async def test_a_failed_step_reaches_every_call_waiting_on_it(prefix: str) -> None:
    store = storage(prefix, "failing")
    wire = Wire(store)
    draws = [(store.window_keys("portal"), 100, 3600, 1)]
    try:
        gate, first, waiting = await held_with_queue(store, wire, draws, 5)
        wire.fail = RedisConnectionError("connection reset")
        gate.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert wire.steps == [1, 5]
        for result in results:
            assert isinstance(result, StorageError)
            assert isinstance(result.storage_error, RedisConnectionError)
        assert len({id(result) for result in results}) == len(results)  # each its own
        # Redis back: the next draw goes alone, and at once.
        wire.fail = None
        assert (await store.acquire_all(draws)).granted == [1]
        assert wire.steps == [1, 5, 1]
    finally:
        await close(store)


@pytest.mark.redis
async def test_a_caller_gone_before_its_step_draws_nothing(prefix: str) -> None:
    store = storage(prefix, "gone")
    wire = Wire(store)
    draws = [(store.window_keys("portal"), 100, 3600, 1)]
    try:
        gate, first, waiting = await held_with_queue(store, wire, draws, 3)
        waiting[1].cancel()
        gate.set()
        assert (await first).granted == [1]
        assert (await waiting[0]).granted == [1]
        assert (await waiting[2]).granted == [1]
        assert wire.steps == [1, 2]
        assert (await store.get_sliding_window("portal", 3600))[2] == 3
    finally:
        await close(store)


def citizen(person: str) -> Principal:
    return Principal(subject=f"sub-{person}", level="L2", client_id="portal-a", person=person)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def open_limiter(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[ApiRateLimiter]]]:
    """Limiters ("processes") on one SQLite file or one Redis prefix."""
    prefix = f"tongban-test:{secrets.token_hex(8)}"
    opened: list[ApiRateLimiter] = []

    async def open_() -> ApiRateLimiter:
        settings = RateLimitSettings.model_validate(
            {
                "store": request.param,
                "redis_prefix": f"{prefix}:rl:",
                "client": "10/hour",  # below 100 units: never leased, every call a store step
                "person": "2/hour",
                "store_timeout": 5,  # a busy test machine must not make a call fail open
            }
        )
        limiter = ApiRateLimiter.from_settings(settings, redis_url=REDIS_URL, data_dir=tmp_path)
        opened.append(limiter)
        return limiter

    try:
        yield open_
    finally:
        for limiter in opened:
            await limiter.aclose()
        if request.param == "redis":
            async with Redis.from_url(REDIS_URL) as client:
                async for key in client.scan_iter(match=f"{prefix}*"):
                    await client.delete(key)


async def test_many_concurrent_callers_never_get_more_than_the_budget(
    open_limiter: Callable[[], Awaitable[ApiRateLimiter]],
) -> None:
    """Three processes, 90 calls of 45 persons (2 each, their budget) started at once: the
    portal's 10, exactly (no block is leased on so small a budget, so none is lost)."""
    limiters = [await open_limiter() for _ in range(3)]
    calls = [(limiters[n % 3], citizen(f"p{n % 45}")) for n in range(90)]
    verdicts = await asyncio.gather(*(limiter.check(who) for limiter, who in calls))
    assert all(verdict.checked for verdict in verdicts)
    admitted = [
        who.owner for (_, who), verdict in zip(calls, verdicts, strict=True) if verdict.allowed
    ]
    assert len(admitted) == 10
    assert max(admitted.count(owner) for owner in set(admitted)) <= 2
    refused = [verdict for verdict in verdicts if not verdict.allowed]
    assert {verdict.refused_by.scope for verdict in refused if verdict.refused_by} == {"client"}
    assert all(verdict.retry_after >= 1 for verdict in refused)
    # A person's budget counted the calls the portal refused: a third call is hers to refuse.
    again = await limiters[0].check(citizen("p0"))
    assert again.refused_by is not None
    assert again.refused_by.scope == "person"


@pytest.mark.redis
async def test_a_failed_shared_step_lets_every_waiting_call_through_unchecked(
    prefix: str,
) -> None:
    """The limiter's fail-open rules, unchanged: every call of the failed step goes through
    unchecked, and the breaker then spares the store."""
    settings = RateLimitSettings.model_validate(
        {"store": "redis", "redis_prefix": f"{prefix}:rl:", "client": "10/hour", "person": None}
    )
    limiter = ApiRateLimiter.from_settings(settings, redis_url=REDIS_URL)
    assert limiter._redis is not None
    wire = Wire(limiter._redis)
    wire.gate = asyncio.Event()
    wire.fail = RedisConnectionError("connection reset")
    machine = Principal(subject="system-a", level="system", client_id="portal-a")
    try:
        first = asyncio.ensure_future(limiter.check(machine))
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(limiter.check(machine)) for _ in range(4)]
        await asyncio.sleep(0)
        wire.gate.set()
        verdicts = await asyncio.gather(first, *waiting)
        assert wire.steps == [1, 4]
        assert [(verdict.allowed, verdict.checked) for verdict in verdicts] == [(True, False)] * 5
        assert not limiter.healthy
        assert not (await limiter.check(machine)).checked  # the breaker: no step at all
        assert wire.steps == [1, 4]
    finally:
        await limiter.aclose()
