"""``SessionStore`` on Redis, for several gateway instances sharing SSO sessions.

redis-py asyncio with a ``BlockingConnectionPool`` (the default pool raises at once
when full) owned by the client through ``Redis.from_pool``, so ``aclose()`` closes it. Data
expiry is Redis's own (``SET ... PX``, the session's deadline plus the grace); one-time pending
logins use ``GETDEL`` (atomic, Redis ≥ 6.2).

Deadlines live in one sorted set (``{prefix}deadlines``, score = deadline, member = key). A claim
is one Lua script (``ZRANGE ... BYSCORE LIMIT`` then ``ZREM`` of what it read); Redis runs a
script atomically, so with several gateway instances each expired key goes to exactly one of
them. Every key a script touches is passed in ``KEYS``, as Redis requires of scripts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.identity.sessions import DEFAULT_GRACE, SsoSession

_CLAIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return due
"""

_KEY_FOR_SID = """
local key = redis.call('GET', KEYS[1])
if not key then
  return false
end
local deadline = redis.call('ZSCORE', KEYS[2], key)
if deadline and tonumber(deadline) > tonumber(ARGV[1]) then
  return key
end
return false
"""

# The sid may already point at a newer handle (rotation): delete it only if it is still ours.
_DELETE_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisSessionStore:
    def __init__(
        self,
        client: Redis,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._grace = grace
        self._deadlines = f"{prefix}deadlines"
        self._claim = client.register_script(_CLAIM)
        self._key_for_sid = client.register_script(_KEY_FOR_SID)
        self._delete_if_same = client.register_script(_DELETE_IF_SAME)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        *,
        max_connections: int = 32,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE,
    ) -> RedisSessionStore:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout
        )
        return cls(Redis.from_pool(pool), prefix, clock=clock, grace=grace)

    def _k(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    async def put_session(self, key: str, session: SsoSession, ttl: float) -> None:
        deadline = self._clock() + ttl
        px = max(int((ttl + self._grace) * 1000), 1)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("s", key), session.to_json(), px=px)
            pipe.set(self._k("sid", session.sid), key, px=px)
            pipe.zadd(self._deadlines, {key: deadline})
            await pipe.execute()

    async def get_session(self, key: str) -> SsoSession | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._k("s", key))
            pipe.zscore(self._deadlines, key)
            raw, deadline = await pipe.execute()
        # No score: claimed (about to be ended) or never given a deadline.
        if raw is None or deadline is None or float(deadline) <= self._clock():
            return None
        return SsoSession.from_json(raw)

    async def delete_session(self, key: str) -> SsoSession | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.getdel(self._k("s", key))
            pipe.zrem(self._deadlines, key)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        session = SsoSession.from_json(raw)
        await self._delete_if_same(keys=[self._k("sid", session.sid)], args=[key])
        return session

    async def key_for_sid(self, sid: str) -> str | None:
        raw = await self._key_for_sid(
            keys=[self._k("sid", sid), self._deadlines], args=[repr(self._clock())]
        )
        return None if raw is None else _text(raw)

    async def claim_expired(self, now: float, limit: int) -> list[str]:
        due = await self._claim(keys=[self._deadlines], args=[repr(now), limit])
        return [_text(key) for key in due]

    async def put_pending(self, key: str, data: Mapping[str, str], ttl: float) -> None:
        await self._redis.set(
            self._k("p", key), orjson.dumps(dict(data)), px=max(int(ttl * 1000), 1)
        )

    async def get_pending(self, key: str) -> dict[str, str] | None:
        raw = await self._redis.get(self._k("p", key))
        return None if raw is None else dict(orjson.loads(raw))

    async def take_pending(self, key: str) -> dict[str, str] | None:
        raw = await self._redis.getdel(self._k("p", key))
        return None if raw is None else dict(orjson.loads(raw))

    async def claim_once(self, key: str, ttl: float) -> bool:
        return bool(
            await self._redis.set(self._k("once", key), b"1", nx=True, px=max(int(ttl * 1000), 1))
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
