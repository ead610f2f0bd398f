"""SSO sessions at the gateway and pending logins: the ``SessionStore`` protocol, in-memory store.

The browser holds only a random handle in a cookie; stores key sessions by SHA-256 of the handle,
so a store dump holds no usable cookie (same rule as codes in store.py). ``sid`` is the public
session id of OIDC Back-Channel Logout 1.0 §2.1 (``sid`` claim); it survives a step-up, while the
handle is replaced at every login (session fixation, OWASP ASVS V3.2.1).

Pending logins (the login page's transaction, the upstream round trip) are one-time records:
``take_pending`` reads and deletes atomically, so a callback cannot be replayed. ``claim_once``
is the same promise for a key the gateway must see only once across all its instances (an
upstream platform's ticket, which the platform itself may accept again).

Expiry: every session has a deadline, the earlier of its idle and absolute timeouts, given to
``put_session`` as a ttl. Past its deadline a session is absent for authentication
(``get_session``, ``key_for_sid``), but its data stays ``grace`` seconds longer and its key waits
in a deadline index until ``claim_expired`` hands it to exactly one caller, who ends it like a
logout (gateway/identity/sso.py: grants revoked, back-channel logout queued, audited). Without
that index a session whose browser never returns would vanish with no logout (OIDC Back-Channel
Logout 1.0 §2: the OP tells the RPs when the session ends, whatever ended it).
``delete_session`` also removes the key from the index, so a session ended by logout is never
claimed. A store's clock and the claimer's ``now`` must be the same clock.

The SQLite implementation (sqlite_sessions.py, the default: sessions survive a restart) and the
Redis one (redis_sessions.py, several instances) pass the same contract tests
(tests/unit/identity/test_session_store_contract.py).
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import orjson

DEFAULT_GRACE = 3600.0
"""Seconds a session's data outlives its deadline unless configured (``expiry_grace``)."""


