"""``limits``' Redis storage with every budget of a call drawn in one Lua script.

Through the library, a call's budgets cost one script each (``acquire_sliding_window_entry``:
one ``EVALSHA`` round trip per budget, plus the strategy's and the bridge's layers), about
250 µs of CPU per budget on loopback. ``acquire_all`` draws them all in one ``EVALSHA`` of a
script registered once: the same keys (``<prefix>:{<key>}`` and ``<prefix>:{<key>}/-1``), the
same shift of the current window into the previous one on Redis's own key expiry, the same
weighting of the previous window (``floor(previous * previous_ttl / expiry) + current``), so
the library's window statistics (a refusal's Retry-After, ``test``) read what it wrote, and
counters written by an older gateway during a rolling upgrade count as before. Held to the
library's answers, draw for draw, by tests/unit/ratelimit/test_redis_storage.py.

Budgets are drawn in order and the script stops at the first without room; those before it stay
drawn (one script: atomic, so two instances never both take a budget's last call). A draw may
ask for more than one unit and take what room is left, at least one (a block for a local lease,
``leases.py``); asking for one, it is exactly the library's draw.

Calls in flight together share a step. A draw that comes while none of this storage's is on the
wire goes at once, alone, as before. One that comes while a step is on the wire waits for it to
end, and then goes with every draw queued meanwhile in one script run (``MAX_CALLS`` at most):
one round trip, one reply parsed, for all of them, where each would have cost its own. The
script draws the calls one after the other, each call's budgets as above, so each gets the
answer it would have got alone had the calls reached Redis in that order, one right after the
other (one script: nothing else comes in between, and a call's budgets stay atomic). A step
that fails gives every call in it the error its own draw would have raised; a caller that gave
up before its step was sent draws nothing. A waiting call waits at most one step longer than
alone, and is counted against its own store timeout as before.

The steps (at most one on the wire at a time) go over one connection of their own, taken from
the storage's pool once and kept, rather than a checkout and a release per step, as ``EVALSHA``
packed and read directly instead of through redis-py's ``Script`` and client layers (the same
command, the same reply; a server that has lost the script gets it loaded and the step sent
again once, as ``Script`` does). Before a step the connection is checked as the pool checks one
it hands out: one the server closed while idle is opened again, and the step goes on it. A step
that fails on the wire (the server gone, the connection killed, the store timeout) is that
step's callers' StorageError; the connection is dropped and the next step opens a new one. The
pool's ``aclose``/``disconnect`` closes it with the others.

A call's keys hash to different slots, so this is for one Redis server (or a primary with
replicas), not Redis Cluster: the gateway's ``redis_url`` names one server.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.event_loop import KeptLoop
from gateway.ratelimit.draws import Drawn, caller_error

PACK_COMMAND: Callable[[tuple[Any, ...]], bytes] | None
"""hiredis's command packer: what redis-py's does with it, without its layers of Python."""
try:
    from hiredis import pack_command as PACK_COMMAND
except ImportError:  # pragma: no cover - hiredis is a dependency; redis-py's packer otherwise
    PACK_COMMAND = None

ACQUIRE_ALL = """
-- The budgets of one or more calls, each call's drawn in order, the calls one after the other,
-- in one step. ARGV[1] is the number of calls c and ARGV[1 + j] the number of budgets of call
-- j. Budget i (counted across the calls) has its previous and its current window counter in
-- KEYS[2i-1] and KEYS[2i], and its limit, window (seconds) and the units wanted in
-- ARGV[1 + c + 3i-2], ARGV[1 + c + 3i-1] and ARGV[1 + c + 3i]. Windows run on key expiry, in
-- milliseconds: a current counter with less than one window to live belongs to a window that
-- has ended, so it becomes the previous counter and a fresh one starts (the library's layout
-- and weighting, so that its window statistics read these counters).
-- Reply: for each call, the units granted to each of its budgets drawn, a 0 ending the list at
-- the first budget without room, and that budget's windows (previous count and TTL, current
-- count and TTL), or an empty list when every budget of the call had room.
local function ttl_of(name)
    local ms = tonumber(redis.call('pttl', name)) or 0
    if ms < 0 then
        return 0
    end
    return ms
end

local calls = tonumber(ARGV[1])

