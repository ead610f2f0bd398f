"""SQLite draws of the calls in flight together, in one transaction: each call's answer as alone.

A draw that comes while other work is ready on the loop is queued, and one callback per turn
draws every queued call in one ``BEGIN IMMEDIATE`` transaction. The transactions are counted by
the connection's trace of the statements it runs; each call's answer is held to what the same
calls drawn one at a time, in the same order, answer on another file at the same instant (the
store's clock replaced, so that the calls cross window edges and both files see one time).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from limits.errors import StorageError

from gateway.principal import Principal
from gateway.ratelimit import sqlite_storage
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.draws import Drawn, retry_after
from gateway.ratelimit.limiter import ApiRateLimiter, Verdict
from gateway.ratelimit.sqlite_storage import MAX_CALLS, Entries, SqliteStorage


class StoreClock:
    """The store's ``time`` module, replaced: ``time()`` answers ``now``."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> StoreClock:
    fake = StoreClock()
    monkeypatch.setattr(sqlite_storage, "time", fake)
    return fake


_DRAW_STATEMENT = sqlite_storage._DRAW.partition(" VALUES ")[0]


class Trace:
    """The transactions a storage's connection commits, and the number of calls each carried."""

    def __init__(self, store: SqliteStorage) -> None:
        self.commits = 0
        self._last = ""
        self._inside = False
        self.calls: list[int] = []
        with store._db.locked() as conn:
            conn.set_trace_callback(self._statement)
        acquire_calls = store.acquire_calls

        def counted(calls: Any) -> list[Drawn]:
            self.calls.append(len(calls))
            return acquire_calls(calls)

        store.acquire_calls = counted  # type: ignore[method-assign]

    def _statement(self, sql: str) -> None:
        # A transaction is a COMMIT, or a lone budget's draw statement run outside BEGIN (its
        # own transaction), unless it drew nothing and a transaction followed it at once.
        if sql == "BEGIN IMMEDIATE":
            self._inside = True
            if self._last.startswith(_DRAW_STATEMENT):
                self.commits -= 1
        elif sql in ("COMMIT", "ROLLBACK"):
            self._inside = False
            self.commits += sql == "COMMIT"
        elif sql.startswith(_DRAW_STATEMENT) and not self._inside:
            self.commits += 1
        self._last = sql


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteStorage, SqliteStorage]]:
    together = SqliteStorage(tmp_path / "together.sqlite", busy_timeout=5)
    alone = SqliteStorage(tmp_path / "alone.sqlite", busy_timeout=5)
    yield together, alone
    for store in (together, alone):
        store._db.close()


async def queued(store: SqliteStorage, calls: list[Entries]) -> list[Drawn]:
    """The calls started together, as tasks of one worker: drawn in shared transactions."""

    async def one(entries: Entries) -> Drawn:
        return await store.draw(entries)

    return await asyncio.gather(*(one(entries) for entries in calls))


