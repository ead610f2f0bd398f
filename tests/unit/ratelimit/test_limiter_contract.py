"""One contract for the /api rate limiter: memory and SQLite always, Redis (127.0.0.1:6379)
when marked. On SQLite a second limiter on the same prefix is a second connection to the same
file, as a second worker process would open it.

The ``limits`` library takes no clock, so windows are real: budgets that must not recover
during a test are per hour, and the one recovery test waits its ~1 s window out.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.identity.clients import ClientRegistration
from gateway.principal import Principal
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.limiter import ApiRateLimiter, Verdict, person_partition

REDIS_URL = "redis://127.0.0.1:6379/0"

OpenLimiter = Callable[..., Awaitable[ApiRateLimiter]]
"""Another limiter on the test's store: ``open_limiter(clients=..., prefix=..., **settings)``."""


def citizen(person: str, client: str = "portal-a") -> Principal:
    return Principal(subject=f"sub-{person}-{client}", level="L2", client_id=client, person=person)


def machine(client: str = "system-a") -> Principal:
    return Principal(subject=client, level="system", client_id=client)


def registration(client_id: str, **rates: str) -> ClientRegistration:
    return ClientRegistration.model_validate(
        {
            "client_id": client_id,
            "type": "confidential",
            "client_secret": SecretStr("s" * 16),
            "grant_types": ["client_credentials"],
            "rate_limits": rates,
        }
    )


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def open_limiter(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OpenLimiter]:
    # A random prefix per run: parallel runs and old keys never meet.
    run_prefix = f"tongban-test:{secrets.token_hex(8)}:"
    opened: list[ApiRateLimiter] = []
    memory: dict[str, ApiRateLimiter] = {}

    async def open_(
        clients: tuple[ClientRegistration, ...] = (), prefix: str = "rl:", **settings: Any
    ) -> ApiRateLimiter:
        config = RateLimitSettings.model_validate(
            {"store": request.param, "redis_prefix": run_prefix + prefix, **settings}
        )
        if request.param == "memory" and prefix in memory:
            return memory[prefix]  # one process, one store: a second "instance" is the same
        data_dir = tmp_path / prefix.replace(":", "_")
        data_dir.mkdir(exist_ok=True)
        limiter = ApiRateLimiter.from_settings(
            config, clients, redis_url=REDIS_URL, data_dir=data_dir
        )
        opened.append(limiter)
        memory[prefix] = limiter
        if request.param == "redis":
            async with Redis.from_url(REDIS_URL) as redis:
                try:
                    await redis.ping()
                except RedisError:
                    pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        return limiter

    try:
        yield open_
    finally:
        for limiter in opened:
            await limiter.aclose()
        if request.param == "redis":
            async with Redis.from_url(REDIS_URL) as redis:
                async for name in redis.scan_iter(match=f"{run_prefix}*"):
                    await redis.delete(name)


async def draw(limiter: ApiRateLimiter, principal: Principal, times: int) -> list[Verdict]:
    return [await limiter.check(principal) for _ in range(times)]