-- One call's budgets: the count budgets from the first-th on.
local function draw(first, count)
    local granted = {}
    for n = 1, count do
        local i = first + n - 1
        local older, newer = KEYS[2 * i - 1], KEYS[2 * i]
        local limit = tonumber(ARGV[1 + calls + 3 * i - 2])
        local window_ms = tonumber(ARGV[1 + calls + 3 * i - 1]) * 1000
        local wanted = tonumber(ARGV[1 + calls + 3 * i])

        local newer_ttl = ttl_of(newer)
        if newer_ttl > 0 and newer_ttl < window_ms then
            redis.call('rename', newer, older)
            redis.call('set', newer, 0, 'PX', newer_ttl + window_ms)
        end
        local older_count = tonumber(redis.call('get', older)) or 0
        local older_ttl = ttl_of(older)
        local newer_count = tonumber(redis.call('get', newer)) or 0
        local room = limit - (math.floor(older_count * older_ttl / window_ms) + newer_count)
        if room < 1 then
            granted[n] = 0
            return {granted, {older_count, older_ttl, newer_count, ttl_of(newer)}}
        end
        local take = math.min(wanted, room)
        if redis.call('exists', newer) == 1 then
            redis.call('incrby', newer, take)
        else
            redis.call('set', newer, take, 'PX', window_ms * 2)
        end
        granted[n] = take
    end
    return {granted, {}}
end

local replies = {}
local first = 1
for j = 1, calls do
    local count = tonumber(ARGV[1 + j])
    replies[j] = draw(first, count)
    first = first + count
end
return replies
"""

SHA = hashlib.sha1(ACQUIRE_ALL.encode(), usedforsecurity=False).hexdigest()
"""The name Redis knows ``ACQUIRE_ALL`` by once loaded."""

MAX_CALLS = 128
"""The most calls' draws one step carries; more wait for the next."""

Draws = Sequence[tuple[Sequence[str], int, int, int]]
"""One call's budgets: ``(window_keys, limit, expiry, wanted)`` each, in order."""


