"""Blocks for budgets drawn every second or so (a person calling through a portal), and what the
limit still guarantees across processes.

A budget this process draws too slowly for a block in ``LEASE_TIME`` but at least twice in
``LONGEST_LEASE`` is drawn in small blocks (``SMALL_BLOCK`` units, or what ``LONGEST_LEASE``
holds at its rate), spent here until the block's lease, as long as those calls take at the rate
seen, runs out. What must hold (leases.py):

- the processes together never admit more than the store granted: within one window, never
  more than the budget, and at most one block's rest per process less (two real processes on
  one file, here);
- in any window, at most the budget plus what each process held of a block at its start;
- a block's units not spent when its lease is over are lost, not admitted;
- a person calling now and then (slower than ``2 / LONGEST_LEASE`` a second) is drawn one unit
  per call, as before.

The leases run on the limiter's clock, which the tests drive; in the tests that cross windows
the store's clock is replaced too, and both move together.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from gateway.principal import Principal
from gateway.ratelimit import sqlite_storage
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.draws import Drawn
from gateway.ratelimit.leases import LEASE_TIME, LONGEST_LEASE, SMALL_BLOCK
from gateway.ratelimit.limiter import ApiRateLimiter


class Clock:
    """The limiter's clock (and, as ``time()``, the store's): moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def citizen(person: str, client: str = "portal-a") -> Principal:
    return Principal(subject=f"sub-{person}", level="L2", client_id=client, person=person)


def limiter_on(data_dir: Path, clock: Clock, **rates: Any) -> ApiRateLimiter:
    settings = RateLimitSettings.model_validate(
        {"store": "sqlite", "store_timeout": 5, "client": None, **rates}
    )
    return ApiRateLimiter.from_settings(settings, data_dir=data_dir, clock=clock)


def recorded(limiter: ApiRateLimiter) -> list[list[tuple[int, int]]]:
    """Each call's store draw from now on: (units asked, units granted) of each budget."""
    store: Any = limiter._local
    acquire_calls = store.acquire_calls
    steps: list[list[tuple[int, int]]] = []

    def record(calls: list[list[tuple[Any, int, int, int]]]) -> list[Drawn]:
        answers: list[Drawn] = acquire_calls(calls)
        for entries, drawn in zip(calls, answers, strict=True):
            steps.append(
                [(entry[3], units) for entry, units in zip(entries, drawn.granted, strict=False)]
            )
        return answers

    store.acquire_calls = record
    return steps


async def counted(limiter: ApiRateLimiter, principal: Principal) -> int:
    """Units of the principal's (only) budget the store holds in its current window."""
    budget = limiter.budgets(principal)[0]
    store = limiter._local
    assert store is not None
    key = limiter._lease(principal, budget).key
    return (await store.get_sliding_window(key, budget.window))[2]


async def test_a_person_calling_every_second_is_drawn_in_small_blocks(tmp_path: Path) -> None:
    clock = Clock()
    limiter = limiter_on(tmp_path, clock, person="6000/hour")  # blocks of up to 60
    steps = recorded(limiter)
    try:
        for _ in range(30):
            clock.now += 1.0  # one call a second: below LEASE_TIME's blocks, above the floor
            assert (await limiter.check(citizen("anna"))).allowed
        asked = [units for step in steps for units, _ in step]
        # The first call starts the rate's sample; then blocks of SMALL_BLOCK, one call's unit
        # and three spent here (a block may be spent for LONGEST_LEASE).
        assert asked[0] == 1
        assert set(asked[1:]) == {SMALL_BLOCK}
        assert len(steps) < 30 / 3
        # Nothing lost: every unit the store counted was a call admitted, or is still held.
        lease = limiter._lease(citizen("anna"), limiter.budgets(citizen("anna"))[0])
        assert await counted(limiter, citizen("anna")) == 30 + lease.units
    finally:
        await limiter.aclose()


async def test_a_person_calling_now_and_then_draws_one_unit_per_call(tmp_path: Path) -> None:
    clock = Clock()
    limiter = limiter_on(tmp_path, clock, person="6000/hour")
    steps = recorded(limiter)
    try:
        for _ in range(8):
            clock.now += LONGEST_LEASE  # slower than two calls in the longest lease
            assert (await limiter.check(citizen("anna"))).allowed
        assert [units for step in steps for units, _ in step] == [1] * 8
        assert await counted(limiter, citizen("anna")) == 8
    finally:
        await limiter.aclose()


async def test_a_slow_budgets_block_lasts_the_longest_lease_and_its_rest_is_lost(
    tmp_path: Path,
) -> None:
    clock = Clock()
    limiter = limiter_on(tmp_path, clock, person="6000/hour")
    steps = recorded(limiter)
    try:
        for _ in range(3):
            clock.now += 0.5  # two calls a second: a block of SMALL_BLOCK for LONGEST_LEASE
            assert (await limiter.check(citizen("anna"))).allowed
        assert [units for step in steps for units, _ in step] == [1, SMALL_BLOCK]
        lease = limiter._lease(citizen("anna"), limiter.budgets(citizen("anna"))[0])
        assert lease.units == SMALL_BLOCK - 2
        assert lease.term == LONGEST_LEASE > LEASE_TIME
        clock.now += LONGEST_LEASE - 0.5  # the lease is over, units unspent
        assert (await limiter.check(citizen("anna"))).allowed
        assert len(steps) == 3  # asked the store again
        # Drawn: the first unit, the block (two calls' and two lost), and the last call's.
        assert await counted(limiter, citizen("anna")) == 1 + SMALL_BLOCK + steps[-1][0][1]
    finally:
        await limiter.aclose()


