"""``IdentityStore`` on Redis, for several gateway instances sharing codes and grant families.

redis-py's synchronous client, because the protocol is synchronous (authlib's callbacks are);
every call waits on the network, so ``blocking`` is True and the provider runs its store work in
a worker thread (``OpenIDProvider.run_with_store``), never on the event loop. The client is
thread-safe; its ``BlockingConnectionPool`` waits for a free connection instead of raising at
once when every worker thread holds one.

Layout, under one key prefix per deployment:

    {prefix}code:{sha256}    hash   an authorization code; ``family_id`` once redeemed
    {prefix}nonce:{sha256}   hash   a nonce seen for a client (hash of client id and nonce)
    {prefix}fam:{id}         hash   a grant family; ``revoked`` once revoked
    {prefix}at:{jti}         hash   an access token's record, its ``fam``; ``revoked`` once revoked
    {prefix}rt:{sha256}      hash   a refresh token, its ``fam``; ``rotated`` once exchanged
    {prefix}sid:{sid}        set    the families and codes of one SSO session (revoke_session)
    {prefix}expiry           zset   every record by its ``expires_at`` (purge)

A record's hash holds its unchanging fields as one JSON text (``d``) and beside it only the
fields that change (``family_id``, ``revoked``, ``rotated``): the scripts set those, and a read
parses four values instead of a dozen (redis-py's reply parser costs per value).

Every key expires by itself ``expiry_grace`` seconds after the record's ``expires_at`` (the grace
covers the provider's clock leeway: a revoked token must stay known as long as a verifier may
still accept it), so ``purge`` has little to do: it forgets, at the exact ``expires_at`` as the
other stores do, what has not yet gone by itself.

Check-and-set operations run as Lua scripts, atomic in Redis whichever instance or thread calls
them: ``redeem_code`` and ``rotate_refresh_token`` set their field only if the record exists and
the field does not. ``revoke_session``, ``is_revoked`` and ``purge`` reach keys they derive from
what they read, so the store needs a single Redis server (or a prefix with a hash tag, all keys
in one slot); Redis ≥ 7.0 (``PEXPIREAT ... NX/GT``). Run it with ``maxmemory-policy
noeviction`` and persistence (the cluster's Redis has ``appendonly yes``): an evicted or lost
record fails safe (an access token without its family counts as revoked) but a lost rotation or
redemption can no longer be recognised as reuse or replay.

``RedisRevocationList`` answers the access-token verifier on every /api request with the same
script on Redis's asyncio client: awaited on the loop, without the thread hop.

Redis failures leave this module as ``IdentityStoreUnavailable`` (503), in ``_redis_errors``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Final, cast

import orjson
import redis.asyncio
from redis import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.errors import IdentityStoreUnavailable
from gateway.identity.store import (
    AccessTokenRecord,
    CodeRecord,
    GrantFamily,
    RefreshTokenRecord,
    user_from_data,
    user_to_data,
)

DEFAULT_EXPIRY_GRACE: Final = 120.0
"""The largest ``ProviderSettings.leeway`` allowed."""
PURGE_BATCH: Final = 500

# Replace records and index them, all in one call. KEYS[1] the expiry index; ARGV[1] the key
# prefix, then per record: member, expires_at, expiry in ms since the epoch, session id ('' for
# none), number of fields, then field, value, ... (A script, not a pipeline of scripts: redis-py
# adds a SCRIPT EXISTS round trip to every pipeline that runs one.)
_PUT = """
local prefix, i = ARGV[1], 2
while i <= #ARGV do
  local member, score, expiry, sid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local last = i + 4 + 2 * tonumber(ARGV[i + 4])
  local key = prefix .. member
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, i + 5, last))
  redis.call('PEXPIREAT', key, expiry)
  redis.call('ZADD', KEYS[1], score, member)
  if sid ~= '' then
    local index = prefix .. 'sid:' .. sid
    redis.call('SADD', index, member)
    -- The index lives as long as its longest-lived member.
    redis.call('PEXPIREAT', index, expiry, 'NX')
    redis.call('PEXPIREAT', index, expiry, 'GT')
  end
  i = last + 1
