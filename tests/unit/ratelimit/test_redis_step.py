"""The Redis storage's steps on their own connection: failures on the wire and their recovery.

On the real Redis, through a small TCP relay in front of it where a test must cut a step's
connection or take the server away (a restart): the callers of the step that met the failure
each hear a StorageError of their own, and the next step opens a new connection and draws
correctly. A connection the server closed while idle is opened again before a step, as the pool
does for a connection it hands out; a server that lost its scripts gets the script loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import pytest
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.ratelimit import redis_storage
from gateway.ratelimit.config import RateLimitSettings
from gateway.ratelimit.limiter import ApiRateLimiter
from gateway.ratelimit.redis_storage import RedisBudgetStorage

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"

pytestmark = pytest.mark.redis


class Relay:
    """Bytes between the storage and Redis. ``cut``: the next command read from the storage is
    not passed on, and its connection is closed (the step never ran). ``stop``: the server goes
    away, every connection with it; ``start`` brings it back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.cut = False
        self.replies = asyncio.Event()
        """Cleared: Redis's replies are held back (a step that outlasts its timeout)."""
        self.replies.set()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(REDIS_HOST, REDIS_PORT)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.ensure_future(self._pump(reader, up_writer, cutting=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, cutting=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, cutting: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if cutting and self.cut:
                    self.cut = False
                    writer.close()
                    for each in self._writers:
                        each.close()
                    return
                if not cutting:
                    await self.replies.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay()
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def via(relay: Relay, prefix: str) -> RedisBudgetStorage:
    return RedisBudgetStorage(f"async+redis://127.0.0.1:{relay.port}/0", key_prefix=prefix)


async def close(store: RedisBudgetStorage) -> None:
    await store.bridge.storage.aclose()  # type: ignore[attr-defined]


def budget(store: RedisBudgetStorage, limit: int = 3) -> list[tuple[list[str], int, int, int]]:
    return [(store.window_keys("person"), limit, 3600, 1)]


async def test_a_step_cut_on_the_wire_fails_its_callers_and_the_next_reconnects(
    relay: Relay, prefix: str
) -> None:
    store = via(relay, prefix)
    try:
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert relay.accepted == 1
        relay.cut = True
        # One step on the wire (cut), five calls queued behind it for the next.
        first = asyncio.ensure_future(store.acquire_all(budget(store)))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(store.acquire_all(budget(store))) for _ in range(5)]
        with pytest.raises(StorageError):
            await first
        # The next step, on a new connection, draws the queued calls to the limit (3): the
        # cut step drew nothing.
        assert [drawn.granted for drawn in await asyncio.gather(*queued)] == [[1], [1]] + [[0]] * 3
        assert relay.accepted == 2
    finally:
        await close(store)


async def test_every_call_of_a_cut_step_hears_its_own_error(relay: Relay, prefix: str) -> None:
    store = via(relay, prefix)
    real = store._acquire_all
    gate = asyncio.Event()
    sent = 0

    async def wire(keys: list[str], args: list[int]) -> object:
        nonlocal sent
        sent += 1
        if sent == 1:
            await gate.wait()  # the first step held on the wire while four calls queue
        elif sent == 2:
            relay.cut = True  # the second step, the four calls together, is cut
        return await real(keys, args)

    store._acquire_all = wire  # type: ignore[assignment]
    try:
        first = asyncio.ensure_future(store.acquire_all(budget(store, limit=100)))
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(store.acquire_all(budget(store, 100))) for _ in range(4)]
        await asyncio.sleep(0)
        gate.set()
        assert (await first).granted == [1]
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(result, StorageError) for result in results)
        assert len({id(result) for result in results}) == 4  # each its own
        assert (await store.acquire_all(budget(store, limit=100))).granted == [1]
        assert relay.accepted == 2
    finally:
        await close(store)


