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

A call's keys hash to different slots, so this is for one Redis server (or a primary with
replicas), not Redis Cluster: the gateway's ``redis_url`` names one server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from limits.aio.storage import RedisStorage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.errors import StorageError

from gateway.ratelimit.draws import Drawn

ACQUIRE_ALL = """
-- A call's budgets, drawn in order in one step. Budget i has its previous and its current
-- window counter in KEYS[2i-1] and KEYS[2i], and its limit, window (seconds) and the units
-- wanted in ARGV[3i-2], ARGV[3i-1] and ARGV[3i]. Windows run on key expiry, in milliseconds:
-- a current counter with less than one window to live belongs to a window that has ended, so
-- it becomes the previous counter and a fresh one starts (the library's layout and weighting,
-- so that its window statistics read these counters).
-- Reply: the units granted to each budget drawn, a 0 ending the list at the first budget
-- without room, and that budget's windows (previous count and TTL, current count and TTL),
-- or an empty list when every budget had room.
local function ttl_of(name)
    local ms = tonumber(redis.call('pttl', name)) or 0
    if ms < 0 then
        return 0
    end
    return ms
end

local granted = {}
for i = 1, #KEYS / 2 do
    local older, newer = KEYS[2 * i - 1], KEYS[2 * i]
    local limit = tonumber(ARGV[3 * i - 2])
    local window_ms = tonumber(ARGV[3 * i - 1]) * 1000
    local wanted = tonumber(ARGV[3 * i])

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
        granted[i] = 0
        return {granted, {older_count, older_ttl, newer_count, ttl_of(newer)}}
    end
    local take = math.min(wanted, room)
    if redis.call('exists', newer) == 1 then
        redis.call('incrby', newer, take)
    else
        redis.call('set', newer, take, 'PX', window_ms * 2)
    end
    granted[i] = take
end
return {granted, {}}
"""


class RedisBudgetStorage(RedisStorage):
    """``limits``' ``RedisStorage`` (redis-py) plus ``acquire_all``, one script per call."""

    STORAGE_SCHEME: list[str] = ["tongban+redis"]  # noqa: RUF012 - as limits declares it

    def __init__(self, uri: str, *, key_prefix: str, **options: Any) -> None:
        super().__init__(
            uri, implementation="redispy", key_prefix=key_prefix, wrap_exceptions=True, **options
        )
        assert isinstance(self.bridge, RedispyBridge)
        self._acquire_all = self.bridge.get_connection().register_script(ACQUIRE_ALL.encode())

    def window_keys(self, key: str) -> list[str]:
        """The Redis names of ``key``'s previous and current window, as the library's."""
        current = self.bridge.prefixed_key(self._current_window_key(key))
        return [f"{current}/-1", current]

    async def acquire_all(self, draws: Sequence[tuple[Sequence[str], int, int, int]]) -> Drawn:
        """Draw from each ``(window_keys, limit, expiry, wanted)`` in order, in one script: the
        units granted to each budget drawn (``min(wanted, room)``), ending at the first without
        room with a 0 (the draws before it stay counted), and that one's windows as the
        library's ``get_sliding_window`` reads them. Raises StorageError."""
        keys: list[str] = []
        args: list[int] = []
        for window_keys, limit, expiry, wanted in draws:
            keys += window_keys
            args += (limit, expiry, wanted)
        try:
            granted, window = await self._acquire_all(keys, args)
        except self.base_exceptions as exc:
            raise StorageError(exc) from exc
        if not window:
            return Drawn([int(units) for units in granted])
        previous, previous_ttl, current, current_ttl = (int(value) for value in window)
        return Drawn(
            [int(units) for units in granted],
            # Seconds, none below 0: as limits' redis-py bridge reads the same values.
            (previous, max(0, previous_ttl) / 1000, current, max(0, current_ttl) / 1000),
        )