end
return 1
"""
# Set ARGV[1] = ARGV[2] in hash KEYS[1] only if the record exists and the field is unset.
_CLAIM_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
"""
# Set a field of an existing record (HSET alone would create a record without expiry).
_SET_IF_PRESENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] the access token's record; ARGV[1] the family key prefix. Same rule as the memory
# store: unknown token, not revoked; revoked itself, or its family revoked or gone, revoked.
_IS_REVOKED = """
local token = redis.call('HMGET', KEYS[1], 'fam', 'revoked')
if not token[1] then return 0 end
if token[2] then return 1 end
local family = ARGV[1] .. token[1]
if redis.call('EXISTS', family) == 0 then return 1 end
return redis.call('HEXISTS', family, 'revoked')
"""
# KEYS[1] a refresh token's record; ARGV[1] the family key prefix. The record and its family's
# (empty when gone), flat field-value lists; nothing when the token is unknown.
_REFRESH_GRANT = """
local token = redis.call('HGETALL', KEYS[1])
if #token == 0 then return {} end
return {token, redis.call('HGETALL', ARGV[1] .. redis.call('HGET', KEYS[1], 'fam'))}
"""
# KEYS[1] the session's index set; ARGV[1] the key prefix. Revoke its families, drop its codes
# not yet redeemed; returns how many families were newly revoked.
_REVOKE_SESSION = """
local revoked = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. member
  if string.sub(member, 1, 4) == 'fam:' then
    if redis.call('EXISTS', key) == 1 and redis.call('HSETNX', key, 'revoked', '1') == 1 then
      revoked = revoked + 1
    end
  elseif redis.call('HEXISTS', key, 'family_id') == 0 then
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], member)
  end
end
return revoked
"""
# KEYS[1] the expiry index; ARGV: prefix, now, batch size. Deletes records with
# expires_at < now; returns {examined, records deleted (nonces not counted)}.
_PURGE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                           tonumber(ARGV[3]))
local gone = 0
for _, member in ipairs(members) do
  local removed = redis.call('DEL', ARGV[1] .. member)
  if string.sub(member, 1, 6) ~= 'nonce:' then gone = gone + removed end
  redis.call('ZREM', KEYS[1], member)