async def test_a_step_that_outlasts_its_timeout_fails_and_its_reply_is_not_read_later(
    relay: Relay, prefix: str
) -> None:
    store = RedisBudgetStorage(
        f"async+redis://127.0.0.1:{relay.port}/0?socket_timeout=0.2", key_prefix=prefix
    )
    spent = [(store.window_keys("spent"), 1, 3600, 1)]
    try:
        assert (await store.acquire_all(spent)).granted == [1]
        relay.replies.clear()
        with pytest.raises(StorageError) as failed:
            await store.acquire_all(spent)  # refused by Redis, the refusal held back
        assert isinstance(failed.value.storage_error, RedisTimeoutError)
        relay.replies.set()
        # A new connection: this step's answer is its own, not the late refusal.
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert relay.accepted == 2
    finally:
        await close(store)


async def test_a_server_restart_fails_the_step_and_the_next_reconnects(
    relay: Relay, prefix: str
) -> None:
    store = via(relay, prefix)
    try:
        assert (await store.acquire_all(budget(store))).granted == [1]
        await relay.stop()
        with pytest.raises(StorageError):
            await store.acquire_all(budget(store))
        await relay.start()
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert (await store.acquire_all(budget(store))).granted == [0]  # the limit: 3
    finally:
        await close(store)


async def test_a_connection_killed_while_idle_is_opened_again(prefix: str) -> None:
    store = RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=prefix)
    try:
        assert (await store.acquire_all(budget(store))).granted == [1]
        connection = store._connection
        assert connection is not None
        await connection.send_command("CLIENT", "ID")
        own = await connection.read_response()
        async with Redis.from_url(REDIS_URL) as admin:
            assert (
                await admin.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "KILL", "ID", own
                )
                == 1
            )
        # As the pool would: the closed connection is noticed before the step and opened again.
        for _ in range(100):
            await asyncio.sleep(0.01)
            if connection._reader is not None and connection._reader.at_eof():
                break
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert (await store.acquire_all(budget(store))).granted == [0]
    finally:
        await close(store)


async def test_a_flushed_script_is_loaded_again(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of the script that only this test loads: the suite's other workers share the Redis
    # server and load the real one again at any moment after the flush.
    script = f"{redis_storage.ACQUIRE_ALL}\n-- {prefix}\n"
    monkeypatch.setattr(redis_storage, "ACQUIRE_ALL", script)
    monkeypatch.setattr(
        redis_storage, "SHA", hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    )
    store = RedisBudgetStorage(f"async+{REDIS_URL}", key_prefix=prefix)
    try:
        assert (await store.acquire_all(budget(store))).granted == [1]
        async with Redis.from_url(REDIS_URL) as admin:
            await admin.script_flush()
            assert await admin.script_exists(redis_storage.SHA) == [False]
            assert (await store.acquire_all(budget(store))).granted == [1]
            assert await admin.script_exists(redis_storage.SHA) == [True]
        assert (await store.acquire_all(budget(store))).granted == [1]
        assert (await store.acquire_all(budget(store))).granted == [0]
    finally:
        await close(store)


def test_the_command_is_packed_as_redis_py_packs_it() -> None:
    assert redis_storage.PACK_COMMAND is not None
    command = ("EVALSHA", redis_storage.SHA, 2, "p:{k/é}/-1", "p:{k/é}", 1, 1, 300, 60, 1)
    packed = redis_storage.PACK_COMMAND(command)
    assert packed == b"".join(Connection().pack_command(*command))


async def test_the_limiter_closes_the_steps_connection(prefix: str) -> None:
    settings = RateLimitSettings.model_validate(
        {"store": "redis", "redis_url": REDIS_URL, "redis_prefix": f"{prefix}:"}
    )
    limiter = ApiRateLimiter.from_settings(settings)
    store = limiter._redis
    assert store is not None
    await store.acquire_all(budget(store))
    connection = store._connection
    assert connection is not None
    assert connection.is_connected
    await limiter.aclose()
    assert not connection.is_connected
