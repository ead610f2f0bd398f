"""What the provider remembers: codes, grant families, access-token ids, refresh tokens.

A *grant family* is everything issued from one authorization code (or one client-credentials
request): its access tokens and its chain of rotated refresh tokens. Revoking the family revokes
them all; that is how code replay (RFC 6749 §4.1.2, "SHOULD revoke all tokens previously issued
based on that authorization code") and refresh-token reuse (RFC 9700 §4.14.2) are answered.

Codes and refresh tokens are stored by SHA-256 hash only, so the store never holds a usable
credential. Access tokens are self-contained JWTs (RFC 9068); the store keeps their ``jti`` so
introspection (RFC 7662) and revocation (RFC 7009) work and the verifier can refuse a revoked one.
Codes and families do hold the user's userinfo claims (names, phone numbers): personal data.

Why the protocol is synchronous: authlib's grant callbacks (``query_authorization_code``,
``authenticate_refresh_token``, ...) are synchronous. Three stores implement it, and one contract
suite (tests/stores/test_identity_store_contract.py) runs on all three:

    MemoryIdentityStore   here: dictionaries; tests and throw-away runs
    SqliteIdentityStore   store_sqlite.py: ``identity.sqlite`` in the data directory; the
                          default for one instance, survives a restart
    RedisIdentityStore    store_redis.py: shared by several instances

A store whose calls wait on the network says so with ``blocking = True``; the provider then runs
every piece of synchronous work that touches it in a worker thread
(``OpenIDProvider.run_with_store``), so the event loop never waits on Redis. The memory and
SQLite stores answer in microseconds, less than a thread hop costs, and are called on the loop.

The two check-and-set operations (``redeem_code``, ``rotate_refresh_token``) are atomic in every
store, across threads and across instances: the first caller gets True, every later one False.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import orjson

from gateway.identity.authn import AuthenticatedUser


def credential_hash(value: str) -> str:
    """The key under which a code or refresh token is stored."""
    return hashlib.sha256(value.encode()).hexdigest()


def user_to_data(user: AuthenticatedUser) -> dict[str, Any]:
    """The user of a code or family as JSON-ready data (the persistent stores keep it so)."""
    return {
        "local_id": user.local_id,
        "acr": user.acr,
        "auth_time": user.auth_time,
        "amr": list(user.amr),
        "claims": dict(user.claims),
        "actor": user.actor,
        "actor_role": user.actor_role,
        "actor_local_id": user.actor_local_id,
        "roles": sorted(user.roles),
        "session_id": user.session_id,
        "acr_until": user.acr_until,
        "base_acr": user.base_acr,
    }


def user_from_data(data: Mapping[str, Any]) -> AuthenticatedUser:
    return AuthenticatedUser(
        local_id=data["local_id"],
        acr=data["acr"],
        auth_time=data["auth_time"],
        amr=tuple(data["amr"]),
        claims=data["claims"],
        actor=data["actor"],
        actor_role=data["actor_role"],
        actor_local_id=data.get("actor_local_id"),  # absent in records written before it
        roles=frozenset(data["roles"]),
        session_id=data["session_id"],
        acr_until=data["acr_until"],
        base_acr=data["base_acr"],
    )


def user_to_json(user: AuthenticatedUser) -> str:
    return orjson.dumps(user_to_data(user)).decode()


def user_from_json(text: str | bytes) -> AuthenticatedUser:
    return user_from_data(orjson.loads(text))


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """An authorization code (RFC 6749 §4.1.2) with what the token request must match."""

    client_id: str
    redirect_uri: str
    scope: str
    user: AuthenticatedUser
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    issued_at: float
    expires_at: float
    family_id: str | None = None
    """Set when the code is redeemed; a second redemption revokes this family."""

    # authlib's AuthorizationCodeMixin (rfc6749 + OIDC core) reads these:
    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.user.auth_time

    def get_acr(self) -> str:
        return self.user.acr

    def get_amr(self) -> list[str]:
        return list(self.user.amr)


@dataclass(frozen=True, slots=True)
class GrantFamily:
    family_id: str
    client_id: str
    user: AuthenticatedUser | None
    """None for client_credentials (the client acts for itself)."""
    scope: str
    created_at: float
    expires_at: float
    """No token of the family outlives this, however often it is refreshed."""
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class AccessTokenRecord:
    jti: str
    family_id: str
    client_id: str
    subject: str
    scope: str
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    token_hash: str
    family_id: str
    client_id: str
    scope: str
    issued_at: float
    expires_at: float
    rotated: bool = False
    """Already exchanged once: presenting it again is reuse."""
    revoked: bool = False


class IdentityStore(Protocol):
    """Synchronous storage for the provider (see the module docstring for why)."""

    blocking: ClassVar[bool]
    """True when a call may wait on the network: the provider then calls it off the loop."""

    def put_code(self, code_hash: str, record: CodeRecord) -> None: ...

    def get_code(self, code_hash: str) -> CodeRecord | None: ...

    def redeem_code(self, code_hash: str, family_id: str) -> bool:
        """Mark the code used by ``family_id``; False when it already was (compare-and-set)."""
        ...

    def nonce_seen(self, client_id: str, nonce: str) -> bool: ...

    def put_family(self, family: GrantFamily) -> None: ...

    def get_family(self, family_id: str) -> GrantFamily | None: ...

    def revoke_family(self, family_id: str) -> None: ...

    def put_access_token(self, record: AccessTokenRecord) -> None: ...

    def get_access_token(self, jti: str) -> AccessTokenRecord | None: ...

    def revoke_access_token(self, jti: str) -> None: ...

    def is_revoked(self, jti: str) -> bool:
        """Is this access token revoked, by itself or with its family?"""
        ...

    def put_refresh_token(self, record: RefreshTokenRecord) -> None: ...

    def put_tokens(self, access: AccessTokenRecord, refresh: RefreshTokenRecord | None) -> None:
        """Store what one token response issues, together: one transaction, one round trip."""
        ...

    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None: ...

    def get_refresh_grant(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, GrantFamily | None] | None:
        """A refresh token with its grant family, in one read: what a refresh request checks."""
        ...

    def rotate_refresh_token(self, token_hash: str) -> bool:
        """Mark it exchanged; False when it already was (compare-and-set)."""
        ...

    def revoke_session(self, sid: str) -> int:
        """Revoke every grant family (and unredeemed code) of SSO session ``sid``; how many."""
        ...

    def purge(self, now: float) -> int:
        """Forget what expired before ``now``; returns how many records went."""
        ...

    def counts(self) -> dict[str, int]:
        """How many records of each kind are held (metrics, and side-effect checks in tests)."""
        ...

    def close(self) -> None:
        """Release the connection; the store is not used afterwards."""
        ...


class MemoryIdentityStore:
    """The throw-away store: dictionaries, atomic because only the loop's thread calls it."""

    blocking: ClassVar[bool] = False

    def __init__(self) -> None:
        self._codes: dict[str, CodeRecord] = {}
        self._nonces: dict[tuple[str, str], float] = {}
        self._families: dict[str, GrantFamily] = {}
        self._access: dict[str, AccessTokenRecord] = {}
        self._refresh: dict[str, RefreshTokenRecord] = {}

    def put_code(self, code_hash: str, record: CodeRecord) -> None:
        self._codes[code_hash] = record
        if record.nonce:
            self._nonces[(record.client_id, record.nonce)] = record.expires_at

    def get_code(self, code_hash: str) -> CodeRecord | None:
        return self._codes.get(code_hash)

    def redeem_code(self, code_hash: str, family_id: str) -> bool:
        record = self._codes.get(code_hash)
        if record is None or record.family_id is not None:
            return False
        self._codes[code_hash] = replace(record, family_id=family_id)
        return True

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        return (client_id, nonce) in self._nonces

    def put_family(self, family: GrantFamily) -> None:
        self._families[family.family_id] = family

    def get_family(self, family_id: str) -> GrantFamily | None:
        return self._families.get(family_id)

    def revoke_family(self, family_id: str) -> None:
        family = self._families.get(family_id)
        if family is not None:
            self._families[family_id] = replace(family, revoked=True)

    def put_access_token(self, record: AccessTokenRecord) -> None:
        self._access[record.jti] = record

    def get_access_token(self, jti: str) -> AccessTokenRecord | None:
        return self._access.get(jti)

    def revoke_access_token(self, jti: str) -> None:
        record = self._access.get(jti)
        if record is not None:
            self._access[jti] = replace(record, revoked=True)

    def is_revoked(self, jti: str) -> bool:
        record = self._access.get(jti)
        if record is None:
            return False
        if record.revoked:
            return True
        family = self._families.get(record.family_id)
        return family is None or family.revoked

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._refresh[record.token_hash] = record

    def put_tokens(self, access: AccessTokenRecord, refresh: RefreshTokenRecord | None) -> None:
        self._access[access.jti] = access
        if refresh is not None:
            self._refresh[refresh.token_hash] = refresh

    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return self._refresh.get(token_hash)

    def get_refresh_grant(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, GrantFamily | None] | None:
        record = self._refresh.get(token_hash)
        return None if record is None else (record, self._families.get(record.family_id))

    def rotate_refresh_token(self, token_hash: str) -> bool:
        record = self._refresh.get(token_hash)
        if record is None or record.rotated:
            return False
        self._refresh[token_hash] = replace(record, rotated=True)
        return True

    def revoke_session(self, sid: str) -> int:
        # OIDC Back-Channel Logout 1.0 §2.7 leaves refresh tokens to the OP's policy: a logout
        # here ends every grant of the session, so no portal keeps calling /api for the user.
        revoked = 0
        for family_id, family in list(self._families.items()):
            if family.user is not None and family.user.session_id == sid and not family.revoked:
                self._families[family_id] = replace(family, revoked=True)
                revoked += 1
        for code_hash, code in list(self._codes.items()):
            if code.user.session_id == sid and code.family_id is None:
                del self._codes[code_hash]
        return revoked

    def counts(self) -> dict[str, int]:
        return {
            "codes": len(self._codes),
            "redeemed_codes": sum(1 for c in self._codes.values() if c.family_id is not None),
            "families": len(self._families),
            "revoked_families": sum(1 for f in self._families.values() if f.revoked),
            "access_tokens": len(self._access),
            "refresh_tokens": len(self._refresh),
        }

    def purge(self, now: float) -> int:
        gone = 0
        for table in (self._codes, self._access, self._refresh, self._families):
            expired = [key for key, rec in table.items() if rec.expires_at < now]
            for key in expired:
                del table[key]
            gone += len(expired)
        stale = [pair for pair, expires_at in self._nonces.items() if expires_at < now]
        for pair in stale:
            del self._nonces[pair]
        return gone

    def close(self) -> None:
        return None
