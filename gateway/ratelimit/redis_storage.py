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
-- KEYS: the previous and the current window of each budget, in draw order.
-- ARGV: limit, expiry (seconds) and units wanted of each budget.
-- Returns the units granted to each budget drawn, a refusal ending the list with a 0, and the
-- refusing budget's windows (previous count, its TTL, current count, its TTL) or nothing.
-- Per budget, the arithmetic of limits' acquire_sliding_window.lua (milliseconds).
local granted = {}
for i = 1, #KEYS / 2 do
    local previous_key = KEYS[2 * i - 1]
    local current_key = KEYS[2 * i]
    local limit = tonumber(ARGV[3 * i - 2])
    local expiry = tonumber(ARGV[3 * i - 1]) * 1000
    local wanted = tonumber(ARGV[3 * i])

    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        -- Current window expired, shift it to the previous window
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end

    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = tonumber(redis.call('pttl', previous_key)) or 0
    local current_count = tonumber(redis.call('get', current_key)) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count
    local room = limit - weighted_count
    if room < 1 then
        granted[i] = 0
        current_ttl = redis.call('pttl', current_key)
        return {granted, {previous_count, previous_ttl, current_count, current_ttl}}
    end
    local take = math.min(wanted, room)
    if redis.call('exists', current_key) == 1 then
        redis.call('incrby', current_key, take)
    else
        redis.call('set', current_key, take, 'PX', expiry * 2)
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