def handle_hash(handle: str) -> str:
    return hashlib.sha256(handle.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SsoSession:
    """One signed-in browser."""

    sid: str
    local_id: str
    platform: str
    base_level: str
    """Level reached at the first login of this session."""
    level_raw: str
    level_scale: str
    auth_time: int
    created_at: float
    last_seen: float
    elevated_level: str | None = None
    """Level reached by a step-up, valid until ``elevated_until``."""
    elevated_until: float = 0.0
    amr: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    """Userinfo claims (OIDC Core §5.1): name and phone; never the ID number."""
    person_type: str = "natural"
    actor: str | None = None
    actor_role: str | None = None
    roles: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    """Clients that received a code in this session (back-channel logout goes to each)."""

    def level(self, now: float) -> str:
        if self.elevated_level is not None and now < self.elevated_until:
            return self.elevated_level
        return self.base_level

    def with_client(self, client_id: str, now: float) -> SsoSession:
        clients = self.clients if client_id in self.clients else (*self.clients, client_id)
        return replace(self, clients=clients, last_seen=now)

    def to_json(self) -> bytes:
        # orjson encodes the dataclass itself (tuples as arrays, like asdict did) at a tenth of
        # asdict's cost, which deep-copies every value; ``default`` turns any other Mapping of
        # claims into a dict.
        return orjson.dumps(self, default=dict)

    @classmethod
    def from_json(cls, raw: bytes | str) -> SsoSession:
        data = orjson.loads(raw)
        for name in ("amr", "roles", "clients"):
            data[name] = tuple(data.get(name) or ())
        return cls(**data)


class SessionStore(Protocol):
    """Where sessions and pending logins live; every TTL is in seconds."""

    async def put_session(self, key: str, session: SsoSession, ttl: float) -> None:
        """Store under ``key`` (a handle hash) and index by ``session.sid``.

        ``ttl`` is the time to the session's deadline (the earlier of its idle and absolute
        timeouts); the data is kept ``grace`` seconds longer so that it can still be ended.
        Storing again moves the deadline (the session was used).
        """
        ...

    async def get_session(self, key: str) -> SsoSession | None:
        """The session, or None when there is none or its deadline has passed."""
        ...

    async def delete_session(self, key: str) -> SsoSession | None:
        """Remove and return the session (None when there was none), also past its deadline
        within the grace; its key leaves the deadline index, so no claim returns it later."""
        ...

    async def key_for_sid(self, sid: str) -> str | None:
        """The key of session ``sid`` while its deadline has not passed."""
        ...

    async def claim_expired(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` keys whose deadline is at or before ``now``, earliest first.

        Each key is handed out once, whichever instance asks (the claim is atomic); the caller
        ends the session (``delete_session`` returns it, or None if its data outlived the grace).
        """
        ...

    async def put_pending(self, key: str, data: Mapping[str, str], ttl: float) -> None: ...

    async def get_pending(self, key: str) -> dict[str, str] | None: ...

    async def take_pending(self, key: str) -> dict[str, str] | None:
        """Read and delete in one step (one-time use)."""
        ...

    async def claim_once(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is claimed within ``ttl`` seconds, False after, whichever
        instance claimed it (atomic): the gateway's own record of used upstream tickets."""
        ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


PURGE_INTERVAL: Final = 5.0
"""Seconds between two sweeps of the in-memory tables for expired entries."""


class MemorySessionStore:
    """One-instance store: dictionaries with expiry, atomic because the loop is single-threaded."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, grace: float = DEFAULT_GRACE
    ) -> None:
        self._clock = clock
        self._grace = grace
        self._sessions: dict[str, tuple[float, bytes]] = {}
        self._deadlines: dict[str, float] = {}
        self._sids: dict[str, tuple[float, str]] = {}
        self._pending: dict[str, tuple[float, bytes]] = {}
        self._next_purge = 0.0

    def _live(self, table: dict[str, tuple[float, Any]], key: str) -> Any:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del table[key]
            return None
        return entry[1]

    def _before_deadline(self, key: str) -> bool:
        deadline = self._deadlines.get(key)
        return deadline is not None and self._clock() < deadline

    def _purge(self) -> None:
        # A full scan, at most once per PURGE_INTERVAL: a scan on every write made a login cost
        # O(live sessions) once there were more than a thousand of them.
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        for table in (self._sessions, self._sids, self._pending):
            for key in [k for k, (exp, _) in table.items() if exp <= now]:
                del table[key]
        # Keys nobody claimed before their data went: nothing is left to end.
        for key in [k for k, d in self._deadlines.items() if d + self._grace <= now]:
            del self._deadlines[key]

    async def put_session(self, key: str, session: SsoSession, ttl: float) -> None:
        self._purge()
        deadline = self._clock() + ttl
        kept_until = deadline + self._grace
        self._sessions[key] = (kept_until, session.to_json())
        self._deadlines[key] = deadline
        self._sids[session.sid] = (kept_until, key)

    async def get_session(self, key: str) -> SsoSession | None:
        raw = self._live(self._sessions, key)
        if raw is None or not self._before_deadline(key):
            return None
        return SsoSession.from_json(raw)

    async def delete_session(self, key: str) -> SsoSession | None:
        raw = self._live(self._sessions, key)
        self._sessions.pop(key, None)
        self._deadlines.pop(key, None)
        if raw is None:
            return None
        session = SsoSession.from_json(raw)
        if self._live(self._sids, session.sid) == key:
            del self._sids[session.sid]
        return session

    async def key_for_sid(self, sid: str) -> str | None:
        key = self._live(self._sids, sid)
        return None if key is None or not self._before_deadline(key) else str(key)

    async def claim_expired(self, now: float, limit: int) -> list[str]:
        due = heapq.nsmallest(limit, ((d, k) for k, d in self._deadlines.items() if d <= now))
        for _, key in due:
            del self._deadlines[key]
        return [key for _, key in due]

    async def put_pending(self, key: str, data: Mapping[str, str], ttl: float) -> None:
        self._purge()
        self._pending[key] = (self._clock() + ttl, orjson.dumps(dict(data)))

    async def get_pending(self, key: str) -> dict[str, str] | None:
        raw = self._live(self._pending, key)
        return None if raw is None else dict(orjson.loads(raw))

    async def take_pending(self, key: str) -> dict[str, str] | None:
        raw = self._live(self._pending, key)
        self._pending.pop(key, None)
        return None if raw is None else dict(orjson.loads(raw))

    async def claim_once(self, key: str, ttl: float) -> bool:
        self._purge()
        if self._live(self._pending, f"once:{key}") is not None:
            return False
        self._pending[f"once:{key}"] = (self._clock() + ttl, b"{}")
        return True

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
