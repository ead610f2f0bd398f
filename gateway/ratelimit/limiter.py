"""Which budgets a call on /api/* draws on, counted with ``limits``; fail open when Redis fails.

Budgets. Every authenticated call draws on its person's budget (``Principal.owner``: the same
person at every portal) and then on its OAuth client's (all the portal's users together). The
person's comes first so that one person over her budget is refused without using up the
portal's; a call the client's budget refuses has still counted against the person's. A machine
client (client credentials, ``MACHINE_LEVEL``: no person) draws on its client budget only.
Rates are the gateway's (gateway.yaml) unless the client declares its own (clients.yaml).

Strategy: the sliding-window counter (``SlidingWindowCounterRateLimiter``), chosen over the
moving window because
  * it costs two counters per budget whatever the rate, where the moving window keeps one
    timestamp per call in the window (a portal at 6000/minute: a 6000-entry Redis list, trimmed
    on every call);
  * on Redis its windows run on Redis's own key expiry inside one Lua script, so instances need
    no agreement on the time; the moving window stamps entries with each instance's clock;
  * unlike a fixed window it lets no double burst through at a window's edge: the previous
    window's count is weighted by how much of it still lies in the last ``w`` seconds.
The price is an estimate: it assumes the previous window's calls were spread evenly, so a budget
can let a few calls more or fewer through than an exact log would. That is fine for a protection
(this is not a legal record: nothing here is audited). The library has no clock to inject:
windows run on ``time.time()`` (memory) and Redis's expiry (redis).

Storage: ``MemoryStorage`` (``LocalMemoryStorage``, memory_storage.py) for one process;
``SqliteStorage`` (sqlite_storage.py) for the processes of one host; ``RedisBudgetStorage``
(redis_storage.py: ``limits``' ``RedisStorage`` on redis-py, so no second Redis client) across
hosts, over a ``BlockingConnectionPool`` of our own (the default pool raises at once when full),
closed by ``aclose``. On the two shared stores a call's budgets are drawn in one step (a
transaction; one Lua script, one round trip) on the library's keys and arithmetic, and a
refusal's Retry-After comes from the windows that step answered with (draws.py); the calls in
flight together share a round trip on Redis (redis_storage.py) and a transaction on SQLite
(sqlite_storage.py). A budget this process draws
often (a portal's) is drawn in blocks spent locally for up to 250 ms (leases.py,
``rate_limits.leases``). Measured CPU per check (bench/bench_ratelimit.py, docs/performance.md,
a loaded machine): memory ~9 µs; SQLite ~100-150 µs a transaction, ~6 µs when every budget of
the call is spent from a block; Redis ~250-370 µs a round trip (~450-600 µs with one ``limits``
call per budget), ~8-16 µs from blocks. A portal's persons calling every second or so draw
their own budget in small blocks (a store step at one call in two to four); those calling now
and then one unit a call, so their calls still cost a store step each; a machine client's, or
one busy person's, mostly do not. ``MemoryStorage`` sweeps every key on each expiry pass, ~30 µs
per draw at 10,000 live keys and ~330 µs at 100,000: beyond a modest number of active persons,
use Redis.

Fail open. A government gateway's limits protect capacity; they are not a legal record, and
refusing every citizen because the counter store is down would turn a Redis outage into a
gateway outage. So when Redis errs or takes longer than ``store_timeout``, the call goes
through unchecked, a warning is logged once per outage (``rate_limit_store_failed``) and
``Verdict.checked`` is False (the HTTP layer counts those calls in
``tongban_rate_limit_unchecked_total``). For ``retry_interval`` seconds after a failure Redis is
not asked at all (a breaker, so an outage costs no timeout per call); then one call probes it
again, and ``rate_limit_store_recovered`` says when it answers.

Must not: import aiohttp; keep a person identifier in the store (persons are keyed by a hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.asyncio import BlockingConnectionPool

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.errors import CircuitOpen
from gateway.event_loop import KeptLoop
from gateway.identity.clients import ClientRegistration
from gateway.identity.verifier import MACHINE_LEVEL
from gateway.principal import Principal
from gateway.ratelimit.config import RateLimitSettings, parse_rate
from gateway.ratelimit.draws import Drawn, retry_after
from gateway.ratelimit.leases import Lease
from gateway.ratelimit.memory_storage import LocalMemoryStorage, Window
from gateway.ratelimit.redis_storage import RedisBudgetStorage
from gateway.ratelimit.sqlite_storage import SqliteStorage

log = structlog.get_logger("tongban.ratelimit")

_KEY_CACHE = 4096
"""Store keys kept by a limiter before the cache starts over."""

Scope = Literal["client", "person", "source", "client_auth_failures", "refusal_records"]


@dataclass(frozen=True, slots=True)
class Budget:
    """One rate a call draws on: whose (``scope``) and how many calls per window."""

    scope: Scope
    rate: RateLimitItem
    window: int = field(init=False, compare=False)
    """Seconds of the window."""
    policy: str = field(init=False, compare=False)
    """This budget as a quota policy item (draft-ietf-httpapi-ratelimit-headers §3.1); written
    once, as every answer of a counted call carries it."""
    _hash: int = field(init=False, compare=False, repr=False)
    """The hash of ``(scope, rate)``, worked out once: a budget is half of the key of every
    draw's lease, and the rate's own ``__hash__`` is Python code."""

    def __post_init__(self) -> None:
        window = self.rate.get_expiry()
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "policy", f'"{self.scope}";q={self.rate.amount};w={window}')
        object.__setattr__(self, "_hash", hash((self.scope, self.rate)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limiter decided for one call."""

    budgets: tuple[Budget, ...]
    """Every budget the call drew on, person first (empty: nothing limits this caller)."""
    refused_by: Budget | None = None
    """The budget that refused the call; None: allowed."""
    retry_after: int = 0
    """Whole seconds until the refusing budget has room again (at least 1 when refused)."""
    checked: bool = True
    """False when the store failed and the call went through unchecked (fail open)."""

    @property
    def allowed(self) -> bool:
        return self.refused_by is None


