"""``SessionStore`` on Redis, for several gateway instances sharing SSO sessions.

redis-py asyncio with a ``BlockingConnectionPool`` (NOTES.md: the default pool raises at once
when full) owned by the client through ``Redis.from_pool``, so ``aclose()`` closes it. Expiry is
Redis's own (``SET ... PX``); one-time pending logins use ``GETDEL`` (atomic, Redis ≥ 6.2).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.identity.sessions import SsoSession


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisSessionStore:
    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(
        cls, url: str, prefix: str, *, max_connections: int = 32, timeout: float = 2.0
    ) -> RedisSessionStore:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout
        )
        return cls(Redis.from_pool(pool), prefix)

    def _k(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    async def put_session(self, key: str, session: SsoSession, ttl: float) -> None:
        px = max(int(ttl * 1000), 1)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("s", key), session.to_json(), px=px)
            pipe.set(self._k("sid", session.sid), key, px=px)
            await pipe.execute()

    async def get_session(self, key: str) -> SsoSession | None:
        raw = await self._redis.get(self._k("s", key))
        return None if raw is None else SsoSession.from_json(raw)

    async def delete_session(self, key: str) -> SsoSession | None:
        raw = await self._redis.getdel(self._k("s", key))
        if raw is None:
            return None
        session = SsoSession.from_json(raw)
        sid_key = self._k("sid", session.sid)
        current = await self._redis.get(sid_key)
        if current is not None and _text(current) == key:
            await self._redis.delete(sid_key)
        return session

    async def key_for_sid(self, sid: str) -> str | None:
        raw = await self._redis.get(self._k("sid", sid))
        return None if raw is None else _text(raw)

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

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def aclose(self) -> None:
        await self._redis.aclose()