def drawn_in_turn(
    alone: SqliteStorage, calls: list[Entries], taken: list[int] | None = None
) -> list[Drawn]:
    """What the calls of one shared transaction are answered: each call's budgets drawn alone,
    one after the other, in order, except that a call asking one unit of a budget that an
    earlier call of the transaction was granted a block of takes it from that block (the
    block's call granted one fewer, its own unit always kept), as ``acquire_calls`` says;
    ``taken`` gets a 1 for each unit so taken."""
    answers: list[Drawn] = []
    blocks: dict[str, tuple[list[int], int]] = {}
    for entries in calls:
        granted: list[int] = []
        window = None
        for key, limit, expiry, wanted in entries:
            if wanted == 1 and key in blocks:
                holder, index = blocks[key]
                holder[index] -= 1
                if holder[index] == 1:
                    del blocks[key]
                granted.append(1)
                if taken is not None:
                    taken.append(1)
                continue
            answer = alone.acquire_all([(key, limit, expiry, wanted)])
            granted.append(answer.granted[0])
            if answer.window is not None:
                window = answer.window
                break
            if answer.granted[0] > 1:
                blocks[key] = (granted, len(granted) - 1)
        answers.append(Drawn(granted, window))
    return answers


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_calls_drawn_together_get_the_answers_they_get_alone(
    stores: tuple[SqliteStorage, SqliteStorage], clock: StoreClock, seed: int
) -> None:
    together, alone = stores
    trace = Trace(together)
    rng = random.Random(seed)
    budgets = [("a", 4, 3600), ("b", 6, 7200), ("c", 9, 10800), ("d", 30, 3600)]
    refused = 0
    taken: list[int] = []
    for _ in range(40):
        clock.now += rng.choice([0, 0, 0, 1000, 3600, 7200, 18000])
        calls: list[Entries] = []
        for _ in range(rng.randint(1, 12)):
            chosen = rng.sample(budgets, rng.randint(1, 3))
            calls.append(
                [(key, limit, window, rng.choice([1, 1, 1, 3])) for key, limit, window in chosen]
            )
        answers = await queued(together, calls)
        expected = drawn_in_turn(alone, calls, taken)
        for answer, on_its_own in zip(answers, expected, strict=True):
            assert answer == on_its_own  # units, and a refusal's windows to the bit
            refused += on_its_own.window is not None
        for key, _, window in budgets:  # and the files hold the same counts
            assert await together.get_sliding_window(key, window) == (
                await alone.get_sliding_window(key, window)
            )
    assert max(trace.calls) > 1  # calls did go together
    assert trace.commits == len(trace.calls)  # one transaction per drain
    assert refused > 10  # and budgets ran out among them
    assert len(taken) > 5  # and calls took their unit from an earlier call's block


async def test_a_call_in_a_shared_transaction_stops_at_its_own_refusal(
    stores: tuple[SqliteStorage, SqliteStorage],
) -> None:
    """A call's budgets stay in order inside a shared transaction: a refusal ends that call's
    draws only, and a later call sees what the earlier ones drew."""
    store, _ = stores
    trace = Trace(store)
    answers = await queued(
        store,
        [
            [("portal", 10, 3600, 1)],
            [("person", 1, 3600, 1), ("portal", 10, 3600, 4)],
            [("person", 1, 3600, 1), ("portal", 10, 3600, 4)],  # the person is spent
            [("other-person", 1, 3600, 1), ("portal", 10, 3600, 4)],  # the portal has 5 left
            [("portal", 10, 3600, 4)],  # and then 1
            [("portal", 10, 3600, 1)],  # and then none
        ],
    )
    # The last call asks one unit of the portal's budget, which the fourth call was granted a
    # block of in the same transaction: it takes it from that block (the fourth's grant 3).
    assert [answer.granted for answer in answers] == [[1], [1, 4], [0], [1, 3], [1], [1]]
    assert [answer.window is None for answer in answers] == [True] * 2 + [False] + [True] * 3
    assert trace.calls == [6]
    assert trace.commits == 1
    assert (await store.get_sliding_window("portal", 3600))[2] == 10
    assert (await store.get_sliding_window("person", 3600))[2] == 1


def citizen(person: str) -> Principal:
    return Principal(subject=f"sub-{person}", level="L2", client_id="portal-a", person=person)


def limiter_on(data_dir: Path, **rates: Any) -> ApiRateLimiter:
    settings = RateLimitSettings.model_validate(
        {"store": "sqlite", "store_timeout": 5, "client": "10/hour", "person": "2/hour", **rates}
    )
    return ApiRateLimiter.from_settings(settings, data_dir=data_dir)


def local(limiter: ApiRateLimiter) -> SqliteStorage:
    assert limiter._local is not None
    return limiter._local


def answer_of(verdict: Verdict) -> tuple[bool, str | None, int, bool]:
    scope = verdict.refused_by.scope if verdict.refused_by is not None else None
    return (verdict.allowed, scope, verdict.retry_after, verdict.checked)