@dataclass(frozen=True, slots=True)
class _Plan:
    """A client's budgets, built once: with a person, and for a machine token."""

    with_person: tuple[Budget, ...]
    machine: tuple[Budget, ...]
    with_person_allowed: Verdict
    """The verdict of a call all of ``with_person`` let through (immutable, so one serves
    every such call)."""
    machine_allowed: Verdict


def _plan(settings: RateLimitSettings, client: ClientRegistration | None) -> _Plan:
    own = client.rate_limits if client is not None else None
    client_rate = (own.client if own else None) or settings.client
    person_rate = (own.person if own else None) or settings.person
    client_budget = () if client_rate is None else (Budget("client", parse_rate(client_rate)),)
    person_budget = () if person_rate is None else (Budget("person", parse_rate(person_rate)),)
    with_person = person_budget + client_budget
    return _Plan(with_person, client_budget, Verdict(with_person), Verdict(client_budget))


class _Drawer:
    """What a call of one principal draws on the in-process store, worked out once per
    principal (the verifiers hand out one ``Principal`` per verified token): its budgets, the
    verdict of a call they all let through, and each budget's ``Window``."""

    __slots__ = ("allowed", "budgets", "principal", "windows")

    def __init__(
        self,
        principal: Principal,
        budgets: tuple[Budget, ...],
        allowed: Verdict,
        windows: tuple[Window, ...],
    ) -> None:
        self.principal = principal
        self.budgets = budgets
        self.allowed = allowed
        self.windows = windows


def _partition(principal: Principal, budget: Budget) -> str:
    return principal.client_id if budget.scope == "client" else person_partition(principal.owner)