class RedisBudgetStorage(RedisStorage):
    """``limits``' ``RedisStorage`` (redis-py) plus ``acquire_all``: one script per call, or
    per the calls in flight together."""

    STORAGE_SCHEME: list[str] = ["tongban+redis"]  # noqa: RUF012 - as limits declares it

    def __init__(self, uri: str, *, key_prefix: str, **options: Any) -> None:
        super().__init__(
            uri, implementation="redispy", key_prefix=key_prefix, wrap_exceptions=True, **options
        )
        assert isinstance(self.bridge, RedispyBridge)
        # The bridge's client is redis-py's Redis (implementation "redispy", one server).
        self._pool: ConnectionPool = cast("Redis", self.bridge.get_connection()).connection_pool
        self._connection: AbstractConnection | None = None
        """The steps' own connection, taken from ``_pool`` at the first step and kept."""
        self._timeout: float | None = self._pool.connection_kwargs.get("socket_timeout")
        """The most a step's write and read may take together: the pool's socket timeout."""
        self._acquire_all: Callable[[Sequence[str], Sequence[int]], Awaitable[Any]]
        self._acquire_all = self._evalsha
        """A step's run of the script: ``(keys, args)`` to Redis's reply."""
        self._sending = False
        """A step is on the wire: a draw now waits in ``_queued`` for the next."""
        self._queued: list[tuple[Draws, asyncio.Future[Drawn]]] = []
        self._sender: asyncio.Task[None] | None = None
        """The task sending the queued draws (held: the loop keeps only a weak reference)."""
        self._running = KeptLoop()
        """The loop of the queued draws' futures and the sender (``KeptLoop``: no ``getpid``
        system call per queued call on Python 3.11)."""

    def window_keys(self, key: str) -> list[str]:
        """The Redis names of ``key``'s previous and current window, as the library's."""
        current = self.bridge.prefixed_key(self._current_window_key(key))
        return [f"{current}/-1", current]

    async def acquire_all(self, draws: Draws) -> Drawn:
        """Draw from each ``(window_keys, limit, expiry, wanted)`` in order: the units granted
        to each budget drawn (``min(wanted, room)``), ending at the first without room with a 0
        (the draws before it stay counted), and that one's windows as the library's
        ``get_sliding_window`` reads them. Raises StorageError.

        With no step of this storage on the wire, the draw goes at once, alone. While one is,
        it waits for the next step, which carries every call's draws queued by then (see the
        module docstring): the same answer as alone, one round trip for all of them."""
        if not self._sending:
            self._sending = True
            try:
                return (await self._step([draws]))[0]
            finally:
                self._send_queued()
        answer: asyncio.Future[Drawn] = self._running().create_future()
        self._queued.append((draws, answer))
        return await answer

    def _send_queued(self) -> None:
        """After a step: the draws queued meanwhile go in the next, or nothing is on the wire."""
        if self._queued:
            self._sender = self._running().create_task(self._send())
        else:
            self._sending = False
            self._sender = None

    async def _send(self) -> None:
        """Send the queued draws, up to ``MAX_CALLS`` calls a step, until none is left."""
        try:
            while self._queued:
                batch = self._queued[:MAX_CALLS]
                del self._queued[:MAX_CALLS]
                # A caller that gave up (its timeout, or its client gone) before the step is
                # sent draws nothing, as it would have drawn nothing alone.
                batch = [(draws, answer) for draws, answer in batch if not answer.done()]
                if not batch:
                    continue
                try:
                    answers = await self._step([draws for draws, _ in batch])
                except Exception as exc:
                    # Every call of the step hears the error its draw would have met alone.
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(caller_error(exc))
                    continue
                except BaseException:
                    for _, answer in batch:
                        answer.cancel()
                    raise
                for (_, answer), drawn in zip(batch, answers, strict=True):
                    if not answer.done():
                        answer.set_result(drawn)
        finally:
            self._sending = False
            self._sender = None
            # Cancelled (the loop closing): whatever is still queued hears it too.
            for _, answer in self._queued:
                answer.cancel()
            self._queued.clear()

    async def _step(self, calls: Sequence[Draws]) -> list[Drawn]:
        """One script run for the draws of ``calls``; each call's answer. Raises StorageError."""
        keys: list[str] = []
        args: list[int] = [len(calls)]
        args += (len(draws) for draws in calls)
        for draws in calls:
            for window_keys, limit, expiry, wanted in draws:
                keys += window_keys
                args += (limit, expiry, wanted)
        try:
            replies = await self._acquire_all(keys, args)
        except self.base_exceptions as exc:
            raise StorageError(exc) from exc
        return [_drawn(granted, window) for granted, window in replies]

    async def _evalsha(self, keys: Sequence[str], args: Sequence[int]) -> Any:
        """``ACQUIRE_ALL`` run on the steps' connection; its reply. Raises redis-py's errors
        (the connection dropped on any but a reply of Redis's own)."""
        command: tuple[str | int, ...] = ("EVALSHA", SHA, len(keys), *keys, *args)
        try:
            # One timer for the write and the read together (and a reconnection's handshake),
            # not redis-py's two (one of them a task of its own per write); a step that outlasts
            # it drops the connection.
            async with asyncio.timeout(self._timeout):
                connection = await self._ready()
                try:
                    return await _call(connection, command)
                except NoScriptError:
                    # The server lost its scripts (a restart, SCRIPT FLUSH): load it, send again.
                    await _call(connection, ("SCRIPT", "LOAD", ACQUIRE_ALL))
                    return await _call(connection, command)
        except TimeoutError as exc:
            raise RedisTimeoutError("Timeout on a rate-limit step") from exc

    async def _ready(self) -> AbstractConnection:
        """The steps' connection, ready to send, as the pool hands one out: connected, and
        opened again if the server closed it (or left anything unread) since the last step."""
        connection = self._connection
        if connection is None:
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            assert isinstance(connection, AbstractConnection)
            self._connection = connection
            # The step's own timer bounds its write and read (``_evalsha``); connecting keeps
            # the pool's connect timeout.
            connection.socket_timeout = None
            return connection
        if connection.is_connected:
            try:
                if not await connection.can_read():
                    return connection
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pass
            await connection.disconnect()
        await connection.connect()  # type: ignore[no-untyped-call]
        return connection


async def _call(connection: AbstractConnection, command: tuple[str | int, ...]) -> Any:
    """Send one command on ``connection`` and read its reply. redis-py drops the connection when
    the write or the read fails (or is cancelled): the next step opens it again."""
    if PACK_COMMAND is not None:
        await connection.send_packed_command(PACK_COMMAND(command))
    else:  # pragma: no cover - hiredis is a dependency
        await connection.send_command(*command)
    return await connection.read_response()


def _drawn(granted: list[Any], window: list[Any]) -> Drawn:
    """One call's answer from its part of the script's reply."""
    if not window:
        return Drawn([int(units) for units in granted])
    previous, previous_ttl, current, current_ttl = (int(value) for value in window)
    return Drawn(
        [int(units) for units in granted],
        # Seconds, none below 0: as limits' redis-py bridge reads the same values.
        (previous, max(0, previous_ttl) / 1000, current, max(0, current_ttl) / 1000),
    )