async def test_checks_in_flight_share_one_transaction_and_get_their_verdicts_alone(
    tmp_path: Path, clock: StoreClock
) -> None:
    """Eight calls of one worker at once: one transaction, and each verdict (refusals by the
    person's or the portal's budget, Retry-After) that of the same calls one at a time."""
    together = limiter_on(tmp_path / "together")
    alone = limiter_on(tmp_path / "alone")
    trace = Trace(local(together))
    try:
        rounds = []
        for turn in range(3):
            # p1 and p2 spend their budget; three new persons each round spend the portal's.
            persons = ["p1", "p2", "p1", "p1", f"a{turn}", f"b{turn}", "p2", f"c{turn}"]
            clock.now += 60
            verdicts = await asyncio.gather(*(together.check(citizen(p)) for p in persons))
            rounds.append(verdicts)
            for person, verdict in zip(persons, verdicts, strict=True):
                assert answer_of(verdict) == answer_of(await alone.check(citizen(person)))
        assert trace.calls == [8, 8, 8]
        assert trace.commits == 3
        first = [answer_of(verdict) for verdict in rounds[0]]
        assert first[3] == (False, "person", first[3][2], True)  # p1's third call
        refusals = [answer_of(v) for verdicts in rounds for v in verdicts if not v.allowed]
        assert {scope for _, scope, _, _ in refusals} == {"person", "client"}
        assert all(seconds >= 1 for _, _, seconds, _ in refusals)
    finally:
        await together.aclose()
        await alone.aclose()


async def test_a_refusal_in_a_shared_transaction_says_the_librarys_retry_after(
    stores: tuple[SqliteStorage, SqliteStorage], clock: StoreClock
) -> None:
    store, _ = stores
    clock.now = 1_800_000_000.0 + 1800  # halfway through an hour's window
    answers = await queued(store, [[("k", 2, 3600, 1)]] * 3)
    assert [answer.granted for answer in answers] == [[1], [1], [0]]
    window = answers[2].window
    assert window is not None
    assert window == await store.get_sliding_window("k", 3600)
    assert retry_after(window, 3600) == 1800


async def test_a_lone_check_draws_at_once_without_yielding(tmp_path: Path) -> None:
    """Nothing else ready on the loop: the check is drawn before its coroutine first yields,
    in a transaction of its own, as without the queue."""
    limiter = limiter_on(tmp_path)
    trace = Trace(local(limiter))
    try:
        for n in range(3):
            assert local(limiter).alone()
            check = limiter.check(citizen(f"p{n}"))
            with pytest.raises(StopIteration) as done:
                check.send(None)
            assert done.value.value.allowed
        assert trace.calls == [1, 1, 1]
        assert local(limiter)._drain is None
    finally:
        await limiter.aclose()


async def test_a_loop_that_hides_its_ready_queue_queues_every_draw(tmp_path: Path) -> None:
    limiter = limiter_on(tmp_path)
    store = local(limiter)
    store.at_once = False  # as on uvloop
    trace = Trace(store)
    try:
        assert not store.alone()
        assert (await limiter.check(citizen("p1"))).allowed
        assert trace.calls == [1]
    finally:
        await limiter.aclose()


async def test_more_calls_than_a_transaction_carries_go_in_the_next_turns(
    stores: tuple[SqliteStorage, SqliteStorage],
) -> None:
    store, _ = stores
    trace = Trace(store)
    calls = MAX_CALLS * 2 + 5
    answers = await queued(store, [[("portal", 1000, 3600, 1)]] * calls)
    assert all(answer.granted == [1] for answer in answers)
    assert trace.calls == [MAX_CALLS, MAX_CALLS, 5]
    assert (await store.get_sliding_window("portal", 3600))[2] == calls


def waiting(store: SqliteStorage, entries: Entries) -> asyncio.Task[Drawn]:
    """A task that draws ``entries`` (queued: the tasks started with it are ready too)."""

    async def draw() -> Drawn:
        return await store.draw(entries)

    return asyncio.ensure_future(draw())