def person_partition(owner: str) -> str:
    """The store's name for a person: a digest (personalised BLAKE2b), so neither a person key
    nor a subject sits in Redis."""
    return hashlib.blake2b(owner.encode(), digest_size=16, person=b"tongban-rl-v1").hexdigest()


class ApiRateLimiter:
    """Draws a call's budgets from the store and says whether it may go on."""

    def __init__(
        self,
        storage: Storage,
        settings: RateLimitSettings,
        clients: Iterable[ClientRegistration] = (),
        *,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store_kind = (
            "redis"
            if isinstance(storage, RedisStorage)
            else "sqlite"
            if isinstance(storage, SqliteStorage)
            else "memory"
        )
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._local = storage if isinstance(storage, SqliteStorage) else None
        self._redis = storage if isinstance(storage, RedisBudgetStorage) else None
        self._memory = storage if isinstance(storage, LocalMemoryStorage) else None
        # Store keys of (budget, partition), so a call's keys are not built and digested anew.
        # Each a Lease: on a shared store, also the block this process holds on the budget.
        self._keys: dict[tuple[Budget, str], Lease] = {}
        # In-process store: each principal's budgets and windows by the principal's identity
        # (the entry holds the principal, so its id is not reused while the entry exists).
        self._drawers: dict[int, _Drawer] = {}
        self._shared = self._local is not None or self._redis is not None
        self._leases = self._shared and settings.leases
        self._clock = clock
        self._running = KeptLoop()
        """The loop of a lease's refill future (``KeptLoop``: no system call per refill)."""
        self._timeout = timeout
        self._close = close
        self._default = _plan(settings, None)
        self._plans = {client.client_id: _plan(settings, client) for client in clients}
        # One failure opens it; after retry_interval one call probes the store again.
        self._breaker = CircuitBreaker(
            "rate-limit-store",
            failure_threshold=1,
            reset_timeout=settings.retry_interval,
            half_open_max_calls=1,
            clock=clock,
        )

    @classmethod
    def from_settings(
        cls,
        settings: RateLimitSettings,
        clients: Iterable[ClientRegistration] = (),
        *,
        redis_url: str | None = None,
        data_dir: Path | None = None,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> ApiRateLimiter:
        """The limiter ``settings`` describe; ``redis_url`` is where a 'redis' store lives,
        ``data_dir`` where a 'sqlite' one keeps its file. ``clock`` times the pause after a
        store failure (the windows run on the store's)."""
        if settings.store == "memory":
            memory = LocalMemoryStorage()
            return cls(memory, settings, clients, clock=clock, close=lambda: _stop_sweeper(memory))
        if settings.store == "sqlite":
            if data_dir is None:
                raise ValueError("a sqlite rate-limit store needs a data directory")
            local = SqliteStorage.in_data_dir(data_dir, busy_timeout=settings.store_timeout)
            return cls(
                local,
                settings,
                clients,
                timeout=settings.store_timeout,
                clock=clock,
                close=local.aclose,
            )
        url = redis_url or settings.redis_url
        if url is None:
            raise ValueError("a redis rate-limit store needs a redis_url")
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=settings.store_timeout,
            socket_timeout=settings.store_timeout,
            socket_connect_timeout=settings.store_timeout,
        )
        # limits joins its prefix to each key with ':'; ours already ends with one.
        redis = RedisBudgetStorage(
            f"async+{url}", key_prefix=settings.redis_prefix.removesuffix(":"), connection_pool=pool
        )
        return cls(
            redis, settings, clients, timeout=settings.store_timeout, clock=clock, close=pool.aclose
        )

    def budgets(self, principal: Principal) -> tuple[Budget, ...]:
        """The budgets a call by ``principal`` draws on, in the order they are drawn."""
        plan = self._plans.get(principal.client_id, self._default)
        return plan.machine if principal.level == MACHINE_LEVEL else plan.with_person

    @property
    def healthy(self) -> bool:
        """False while calls go through unchecked after a store failure."""
        return self._breaker.state is BreakerState.CLOSED

    async def check(self, principal: Principal) -> Verdict:
        """Draw one call from each budget of ``principal``; stop at the first that refuses."""
        memory = self._memory
        if memory is not None:
            drawer = self._drawers.get(id(principal))
            if drawer is None or drawer.principal is not principal:
                drawer = self._drawer(principal)
            if not drawer.windows:
                return drawer.allowed
            if self._breaker.state is not BreakerState.CLOSED:
                return await self._check_memory(principal, drawer)
            # ``_check_memory`` with the breaker closed: nothing awaited unless refused.
            try:
                refused = memory.draw_each(drawer.windows)
                if refused < 0:
                    self._breaker.record_success()
                    return drawer.allowed
                budgets = drawer.budgets
                verdict = await self._refused(principal, budgets, budgets[refused])
            except (StorageError, TimeoutError) as exc:
                self._failed(exc)
                return Verdict(drawer.budgets, checked=False)
            except BaseException:
                self._breaker.record_neutral()
                raise
            self._succeeded()
            return verdict
        plan = self._plans.get(principal.client_id, self._default)
        if principal.level == MACHINE_LEVEL:
            budgets, allowed = plan.machine, plan.machine_allowed
        else:
            budgets, allowed = plan.with_person, plan.with_person_allowed
        if not budgets:
            return allowed
        if self._shared:
            return await self._check_shared(principal, budgets, allowed)
        return await self._guarded(budgets, lambda: self._draw(principal, budgets))

    async def _check_shared(
        self, principal: Principal, budgets: tuple[Budget, ...], allowed: Verdict
    ) -> Verdict:
        """SQLite or Redis: the budgets this process holds a block of are spent locally, the
        others drawn in one store step, blocks for the hot ones with them (leases.py).
        ``allowed``: the plan's verdict of a call all of ``budgets`` let through."""
        leases = [self._lease(principal, budget) for budget in budgets]
        if not self._leases:
            return await self._draw_shared(budgets, leases, [1] * len(budgets), 0.0, allowed)
        now = self._clock()
        taken = [lease.take(now) for lease in leases]
        while not all(taken):
            pending = [lease.refilling for lease, ok in zip(leases, taken, strict=True) if not ok]
            if not all(pending):
                break
            # Only blocks already on their way are missing: wait for them, not a store step
            # (one comes, or fails, within the store timeout of the call that asked for it).
            await asyncio.gather(*(asyncio.shield(block) for block in pending if block))
            now = self._clock()
            taken = [ok or lease.spend(now) for lease, ok in zip(leases, taken, strict=True)]
        else:
            return allowed  # all from blocks the store granted this process
        loop = self._running
        wanted = [
            0 if ok else lease.block(now, loop) for lease, ok in zip(leases, taken, strict=True)
        ]
        local = self._local
        if local is not None and self._breaker.state is BreakerState.CLOSED:
            if local.alone():
                return self._draw_alone(local, budgets, leases, wanted, now, allowed)
            # ``_draw_shared`` on SQLite with the breaker closed, written out here: queued for
            # the transaction the calls of this turn share, without a coroutine of its own (one
            # frame less to create, suspend and resume) or the breaker's step object; the same
            # answers and the same account to the breaker (``_StoreStep``'s).
            drawn, entries = _keyed_entries(budgets, leases, wanted)
            try:
                answer = await local.draw(entries)
                verdict = self._verdict(budgets, leases, wanted, drawn, now, answer, allowed)
            except (StorageError, TimeoutError) as exc:
                self._failed(exc)
                return Verdict(budgets, checked=False)  # the store failed: let through
            except BaseException:
                self._breaker.record_neutral()
                raise
            finally:
                _blocks_done(leases, wanted)
            self._succeeded()
            return verdict
        try:
            return await self._draw_shared(budgets, leases, wanted, now, allowed)
        finally:
            _blocks_done(leases, wanted)

    def _draw_alone(
        self,
        local: SqliteStorage,
        budgets: tuple[Budget, ...],
        leases: list[Lease],
        wanted: list[int],
        now: float,
        allowed: Verdict,
    ) -> Verdict:
        """``_draw_shared`` on SQLite with the breaker closed and nothing to share the
        transaction (``SqliteStorage.alone``): drawn at once, without a coroutine or the
        breaker's step object, as the memory store's draw is; the same answers, and the same
        account to the breaker (a success; a store error counted and the call let through
        unchecked; anything else neutral)."""
        drawn, entries = _keyed_entries(budgets, leases, wanted)
        try:
            answer = local.acquire_calls((entries,))[0]
            verdict = self._verdict(budgets, leases, wanted, drawn, now, answer, allowed)
        except sqlite3.Error as exc:
            self._failed(StorageError(exc))
            return Verdict(budgets, checked=False)  # the store failed: let through, unchecked
        except BaseException:
            self._breaker.record_neutral()
            raise
        finally:
            _blocks_done(leases, wanted)
        self._breaker.record_success()
        return verdict

    async def _draw_shared(
        self,
        budgets: tuple[Budget, ...],
        leases: list[Lease],
        wanted: list[int],
        now: float,
        allowed: Verdict,
    ) -> Verdict:
        """Draw ``wanted`` units (0: spent from a block already) of each budget in one store
        step, in order; stop at the first without room. Guarded as ``_guarded``. On SQLite the
        step is a transaction on the loop, shared by the calls queued in one turn, or run at
        once when nothing could share it (sqlite_storage.py); no timeout to arm: the drain runs
        on the next turn, and its wait for another process's lock is bounded by the store's
        timeout."""
        drawn = [index for index, units in enumerate(wanted) if units]
        if self._redis is not None:
            redis = self._redis
            entries = [
                (leases[i].names, budgets[i].rate.amount, budgets[i].window, wanted[i])
                for i in drawn
            ]
            return await self._guarded(
                budgets,
                lambda: self._answered(
                    budgets, leases, wanted, drawn, now, redis.acquire_all(entries), allowed
                ),
            )
        local = self._local
        assert local is not None
        step = self._step()
        if step is None:
            return Verdict(budgets, checked=False)
        with step:
            keyed = [
                (leases[i].key, budgets[i].rate.amount, budgets[i].window, wanted[i]) for i in drawn
            ]
            if local.alone():
                try:
                    answer = local.acquire_all(keyed)
                except sqlite3.Error as exc:
                    raise StorageError(exc) from exc
            else:
                answer = await local.draw(keyed)  # with the calls queued in this turn
            return self._verdict(budgets, leases, wanted, drawn, now, answer, allowed)
        return Verdict(budgets, checked=False)  # the store failed: let through, unchecked

    async def _answered(
        self,
        budgets: tuple[Budget, ...],
        leases: list[Lease],
        wanted: list[int],
        drawn: list[int],
        now: float,
        answer: Awaitable[Drawn],
        allowed: Verdict,
    ) -> Verdict:
        return self._verdict(budgets, leases, wanted, drawn, now, await answer, allowed)

    @staticmethod
    def _verdict(
        budgets: tuple[Budget, ...],
        leases: list[Lease],
        wanted: list[int],
        drawn: list[int],
        now: float,
        answer: Drawn,
        allowed: Verdict,
    ) -> Verdict:
        """The verdict of the store's ``answer`` to the draws of ``wanted`` (``drawn``: the
        indexes of the budgets drawn from the store, in order); the blocks it granted kept,
        units taken from a block for a budget after a refusal given back. ``allowed``, the
        plan's verdict of a call all its budgets let through, when nothing refused."""
        for index, units in zip(drawn, answer.granted, strict=False):
            if units:
                leases[index].granted(units, now)
                continue
            # Refused: a unit taken from a block for a later budget was not spent.
            for later in range(index + 1, len(budgets)):
                if not wanted[later]:
                    leases[later].give_back(now)
            budget = budgets[index]
            assert answer.window is not None
            seconds = retry_after(answer.window, budget.window)
            return Verdict(budgets, refused_by=budget, retry_after=seconds)
        return allowed

    def _drawer(self, principal: Principal) -> _Drawer:
        """``principal``'s budgets on the in-process store, kept by its identity (at most
        ``_KEY_CACHE`` principals, then the memory starts over)."""
        plan = self._plans.get(principal.client_id, self._default)
        if principal.level == MACHINE_LEVEL:
            budgets, allowed = plan.machine, plan.machine_allowed
        else:
            budgets, allowed = plan.with_person, plan.with_person_allowed
        windows = tuple(
            Window(self._lease(principal, budget).key, budget.rate.amount, budget.window)
            for budget in budgets
        )
        drawer = _Drawer(principal, budgets, allowed, windows)
        if len(self._drawers) >= _KEY_CACHE:
            self._drawers.clear()
        self._drawers[id(principal)] = drawer
        return drawer

    async def _check_memory(self, principal: Principal, drawer: _Drawer) -> Verdict:
        """Drawn from the in-process counters without awaiting them, with the same answers as
        any store (the window's statistics are read only for a refusal's Retry-After). The
        same guard as ``_guarded`` but no timeout (nothing here waits): the path of a breaker
        not closed; ``check`` takes the same steps itself while it is."""
        memory = self._memory
        assert memory is not None
        budgets = drawer.budgets
        step = self._step()
        if step is None:
            return Verdict(budgets, checked=False)
        with step:
            refused = memory.draw_each(drawer.windows)
            if refused < 0:
                return drawer.allowed
            return await self._refused(principal, budgets, budgets[refused])
        return Verdict(budgets, checked=False)  # the store failed: let through, unchecked

    def _lease(self, principal: Principal, budget: Budget) -> Lease:
        """The store's key of ``budget`` for ``principal`` with this process's lease on it
        (cached: a few thousand persons' keys; when full, all but the leased ones dropped)."""
        owner = principal.client_id if budget.scope == "client" else principal.owner
        lease = self._keys.get((budget, owner))
        if lease is None:
            if len(self._keys) >= _KEY_CACHE:
                hot = {slot: lease for slot, lease in self._keys.items() if lease.hot}
                self._keys = hot if len(hot) < _KEY_CACHE // 2 else {}
            key = budget.rate.key_for(budget.scope, _partition(principal, budget))
            names = self._redis.window_keys(key) if self._redis is not None else []
            lease = self._keys[(budget, owner)] = Lease(key, names, budget.rate.amount)
        return lease

    async def hit(self, draws: Iterable[tuple[Budget, str]], *, peek: bool = False) -> Verdict:
        """Draw one from each ``(budget, partition)`` in order, stopping at the first that is
        spent: the endpoint guards' budgets (per source address, per client). ``peek`` only
        asks whether each has room, drawing nothing. Partitions are digested before they reach
        the store, like a person's."""
        pairs = tuple((budget, person_partition(partition)) for budget, partition in draws)
        budgets = tuple(budget for budget, _ in pairs)
        if not budgets:
            return Verdict(budgets)
        return await self._guarded(budgets, lambda: self._draw_keyed(pairs, peek=peek))

    async def _guarded(
        self, budgets: tuple[Budget, ...], draw: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        """``draw`` within the store timeout, behind the store's breaker: a store that fails
        or is slow lets the call through unchecked."""
        step = self._step()
        if step is None:
            return Verdict(budgets, checked=False)
        with step:
            async with asyncio.timeout(self._timeout):
                return await draw()
        return Verdict(budgets, checked=False)  # the store failed: let through, unchecked

    def _step(self) -> _StoreStep | None:
        """The breaker's account of one store step, or None while the circuit is open."""
        try:
            self._breaker.before_call()
        except CircuitOpen:
            return None
        return _StoreStep(self)

    async def _draw_keyed(self, pairs: tuple[tuple[Budget, str], ...], *, peek: bool) -> Verdict:
        budgets = tuple(budget for budget, _ in pairs)
        for budget, partition in pairs:
            if peek:
                room = await self._strategy.test(budget.rate, budget.scope, partition)
            else:
                room = await self._strategy.hit(budget.rate, budget.scope, partition)
            if room:
                continue
            stats = await self._strategy.get_window_stats(budget.rate, budget.scope, partition)
            retry_after = max(math.ceil(stats.reset_time - time.time()), 1)
            return Verdict(budgets, refused_by=budget, retry_after=retry_after)
        return Verdict(budgets)

    async def _draw(self, principal: Principal, budgets: tuple[Budget, ...]) -> Verdict:
        """Any other ``limits`` storage: one draw per budget through the library."""
        for budget in budgets:
            partition = _partition(principal, budget)
            if await self._strategy.hit(budget.rate, budget.scope, partition):
                continue
            return await self._refused(principal, budgets, budget)
        return Verdict(budgets)

    async def _refused(
        self, principal: Principal, budgets: tuple[Budget, ...], budget: Budget
    ) -> Verdict:
        """The verdict of a call ``budget`` refused, with the seconds until it has room."""
        stats = await self._strategy.get_window_stats(
            budget.rate, budget.scope, _partition(principal, budget)
        )
        retry_after = max(math.ceil(stats.reset_time - time.time()), 1)
        return Verdict(budgets, refused_by=budget, retry_after=retry_after)

    def _failed(self, exc: BaseException) -> None:
        state = self._breaker.state
        if state is BreakerState.OPEN:
            # A call of the same failed step (a shared transaction or round trip), or of one
            # begun before the store was paused: the failure is counted already.
            return
        if state is BreakerState.CLOSED:  # once per outage, not once per call
            cause = exc.storage_error if isinstance(exc, StorageError) else exc
            log.warning("rate_limit_store_failed", error_code=type(cause).__name__)
        self._breaker.record_failure()

    def _succeeded(self) -> None:
        if self._breaker.state is not BreakerState.CLOSED:
            log.info("rate_limit_store_recovered")
        self._breaker.record_success()

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()


async def _stop_sweeper(storage: MemoryStorage) -> None:
    # MemoryStorage runs its expiry pass as a task it never cancels until garbage collection.
    timer = storage.timer
    if timer is not None and not timer.done():
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


class _StoreStep:
    """The store breaker's account of one step of the rate-limit store: a success is counted
    as one, a store failure or timeout against it and swallowed (the call goes through
    unchecked), anything else (a cancellation: the client went away) says nothing of the
    store's health and goes on."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: ApiRateLimiter) -> None:
        self._limiter = limiter

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        limiter = self._limiter
        if exc is None:
            limiter._succeeded()
            return False
        if isinstance(exc, (StorageError, TimeoutError)):
            limiter._failed(exc)
            return True
        limiter._breaker.record_neutral()
        return False


def _keyed_entries(
    budgets: tuple[Budget, ...], leases: list[Lease], wanted: list[int]
) -> tuple[list[int], list[tuple[str, int, int, int]]]:
    """The budgets drawn (``wanted`` units, not 0) and their entries for the SQLite store's
    draw: each lease's key, the budget's amount and window, the units wanted."""
    drawn = [index for index, units in enumerate(wanted) if units]
    entries = [(leases[i].key, budgets[i].rate.amount, budgets[i].window, wanted[i]) for i in drawn]
    return drawn, entries


def _blocks_done(leases: list[Lease], wanted: list[int]) -> None:
    """The blocks asked for (more than one unit wanted) are settled, granted or not."""
    for lease, units in zip(leases, wanted, strict=True):
        if units > 1:
            lease.done()
