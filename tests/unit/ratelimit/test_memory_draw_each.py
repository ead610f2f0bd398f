"""The in-process limiter's one-step draw gives the answers of the library's own path.

``draw_each`` (a call's budgets in one step, window keys kept between draws) is held to
``acquire_now`` budget by budget, and the limiter on ``LocalMemoryStorage`` to the same limiter
on ``limits``' own ``MemoryStorage`` (one ``SlidingWindowCounterRateLimiter.hit`` per budget):
the same verdicts (allowed, the refusing budget, Retry-After) and the same header fields, on a
fake clock that crosses window edges, with persons and a machine client, and principals that
are equal but not the same object.
"""

from __future__ import annotations

import random
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from limits import parse
from limits.aio.storage import MemoryStorage

from gateway.http.ratelimit import VERDICT, rate_limit_fields
from gateway.principal import Principal
from gateway.ratelimit import limiter as module
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.limiter import ApiRateLimiter, Verdict
from gateway.ratelimit.memory_storage import LocalMemoryStorage, Window


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_draw_each_is_acquire_now_budget_by_budget(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    clock = [1_765_000_000.25]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    ours, theirs = LocalMemoryStorage(), LocalMemoryStorage()
    items = [parse("3/second"), parse("5/2 seconds"), parse("4/minute"), parse("0/minute")]
    rng = random.Random(seed)
    windows: dict[str, Window] = {}
    refused = 0
    for _ in range(3000):
        clock[0] += rng.choice([0.0, 0.01, 0.2, 0.7, 1.3, 7.0, 45.0])
        chosen = [rng.choice(items[:3]) for _ in range(rng.choice([1, 2, 3]))]
        if rng.random() < 0.02:
            chosen.append(items[3])
        keys = [item.key_for("person", rng.choice("abc")) for item in chosen]
        drawn = [
            windows.setdefault(k, Window(k, item.amount, item.get_expiry()))
            for k, item in zip(keys, chosen, strict=True)
        ]
        mine = ours.draw_each(drawn)
        expected = -1
        for index, (k, item) in enumerate(zip(keys, chosen, strict=True)):
            if not theirs.acquire_now(k, item.amount, item.get_expiry()):
                expected = index
                break
        assert mine == expected
        refused += mine >= 0
        assert dict(ours.storage) == dict(theirs.storage)
        assert ours.expirations == theirs.expirations
    assert 100 < refused < 2900


CITIZENS = [Principal(f"sub-{n}", "L2", "portal-a", person=f"p{n}") for n in range(3)]
MACHINE = Principal("svc", "system", "portal-a")


def _fields(verdict: Verdict) -> dict[str, str]:
    """The header fields ``rate_limit_fields`` puts on an answer of this verdict."""
    request = make_mocked_request("GET", "/api/v1/x")
    request[VERDICT] = verdict
    response = web.Response()
    rate_limit_fields(request, response)
    return {k: v for k, v in response.headers.items() if k.startswith("RateLimit")}


@pytest.mark.parametrize("seed", [4, 5])
async def test_the_limiter_answers_as_on_the_library_path(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    clock = [1_765_000_000.5]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    settings = RateLimitSettings(person="3/second", client="7/2 seconds")
    ours = ApiRateLimiter(LocalMemoryStorage(), settings)
    theirs = ApiRateLimiter(MemoryStorage(), settings)
    assert ours.store_kind == theirs.store_kind == "memory"
    rng = random.Random(seed)
    seen = {"allowed": 0, "person": 0, "client": 0}
    for _ in range(1500):
        clock[0] += rng.choice([0.0, 0.0, 0.05, 0.3, 0.9, 2.5])
        principal = rng.choice([*CITIZENS, MACHINE])
        if rng.random() < 0.3:  # an equal principal, another object (a token verified again)
            principal = Principal(
                principal.subject, principal.level, principal.client_id, person=principal.person
            )
        mine, lib = await ours.check(principal), await theirs.check(principal)
        assert mine == lib
        assert _fields(mine) == _fields(lib)
        seen["allowed" if mine.refused_by is None else mine.refused_by.scope] += 1
    assert all(count > 10 for count in seen.values()), seen


async def test_principals_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_KEY_CACHE", 4)
    limiter = ApiRateLimiter(LocalMemoryStorage(), RateLimitSettings(person="2/hour", client=None))
    for n in range(20):
        principal = Principal(f"sub-{n}", "L2", "portal-a", person=f"p{n}")
        assert (await limiter.check(principal)).allowed
        assert len(limiter._drawers) <= 4
    again = Principal("sub-0", "L2", "portal-a", person="p0")  # forgotten, then drawn again
    assert (await limiter.check(again)).allowed
    refused = await limiter.check(again)
    assert refused.refused_by is not None
    assert refused.refused_by.scope == "person"