async def test_a_default_person_budget_is_leased_at_most_three_units(tmp_path: Path) -> None:
    clock = Clock()
    limiter = limiter_on(tmp_path, clock, person="300/minute")  # 1 %: 3 units
    steps = recorded(limiter)
    try:
        for _ in range(12):
            clock.now += 0.5
            assert (await limiter.check(citizen("anna"))).allowed
        assert max(units for step in steps for units, _ in step) == 3
    finally:
        await limiter.aclose()


async def test_a_call_beside_a_refill_takes_its_unit_from_the_refills_block(
    tmp_path: Path,
) -> None:
    """On SQLite, calls of one turn share a transaction; the portal's block is being refilled
    by the first of them: the others take their portal unit from that block (no unit of their
    own drawn), and the store counts one block, not a block and a unit per call."""
    clock = Clock()
    limiter = limiter_on(tmp_path, clock, client="60000/hour", person="100/hour")
    steps = recorded(limiter)
    try:
        for n in range(40):  # the portal's budget gets hot: 1,000 calls a second
            clock.now += 0.001
            assert (await limiter.check(citizen(f"warm{n}"))).allowed
        portal = limiter._lease(citizen("x"), limiter.budgets(citizen("x"))[1])
        portal.units = 0  # its block spent: the next call refills it
        before = len(steps)
        clock.now += 0.001
        verdicts = await asyncio.gather(*(limiter.check(citizen(f"p{n}")) for n in range(6)))
        assert all(verdict.allowed for verdict in verdicts)
        shared = steps[before:]
        assert len(shared) == 6  # each person's unit drawn, in one transaction
        portal_asked = [step[1][0] for step in shared]
        assert portal_asked[0] > 6  # the refill
        assert portal_asked[1:] == [1] * 5  # beside it: one unit each...
        granted = shared[0][1][1]
        assert granted == portal_asked[0] - 5  # ...taken from the refill's block
        assert portal.units == granted - 1  # the block's rest, held here
    finally:
        await limiter.aclose()


# --- two processes on one file ----------------------------------------------------------------


def _hammer(data_dir: str, rate: str, calls: int, tick: float, start: Any, results: Any) -> None:
    """In a process of its own: four concurrent callers of one person, ``calls`` calls in all,
    the limiter's clock moving ``tick`` seconds per call; puts the number admitted."""

    async def run() -> int:
        clock = Clock()
        limiter = limiter_on(Path(data_dir), clock, person=rate)
        admitted = 0
        left = calls

        async def caller() -> None:
            nonlocal admitted, left
            while left > 0:
                left -= 1
                clock.now += tick
                verdict = await limiter.check(citizen("anna"))
                assert verdict.checked
                admitted += verdict.allowed
                await asyncio.sleep(0)

        try:
            await asyncio.gather(*(caller() for _ in range(4)))
        finally:
            await limiter.aclose()
        return admitted

    start.wait(timeout=60)
    results.put(asyncio.run(run()))


@pytest.mark.parametrize("tick", [0.2, 0.5])
def test_two_processes_on_one_file_never_admit_more_than_the_budget(
    tmp_path: Path, tick: float
) -> None:
    """Two worker processes, one person calling at both (every call at one of them), three
    times the hourly budget in all: together they admit no more than the budget, and at most
    what is left of one block per process less."""
    budget = 400  # 1 %: blocks of up to 4
    limiter_on(tmp_path, Clock())  # the file and its schema, before the processes open it
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(
            target=_hammer, args=(str(tmp_path), f"{budget}/hour", 600, tick, start, results)
        )
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    admitted = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sum(admitted) <= budget
    assert sum(admitted) >= budget - 2 * (4 - 1)


async def test_in_any_window_at_most_the_budget_and_one_block_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (two limiters, two connections on one file), a person calling at both more
    than her budget allows, across many windows of a minute: counted by the window each call
    was admitted in, no window admits more than the budget plus what each process held of a
    block when it began; in all, no more than the store granted."""
    clock = Clock(1_800_000_000.0)
    monkeypatch.setattr(sqlite_storage, "time", clock)  # the store's windows on the same clock
    budget, window = 400, 60
    processes = [
        limiter_on(tmp_path, clock, person=f"{budget}/minute"),
        limiter_on(tmp_path, clock, person=f"{budget}/minute"),
    ]
    steps = [recorded(limiter) for limiter in processes]
    admitted: dict[int, int] = {}
    try:
        for n in range(12 * budget):  # 12 windows, each asked for 12 budgets' worth... spread
            clock.now += window * 10 / (12 * budget) * (1 + (n % 7) / 10)
            limiter = processes[n % 2]
            verdict = await limiter.check(citizen("anna"))
            if verdict.allowed:
                slot = int(clock.now // window)
                admitted[slot] = admitted.get(slot, 0) + 1
        held_most = 2 * (4 - 1)  # each process holds at most a block's rest (blocks of 4)
        assert max(admitted.values()) <= budget + held_most
        assert max(admitted.values()) > budget / 2  # the budget was the limit, not the traffic
        granted = sum(units for rows in steps for step in rows for _, units in step)
        assert sum(admitted.values()) <= granted
        asked = [units for rows in steps for step in rows for units, _ in step]
        assert max(asked) > 1  # and blocks were drawn
    finally:
        for limiter in processes:
            await limiter.aclose()