async def test_a_call_cancelled_while_queued_draws_nothing_and_the_drain_goes_on(
    stores: tuple[SqliteStorage, SqliteStorage],
) -> None:
    store, _ = stores
    trace = Trace(store)
    entries = [("portal", 100, 3600, 1)]
    tasks = [waiting(store, entries) for _ in range(4)]
    await asyncio.sleep(0)  # the tasks wait on their answers; the drain is armed, not yet run
    assert len(store._queued) == 4
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [answer.granted for answer in done if isinstance(answer, Drawn)] == [[1]] * 3
    assert trace.calls == [3]
    # Every call queued was cancelled: no transaction at all, and the next one goes.
    lost = waiting(store, entries)
    await asyncio.sleep(0)
    lost.cancel()
    assert (await waiting(store, entries)).granted == [1]
    assert trace.calls == [3, 1]
    assert (await store.get_sliding_window("portal", 3600))[2] == 4


async def test_a_check_cancelled_after_its_draw_committed_is_counted(tmp_path: Path) -> None:
    """The drain answers a call, then its task is cancelled before it resumes: the unit stays
    drawn (as a call cancelled once its step is on the wire), and the breaker is not told."""
    limiter = limiter_on(tmp_path)
    store = local(limiter)
    try:
        checks = [asyncio.ensure_future(limiter.check(citizen(f"p{n}"))) for n in range(3)]
        await asyncio.sleep(0)  # queued
        await asyncio.sleep(0)  # drained: answers set, the tasks not yet resumed
        assert all(not check.done() for check in checks)
        checks[0].cancel()
        done = await asyncio.gather(*checks, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        portal_key = next(
            lease.key for (budget, _), lease in limiter._keys.items() if budget.scope == "client"
        )
        assert (await store.get_sliding_window(portal_key, 3600))[2] == 3
        assert limiter.healthy
    finally:
        await limiter.aclose()


async def test_a_failed_transaction_lets_every_queued_call_through_unchecked_counted_once(
    tmp_path: Path,
) -> None:
    """Another process holds the file's lock past the store timeout: the one shared transaction
    fails, every call queued goes through unchecked (each its own StorageError), the failure is
    logged and counted once, and the store is then spared."""
    limiter = limiter_on(tmp_path, store_timeout=0.05, retry_interval=60)
    trace = Trace(local(limiter))
    other = sqlite3.connect(tmp_path / "ratelimits.sqlite", isolation_level=None)
    failures = 0
    record_failure = limiter._breaker.record_failure

    def counted(cause: str | None = None) -> None:
        nonlocal failures
        failures += 1
        record_failure(cause)

    limiter._breaker.record_failure = counted  # type: ignore[method-assign]
    try:
        other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
        with structlog.testing.capture_logs() as logs:
            verdicts = await asyncio.gather(*(limiter.check(citizen(f"p{n}")) for n in range(6)))
        other.execute("COMMIT")
        assert [(v.allowed, v.checked) for v in verdicts] == [(True, False)] * 6
        assert trace.calls == [6]
        assert failures == 1
        assert [entry["event"] for entry in logs] == ["rate_limit_store_failed"]
        assert not limiter.healthy
        assert not (await limiter.check(citizen("p9"))).checked  # paused: not asked
        assert trace.calls == [6]
    finally:
        other.close()
        await limiter.aclose()


async def test_each_queued_call_hears_its_own_store_error(
    stores: tuple[SqliteStorage, SqliteStorage],
) -> None:
    store, _ = stores

    def failing(calls: Any) -> list[Drawn]:
        raise sqlite3.OperationalError("disk I/O error")

    store.acquire_calls = failing  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(store.draw([("portal", 10, 3600, 1)]) for _ in range(4)), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, StorageError)
        assert isinstance(result.storage_error, sqlite3.OperationalError)
    assert len({id(result) for result in results}) == 4  # each its own
    assert store._queued == []
    assert store._drain is None


async def test_closing_draws_what_is_still_queued(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "f.sqlite", busy_timeout=5)
    answers = [store.draw([("portal", 10, 3600, 1)]) for _ in range(3)]
    await store.aclose()
    assert [answer.result().granted for answer in answers] == [[1]] * 3