end
return {#members, gone}
"""


@contextmanager
def _redis_errors() -> Iterator[None]:
    """The one place Redis exceptions become ours."""
    try:
        yield
    except RedisError as exc:
        raise IdentityStoreUnavailable() from exc


def _data(fields: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(fields["d"])
    return data


def _family(family_id: str, fields: Mapping[str, str]) -> GrantFamily:
    data = _data(fields)
    user = data["user"]
    return GrantFamily(
        family_id=family_id,
        client_id=data["client_id"],
        user=None if user is None else user_from_data(user),
        scope=data["scope"],
        created_at=data["created_at"],
        expires_at=data["expires_at"],
        revoked="revoked" in fields,
    )


def _refresh_token(token_hash: str, fields: Mapping[str, str]) -> RefreshTokenRecord:
    data = _data(fields)
    return RefreshTokenRecord(
        token_hash=token_hash,
        family_id=data["family_id"],
        client_id=data["client_id"],
        scope=data["scope"],
        issued_at=data["issued_at"],
        expires_at=data["expires_at"],
        rotated="rotated" in fields,
        revoked="revoked" in fields,
    )


class RedisIdentityStore:
    """The identity store on Redis (see the module docstring)."""

    blocking: ClassVar[bool] = True

    def __init__(
        self, client: Redis, prefix: str, *, expiry_grace: float = DEFAULT_EXPIRY_GRACE
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._grace = expiry_grace
        self._put = client.register_script(_PUT)
        self._claim_once = client.register_script(_CLAIM_ONCE)
        self._set_if_present = client.register_script(_SET_IF_PRESENT)
        self._is_revoked = client.register_script(_IS_REVOKED)
        self._refresh_grant = client.register_script(_REFRESH_GRANT)
        self._revoke_session = client.register_script(_REVOKE_SESSION)
        self._purge = client.register_script(_PURGE)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        *,
        max_connections: int = 32,
        timeout: float = 2.0,
        expiry_grace: float = DEFAULT_EXPIRY_GRACE,
    ) -> RedisIdentityStore:
        """A store with its own pool; ``timeout`` bounds both waiting for a pooled connection
        and every socket operation, so a stalled Redis ties up a worker thread that long."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )
        # from_pool: the client owns the pool, so close() closes its connections too.
        return cls(Redis.from_pool(pool), prefix, expiry_grace=expiry_grace)

    # --- keys and records ----------------------------------------------------------------------

    def _k(self, member: str) -> str:
        return self._prefix + member

    @staticmethod
    def _nonce_member(client_id: str, nonce: str) -> str:
        # Hashed: a client id or nonce containing ':' cannot make two pairs share a key.
        digest = hashlib.sha256(f"{len(client_id)}:{client_id}:{nonce}".encode()).hexdigest()
        return f"nonce:{digest}"

    def _expire_ms(self, expires_at: float) -> int:
        return int((expires_at + self._grace) * 1000)

    def _record(
        self,
        member: str,
        fields: Mapping[str, str | None],
        expires_at: float,
        session_id: str | None = None,
    ) -> list[str]:
        """One record's part of the ``_PUT`` script's arguments (fields set to None omitted)."""
        present = [(name, value) for name, value in fields.items() if value is not None]
        args = [member, repr(expires_at), str(self._expire_ms(expires_at)), session_id or ""]
        args.append(str(len(present)))
        for name, value in present:
            args += [name, value]
        return args

    def _write(self, *records: list[str]) -> None:
        """Store ``records`` (from ``_record``) in one script call: all or none."""
        args = [self._prefix]
        for record in records:
            args += record
        with _redis_errors():
            self._put(keys=[self._k("expiry")], args=args)

    def _fields(self, member: str) -> dict[str, str]:
        with _redis_errors():
            return cast("dict[str, str]", self._redis.hgetall(self._k(member)))

    # --- codes and nonces ----------------------------------------------------------------------

    def put_code(self, code_hash: str, record: CodeRecord) -> None:
        member = f"code:{code_hash}"
        data = {
            "client_id": record.client_id,
            "redirect_uri": record.redirect_uri,
            "scope": record.scope,
            "user": user_to_data(record.user),
            "nonce": record.nonce,
            "code_challenge": record.code_challenge,
            "code_challenge_method": record.code_challenge_method,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
        fields = {"d": orjson.dumps(data).decode(), "family_id": record.family_id}
        code = self._record(member, fields, record.expires_at, record.user.session_id)
        if not record.nonce:
            self._write(code)
            return
        nonce = self._nonce_member(record.client_id, record.nonce)
        self._write(code, self._record(nonce, {"seen": "1"}, record.expires_at))

    def get_code(self, code_hash: str) -> CodeRecord | None:
        fields = self._fields(f"code:{code_hash}")
        if not fields:
            return None
        data = _data(fields)
        return CodeRecord(
            client_id=data["client_id"],
            redirect_uri=data["redirect_uri"],
            scope=data["scope"],
            user=user_from_data(data["user"]),
            nonce=data["nonce"],
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            issued_at=data["issued_at"],
            expires_at=data["expires_at"],
            family_id=fields.get("family_id"),
        )

    def redeem_code(self, code_hash: str, family_id: str) -> bool:
        with _redis_errors():
            done = self._claim_once(
                keys=[self._k(f"code:{code_hash}")], args=["family_id", family_id]
            )
        return bool(done)

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        with _redis_errors():
            return bool(self._redis.exists(self._k(self._nonce_member(client_id, nonce))))

    # --- grant families ------------------------------------------------------------------------

    def put_family(self, family: GrantFamily) -> None:
        user = family.user
        data = {
            "client_id": family.client_id,
            "user": None if user is None else user_to_data(user),
            "scope": family.scope,
            "created_at": family.created_at,
            "expires_at": family.expires_at,
        }
        fields = {"d": orjson.dumps(data).decode(), "revoked": "1" if family.revoked else None}
        self._write(
            self._record(
                f"fam:{family.family_id}",
                fields,
                family.expires_at,
                None if user is None else user.session_id,
            )
        )

    def get_family(self, family_id: str) -> GrantFamily | None:
        fields = self._fields(f"fam:{family_id}")
        return _family(family_id, fields) if fields else None

    def revoke_family(self, family_id: str) -> None:
        with _redis_errors():
            self._set_if_present(keys=[self._k(f"fam:{family_id}")], args=["revoked", "1"])

    # --- access tokens -------------------------------------------------------------------------

    def _access_record(self, record: AccessTokenRecord) -> list[str]:
        data = {
            "client_id": record.client_id,
            "subject": record.subject,
            "scope": record.scope,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
        fields = {
            "d": orjson.dumps(data).decode(),
            # Beside the JSON: the revocation script reads the family without parsing.
            "fam": record.family_id,
            "revoked": "1" if record.revoked else None,
        }
        return self._record(f"at:{record.jti}", fields, record.expires_at)

    def put_access_token(self, record: AccessTokenRecord) -> None:
        self._write(self._access_record(record))

    def get_access_token(self, jti: str) -> AccessTokenRecord | None:
        fields = self._fields(f"at:{jti}")
        if not fields:
            return None
        data = _data(fields)
        return AccessTokenRecord(
            jti=jti,
            family_id=fields["fam"],
            client_id=data["client_id"],
            subject=data["subject"],
            scope=data["scope"],
            issued_at=data["issued_at"],
            expires_at=data["expires_at"],
            revoked="revoked" in fields,
        )

    def revoke_access_token(self, jti: str) -> None:
        with _redis_errors():
            self._set_if_present(keys=[self._k(f"at:{jti}")], args=["revoked", "1"])

    def is_revoked(self, jti: str) -> bool:
        with _redis_errors():
            return bool(self._is_revoked(keys=[self._k(f"at:{jti}")], args=[self._k("fam:")]))

    # --- refresh tokens ------------------------------------------------------------------------

    def _refresh_record(self, record: RefreshTokenRecord) -> list[str]:
        data = {
            "family_id": record.family_id,
            "client_id": record.client_id,
            "scope": record.scope,
            "issued_at": record.issued_at,
            "expires_at": record.expires_at,
        }
        fields = {
            "d": orjson.dumps(data).decode(),
            "fam": record.family_id,  # for get_refresh_grant's script
            "rotated": "1" if record.rotated else None,
            "revoked": "1" if record.revoked else None,
        }
        return self._record(f"rt:{record.token_hash}", fields, record.expires_at)

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._write(self._refresh_record(record))

    def put_tokens(self, access: AccessTokenRecord, refresh: RefreshTokenRecord | None) -> None:
        records = [self._access_record(access)]
        if refresh is not None:
            records.append(self._refresh_record(refresh))
        self._write(*records)

    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        fields = self._fields(f"rt:{token_hash}")
        return _refresh_token(token_hash, fields) if fields else None

    def get_refresh_grant(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, GrantFamily | None] | None:
        with _redis_errors():
            found = cast(
                "list[list[str]]",
                self._refresh_grant(keys=[self._k(f"rt:{token_hash}")], args=[self._k("fam:")]),
            )
        if not found:
            return None
        token, family = (dict(zip(flat[::2], flat[1::2], strict=True)) for flat in found)
        record = _refresh_token(token_hash, token)
        return record, _family(record.family_id, family) if family else None

    def rotate_refresh_token(self, token_hash: str) -> bool:
        with _redis_errors():
            done = self._claim_once(keys=[self._k(f"rt:{token_hash}")], args=["rotated", "1"])
        return bool(done)

    # --- sessions, housekeeping ----------------------------------------------------------------

    def revoke_session(self, sid: str) -> int:
        # Same policy as MemoryIdentityStore: a logout ends every grant of the session.
        with _redis_errors():
            return int(self._revoke_session(keys=[self._k(f"sid:{sid}")], args=[self._prefix]))

    def purge(self, now: float) -> int:
        gone = 0
        with _redis_errors():
            while True:
                examined, removed = self._purge(
                    keys=[self._k("expiry")], args=[self._prefix, repr(now), PURGE_BATCH]
                )
                gone += int(removed)
                if int(examined) < PURGE_BATCH:
                    return gone

    def counts(self) -> dict[str, int]:
        """Walks the expiry index: one pipelined read per record (tests and metrics only)."""
        counts = dict.fromkeys(
            (
                "codes",
                "redeemed_codes",
                "families",
                "revoked_families",
                "access_tokens",
                "refresh_tokens",
            ),
            0,
        )
        kinds = {"code": "codes", "fam": "families", "at": "access_tokens", "rt": "refresh_tokens"}
        with _redis_errors():
            indexed = cast("list[str]", self._redis.zrange(self._k("expiry"), 0, -1))
            members = [m for m in indexed if not m.startswith("nonce:")]
            with self._redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hmget(self._k(member), ["d", "family_id", "revoked"])
                rows: list[list[Any]] = pipe.execute()
        for member, (data, family_id, revoked) in zip(members, rows, strict=True):
            if data is None:  # expired by itself, not purged yet
                continue
            kind = member.split(":", 1)[0]
            counts[kinds[kind]] += 1
            if kind == "code" and family_id is not None:
                counts["redeemed_codes"] += 1
            elif kind == "fam" and revoked is not None:
                counts["revoked_families"] += 1
        return counts

    def close(self) -> None:
        self._redis.close()


class RedisRevocationList:
    """``RevocationList`` (gateway/identity/verifier.py) on the store's keys, asynchronously."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._is_revoked = client.register_script(_IS_REVOKED)

    @classmethod
    def from_url(
        cls, url: str, prefix: str, *, max_connections: int = 32, timeout: float = 2.0
    ) -> RedisRevocationList:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )
        return cls(redis.asyncio.Redis.from_pool(pool), prefix)

    async def is_revoked(self, jti: str) -> bool:
        with _redis_errors():
            revoked = await self._is_revoked(
                keys=[f"{self._prefix}at:{jti}"], args=[f"{self._prefix}fam:"]
            )
        return bool(revoked)

    async def aclose(self) -> None:
        await self._redis.aclose()