async def test_allowed_up_to_the_rate_then_refused_with_a_retry_after(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter(person="3/hour", client="100/hour")
    verdicts = await draw(limiter, citizen("p1"), 4)
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert all(v.checked for v in verdicts)
    refused = verdicts[-1]
    assert refused.refused_by is not None
    assert refused.refused_by.scope == "person"
    assert 1 <= refused.retry_after <= 3600
    assert [b.policy for b in refused.budgets] == ['"person";q=3;w=3600', '"client";q=100;w=3600']


async def test_the_window_recovers_after_retry_after(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter(person="2/second", client=None)
    verdicts = await draw(limiter, citizen("p1"), 3)
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert 1 <= verdicts[-1].retry_after <= 2
    await asyncio.sleep(verdicts[-1].retry_after)
    assert (await limiter.check(citizen("p1"))).allowed


async def test_persons_are_counted_apart_and_across_portals(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter(person="2/hour", client="100/hour")
    assert [v.allowed for v in await draw(limiter, citizen("p1", "portal-a"), 2)] == [True, True]
    # The same person at another portal: the same budget (the person key, not the subject).
    refused = await limiter.check(citizen("p1", "portal-b"))
    assert refused.refused_by is not None
    assert refused.refused_by.scope == "person"
    # Another person at the same portal is not held back by the first one.
    assert (await limiter.check(citizen("p2", "portal-a"))).allowed


async def test_a_client_budget_holds_all_its_users_and_only_them(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter(person="100/hour", client="3/hour")
    for person in ("p1", "p2", "p3"):
        assert (await limiter.check(citizen(person, "portal-a"))).allowed
    refused = await limiter.check(citizen("p4", "portal-a"))
    assert refused.refused_by is not None
    assert refused.refused_by.scope == "client"
    assert (await limiter.check(citizen("p4", "portal-b"))).allowed


async def test_a_person_over_her_budget_does_not_spend_the_portals(
    open_limiter: OpenLimiter,
) -> None:
    limiter = await open_limiter(person="2/hour", client="3/hour")
    verdicts = await draw(limiter, citizen("p1"), 5)
    assert [v.allowed for v in verdicts] == [True, True, False, False, False]
    # Three refusals of p1 later the portal has used 2 of its 3.
    assert (await limiter.check(citizen("p2"))).allowed
    refused = await limiter.check(citizen("p3"))
    assert refused.refused_by is not None
    assert refused.refused_by.scope == "client"


async def test_a_machine_client_has_a_client_budget_only(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter(person="1/hour", client="2/hour")
    verdicts = await draw(limiter, machine(), 3)
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert [b.scope for b in verdicts[0].budgets] == ["client"]
    assert verdicts[-1].refused_by is not None
    assert verdicts[-1].refused_by.scope == "client"


async def test_a_client_overrides_the_gateway_rates(open_limiter: OpenLimiter) -> None:
    own = (
        registration("system-big", client="5/hour"),
        registration("system-small", client="1/hour"),
    )
    limiter = await open_limiter(clients=own, person=None, client="2/hour")
    big = await draw(limiter, machine("system-big"), 5)
    small = await draw(limiter, machine("system-small"), 2)
    other = await draw(limiter, machine("system-other"), 3)
    assert all(v.allowed for v in big)
    assert [v.allowed for v in small] == [True, False]
    assert [v.allowed for v in other] == [True, True, False]
    assert big[0].budgets[0].policy == '"client";q=5;w=3600'


async def test_no_budget_no_count(open_limiter: OpenLimiter) -> None:
    limiter = await open_limiter(person=None, client=None)
    verdict = await limiter.check(citizen("p1"))
    assert verdict.allowed
    assert verdict.budgets == ()


async def test_a_key_prefix_is_a_budget_space_of_its_own(open_limiter: OpenLimiter) -> None:
    first = await open_limiter(prefix="one:", person="1/hour", client=None)
    second = await open_limiter(prefix="two:", person="1/hour", client=None)
    assert (await first.check(citizen("p1"))).allowed
    assert not (await first.check(citizen("p1"))).allowed
    assert (await second.check(citizen("p1"))).allowed


async def test_two_instances_on_one_store_share_a_budget(open_limiter: OpenLimiter) -> None:
    first = await open_limiter(person="3/hour", client=None)
    second = await open_limiter(person="3/hour", client=None)
    verdicts = [await (first, second)[n % 2].check(citizen("p1")) for n in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]


@pytest.mark.redis
async def test_redis_holds_no_person_key_and_only_prefixed_keys() -> None:
    prefix = f"tongban-test:{secrets.token_hex(8)}:rl:"
    settings = RateLimitSettings(store="redis", redis_prefix=prefix, person="5/hour")
    limiter = ApiRateLimiter.from_settings(settings, redis_url=REDIS_URL)
    async with Redis.from_url(REDIS_URL, decode_responses=True) as redis:
        try:
            await redis.ping()
        except RedisError:
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
        try:
            await limiter.check(citizen("person-key-abc"))
            names = [name async for name in redis.scan_iter(match=f"{prefix}*")]
            assert names, "the draw left no counter under the prefix"
            assert all("person-key-abc" not in name for name in names)
            assert any(person_partition("person-key-abc") in name for name in names)
        finally:
            await limiter.aclose()
            for name in [name async for name in redis.scan_iter(match=f"{prefix}*")]:
                await redis.delete(name)
