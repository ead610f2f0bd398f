"""The one-script draw of a call's budgets gives the library's answers, step for step, on Redis.

The library's windows run on Redis's key expiry alone (no clock is read), so time is moved on
by shortening every test key's TTL (``age``): the same for both key spaces, and exact. The same
random sequence of calls is drawn through ``limits``' own script, one budget at a time, stopping
at the first refusal (the limiter's loop before the one-script draw), and through
``acquire_all`` under another prefix. Every answer, and the windows the library reads back, must
agree. Windows are days long, so the few hundred microseconds between the two draws of a step
cannot move the previous window's weight across a whole call (about one chance in 10^5 a run).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator

import pytest
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.ratelimit.redis_storage import RedisBudgetStorage
from tests.unit.ratelimit.redis_time import AGE, hours

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    # A random prefix per run: parallel runs and old keys never meet.
    prefix = f"tongban-test:{secrets.token_hex(8)}"
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except RedisError:
        await client.aclose()
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    try:
        yield client, prefix
    finally:
        async for name in client.scan_iter(match=f"{prefix}*"):
            await client.delete(name)
        await client.aclose()


def storages(prefix: str) -> tuple[RedisBudgetStorage, RedisStorage]:
    ours = RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=f"{prefix}:ours")
    theirs = RedisStorage(
        f"async+{REDIS_URL}", implementation="redispy", key_prefix=f"{prefix}:lib"
    )
    return ours, theirs


async def close(*storages: RedisStorage) -> None:
    for storage in storages:
        await storage.bridge.storage.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_same_answers_as_the_library(redis: tuple[Redis, str], seed: int) -> None:
    client, prefix = redis
    ours, theirs = storages(prefix)
    age = client.register_script(AGE)
    items = [parse("3/day"), parse("5/2 days"), parse("4/3 days")]
    rng = random.Random(seed)
    answers = {True: 0, False: 0}
    try:
        for _ in range(400):
            jump = rng.choice([0] * 6 + [1000, hours(1), hours(7), hours(13), hours(26), hours(80)])
            if jump:
                await age(args=[f"{prefix}:*", jump])
            budgets = [
                (item, item.key_for("person", rng.choice("abc")))
                for item in rng.sample(items, rng.choice([1, 2, 3]))
            ]
            library: list[bool] = []
            for item, key in budgets:
                library.append(
                    await theirs.acquire_sliding_window_entry(key, item.amount, item.get_expiry())
                )
                if not library[-1]:
                    break
            drawn = await ours.acquire_all(
                [
                    (ours.window_keys(key), item.amount, item.get_expiry(), 1)
                    for item, key in budgets
                ]
            )
            assert [bool(units) for units in drawn.granted] == library
            if library[-1]:
                assert drawn.window is None
            else:  # the refusing budget's windows, as the library reads them
                item, key = budgets[len(library) - 1]
                lib = await theirs.get_sliding_window(key, item.get_expiry())
                assert drawn.window is not None
                assert (drawn.window[0], drawn.window[2]) == (lib[0], lib[2])
                assert drawn.window[1] == pytest.approx(lib[1], abs=1.0)
                assert drawn.window[3] == pytest.approx(lib[3], abs=1.0)
            answers[library[-1]] += 1
            for item, key in budgets:
                mine = await ours.get_sliding_window(key, item.get_expiry())
                lib = await theirs.get_sliding_window(key, item.get_expiry())
                assert (mine[0], mine[2]) == (lib[0], lib[2])  # the counts, exactly
                assert mine[1] == pytest.approx(lib[1], abs=1.0)  # the TTLs, up to the time
                assert mine[3] == pytest.approx(lib[3], abs=1.0)  # between the two reads
    finally:
        await close(ours, theirs)
    assert answers[True] > 50
    assert answers[False] > 30


async def test_the_library_reads_what_the_script_wrote_and_back(redis: tuple[Redis, str]) -> None:
    """Counters of the library's draws (a gateway before the upgrade) count in the script's, and
    the strategy's window statistics see the script's draws."""
    _, prefix = redis
    ours = RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=f"{prefix}:shared")
    strategy = SlidingWindowCounterRateLimiter(ours)
    item = parse("3/hour")
    key = item.key_for("client", "portal")
    draw = [(ours.window_keys(key), 3, 3600, 1)]
    try:
        assert await strategy.hit(item, "client", "portal")
        assert await strategy.hit(item, "client", "portal")
        assert (await ours.acquire_all(draw)).granted == [1]
        assert (await ours.acquire_all(draw)).granted == [0]
        assert not await strategy.hit(item, "client", "portal")
        stats = await strategy.get_window_stats(item, "client", "portal")
        assert stats.remaining == 0
    finally:
        await close(ours)


async def test_budgets_stop_at_the_first_refusal_and_blocks_take_the_room_left(
    redis: tuple[Redis, str],
) -> None:
    _, prefix = redis
    ours = RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=f"{prefix}:order")
    person = ours.window_keys("person-budget")
    portal = ours.window_keys("client-budget")
    try:
        assert (await ours.acquire_all([(person, 2, 3600, 1), (portal, 10, 3600, 4)])).granted == [
            1,
            4,
        ]
        assert (await ours.acquire_all([(person, 2, 3600, 1), (portal, 10, 3600, 4)])).granted == [
            1,
            4,
        ]
        # The person's budget is spent: the portal's is not drawn.
        assert (await ours.acquire_all([(person, 2, 3600, 1), (portal, 10, 3600, 4)])).granted == [
            0
        ]
        # A block takes what is left of the portal's, and then nothing is.
        assert (await ours.acquire_all([(portal, 10, 3600, 4)])).granted == [2]
        assert (await ours.acquire_all([(portal, 10, 3600, 1)])).granted == [0]
        window = await ours.get_sliding_window("client-budget", 3600)
        assert window[2] == 10
    finally:
        await close(ours)
