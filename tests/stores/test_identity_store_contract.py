"""One contract for every ``IdentityStore``: memory and SQLite always, Redis (marker redis).

Every protocol method, the two compare-and-set operations (also raced from two threads on two
handles of one SQLite file or one Redis prefix, as two instances would), session revocation,
purge, and what only one mechanism has: the SQLite file surviving a reopen, Redis keys expiring
by themselves, Redis failures leaving as IdentityStoreUnavailable.
"""

from __future__ import annotations

import asyncio
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from redis import Redis
from redis.exceptions import RedisError

from gateway.errors import IdentityStoreUnavailable
from gateway.identity.authn import AuthenticatedUser
from gateway.identity.config import ProviderSettings
from gateway.identity.provider import open_identity_store
from gateway.identity.store import (
    AccessTokenRecord,
    CodeRecord,
    GrantFamily,
    IdentityStore,
    MemoryIdentityStore,
    RefreshTokenRecord,
    credential_hash,
)
from gateway.identity.store_redis import RedisIdentityStore, RedisRevocationList
from gateway.identity.store_sqlite import FILE_NAME, SqliteIdentityStore

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = float(int(time.time())) + 3600
"""An hour ahead of the wall clock, which Redis expires keys by: this module is imported when
the suite is collected, minutes before some of its tests run, and a record "expiring at NOW + 10"
must not have left Redis on its own by then (test_redis_keys_expire_by_themselves checks that)."""


@dataclass
class Handles:
    """Opens handles on one store's data: the same file, the same Redis prefix."""

    name: str
    open: Callable[[], IdentityStore]
    shared: bool
    """Two handles see the same data (False for memory: one handle is the whole store)."""
    opened: list[IdentityStore] = field(default_factory=list)

    def handle(self) -> IdentityStore:
        store = self.open()
        self.opened.append(store)
        return store


def _redis_prefix() -> str:
    # A random prefix per run: parallel runs and old keys never meet.
    return f"tongban-test:{secrets.token_hex(8)}:oidc:"


def _redis_or_skip() -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    finally:
        client.close()


def _drop_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _backend(name: str, tmp_path: Path) -> Iterator[Handles]:
    if name == "memory":
        memory = MemoryIdentityStore()
        yield Handles("memory", lambda: memory, shared=False)
        return
    if name == "sqlite":
        path = tmp_path / FILE_NAME
        handles = Handles("sqlite", lambda: SqliteIdentityStore(path), shared=True)
    else:
        _redis_or_skip()
        prefix = _redis_prefix()
        handles = Handles(
            "redis", lambda: RedisIdentityStore.from_url(REDIS_URL, prefix), shared=True
        )
    try:
        yield handles
    finally:
        for store in handles.opened:
            store.close()
        if name == "redis":
            _drop_prefix(prefix)


REDIS = pytest.param("redis", marks=pytest.mark.redis)


@pytest.fixture(params=["memory", "sqlite", REDIS])
def handles(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Handles]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture(params=["sqlite", REDIS])
def shared_handles(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Handles]:
    yield from _backend(request.param, tmp_path)


@pytest.fixture
def store(handles: Handles) -> IdentityStore:
    """Overrides the audit suites' ``store`` (tests/stores/conftest.py) in this module."""
    return handles.handle()


# --- records ---------------------------------------------------------------------------------


def person(sid: str | None = "sid-1", **changes: object) -> AuthenticatedUser:
    base = AuthenticatedUser(
        local_id="qinghai:qh-100233",
        acr="L3",
        auth_time=int(NOW),
        amr=("face", "pwd"),
        claims={
            "name": "苏兰心",
            "phone_number": "+86 139 0000 0000",
            "address": {"region": "青海"},
        },
        actor="clerk-61-0007",
        actor_role="clerk",
        roles=frozenset({"clerk", "operator"}),
        session_id=sid,
        acr_until=int(NOW) + 600,
        base_acr="L2",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def code(sid: str | None = "sid-1", *, nonce: str | None = "n-1", **changes: object) -> CodeRecord:
    base = CodeRecord(
        client_id="portal-qh",
        redirect_uri="https://portal-qh.example/callback",
        scope="openid profile phone",
        user=person(sid),
        nonce=nonce,
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        code_challenge_method="S256",
        issued_at=NOW,
        expires_at=NOW + 60,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def family(family_id: str, sid: str | None = "sid-1", **changes: object) -> GrantFamily:
    base = GrantFamily(
        family_id=family_id,
        client_id="portal-qh",
        user=person(sid),
        scope="openid profile",
        created_at=NOW,
        expires_at=NOW + 12 * 3600,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def access(jti: str, family_id: str, **changes: object) -> AccessTokenRecord:
    base = AccessTokenRecord(
        jti=jti,
        family_id=family_id,
        client_id="portal-qh",
        subject="pairwise-sub",
        scope="openid profile",
        issued_at=NOW,
        expires_at=NOW + 300,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def refresh(token: str, family_id: str, **changes: object) -> RefreshTokenRecord:
    base = RefreshTokenRecord(
        token_hash=credential_hash(token),
        family_id=family_id,
        client_id="portal-qh",
        scope="openid profile",
        issued_at=NOW,
        expires_at=NOW + 8 * 3600,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


ZERO = {
    "codes": 0,
    "redeemed_codes": 0,
    "families": 0,
    "revoked_families": 0,
    "access_tokens": 0,
    "refresh_tokens": 0,
}


# --- the contract ----------------------------------------------------------------------------


def test_blocking_says_whether_the_store_waits_on_the_network(handles: Handles) -> None:
    assert handles.handle().blocking is (handles.name == "redis")


def test_records_round_trip_with_every_field(store: IdentityStore) -> None:
    with_nonce, without = code(), code(None, nonce=None, family_id=None)
    store.put_code(credential_hash("c-1"), with_nonce)
    store.put_code(credential_hash("c-2"), without)
    machine = family("fam-m", user=None, scope="services:call")
    store.put_family(family("fam-1"))
    store.put_family(machine)
    store.put_access_token(access("jti-1", "fam-1"))
    store.put_refresh_token(refresh("rt-1", "fam-1"))
    assert store.get_code(credential_hash("c-1")) == with_nonce
    assert store.get_code(credential_hash("c-2")) == without
    assert store.get_family("fam-1") == family("fam-1")
    assert store.get_family("fam-m") == machine
    assert store.get_access_token("jti-1") == access("jti-1", "fam-1")
    assert store.get_refresh_token(credential_hash("rt-1")) == refresh("rt-1", "fam-1")
    loaded = store.get_code(credential_hash("c-1"))
    assert loaded is not None
    assert loaded.user.roles == frozenset({"clerk", "operator"})
    assert loaded.user.claims["name"] == "苏兰心"
    assert loaded.get_amr() == ["face", "pwd"]


def test_unknown_records_are_absent_and_changing_them_creates_nothing(
    store: IdentityStore,
) -> None:
    assert store.get_code(credential_hash("nope")) is None
    assert store.get_family("nope") is None
    assert store.get_access_token("nope") is None
    assert store.get_refresh_token(credential_hash("nope")) is None
    assert store.is_revoked("nope") is False
    assert store.redeem_code(credential_hash("nope"), "fam-1") is False
    assert store.rotate_refresh_token(credential_hash("nope")) is False
    store.revoke_family("nope")
    store.revoke_access_token("nope")
    assert store.revoke_session("nope") == 0
    assert store.counts() == ZERO
    assert store.get_family("nope") is None


def test_a_code_is_redeemed_once(store: IdentityStore) -> None:
    key = credential_hash("code-once")
    store.put_code(key, code())
    assert store.redeem_code(key, "fam-first") is True
    assert store.redeem_code(key, "fam-second") is False
    assert store.redeem_code(key, "fam-first") is False
    stored = store.get_code(key)
    assert stored is not None
    assert stored.family_id == "fam-first"
    assert stored == replace(code(), family_id="fam-first")
    assert store.counts()["redeemed_codes"] == 1


def test_nonces_are_remembered_per_client(store: IdentityStore) -> None:
    store.put_code(credential_hash("c"), code(nonce="n-42"))
    store.put_code(credential_hash("d"), code(nonce=None))
    assert store.nonce_seen("portal-qh", "n-42") is True
    assert store.nonce_seen("portal-sx", "n-42") is False
    assert store.nonce_seen("portal-qh", "n-43") is False
    # A ':' in either part cannot make two pairs collide.
    store.put_code(credential_hash("e"), code(nonce="b:c", client_id="a"))
    assert store.nonce_seen("a:b", "c") is False
    assert store.nonce_seen("a", "b:c") is True


def test_a_revoked_family_revokes_its_access_tokens(store: IdentityStore) -> None:
    store.put_family(family("fam-1"))
    store.put_family(family("fam-2"))
    store.put_access_token(access("jti-1", "fam-1"))
    store.put_access_token(access("jti-2", "fam-2"))
    store.put_access_token(access("jti-orphan", "fam-never-stored"))
    assert store.is_revoked("jti-1") is False
    store.revoke_family("fam-1")
    fam = store.get_family("fam-1")
    assert fam is not None
    assert fam.revoked is True
    assert store.is_revoked("jti-1") is True
    assert store.is_revoked("jti-2") is False
    assert store.is_revoked("jti-orphan") is True, "a token without its family is not trusted"
    store.revoke_family("fam-1")  # idempotent
    assert store.counts()["revoked_families"] == 1


def test_an_access_token_is_revoked_by_itself(store: IdentityStore) -> None:
    store.put_family(family("fam-1"))
    store.put_access_token(access("jti-1", "fam-1"))
    store.put_access_token(access("jti-2", "fam-1"))
    store.revoke_access_token("jti-1")
    record = store.get_access_token("jti-1")
    assert record is not None
    assert record.revoked is True
    assert store.is_revoked("jti-1") is True
    assert store.is_revoked("jti-2") is False
    fam = store.get_family("fam-1")
    assert fam is not None
    assert fam.revoked is False


def test_a_refresh_token_rotates_once(store: IdentityStore) -> None:
    store.put_family(family("fam-1"))
    record = refresh("rt-1", "fam-1")
    store.put_refresh_token(record)
    assert store.rotate_refresh_token(record.token_hash) is True
    assert store.rotate_refresh_token(record.token_hash) is False
    assert store.get_refresh_token(record.token_hash) == replace(record, rotated=True)
    # The stored flags come back as stored.
    flagged = refresh("rt-2", "fam-1", rotated=True, revoked=True)
    store.put_refresh_token(flagged)
    assert store.get_refresh_token(flagged.token_hash) == flagged
    assert store.rotate_refresh_token(flagged.token_hash) is False


def test_a_refresh_token_is_read_with_its_family(store: IdentityStore) -> None:
    store.put_family(family("fam-1"))
    kept = refresh("rt-1", "fam-1")
    orphan = refresh("rt-2", "fam-gone")
    store.put_refresh_token(kept)
    store.put_refresh_token(orphan)
    assert store.get_refresh_grant(kept.token_hash) == (kept, family("fam-1"))
    store.revoke_family("fam-1")
    store.rotate_refresh_token(kept.token_hash)
    assert store.get_refresh_grant(kept.token_hash) == (
        replace(kept, rotated=True),
        family("fam-1", revoked=True),
    )
    assert store.get_refresh_grant(orphan.token_hash) == (orphan, None)
    assert store.get_refresh_grant(credential_hash("unknown")) is None


def test_tokens_issued_together_are_stored_together(store: IdentityStore) -> None:
    store.put_family(family("fam-1"))
    store.put_tokens(access("jti-1", "fam-1"), refresh("rt-1", "fam-1"))
    store.put_tokens(access("jti-2", "fam-1"), None)  # client credentials: no refresh token
    assert store.get_access_token("jti-1") == access("jti-1", "fam-1")
    assert store.get_refresh_token(credential_hash("rt-1")) == refresh("rt-1", "fam-1")
    assert store.get_access_token("jti-2") == access("jti-2", "fam-1")
    assert store.counts()["access_tokens"] == 2
    assert store.counts()["refresh_tokens"] == 1


def test_revoke_session_ends_every_grant_of_that_session_only(store: IdentityStore) -> None:
    store.put_family(family("fam-a1", "sid-a"))
    store.put_family(family("fam-a2", "sid-a"))
    store.put_family(family("fam-a3", "sid-a", revoked=True))
    store.put_family(family("fam-b", "sid-b"))
    store.put_family(family("fam-m", None, user=None))
    store.put_access_token(access("jti-a1", "fam-a1"))
    store.put_access_token(access("jti-b", "fam-b"))
    redeemed, pending, other = credential_hash("x"), credential_hash("y"), credential_hash("z")
    store.put_code(redeemed, code("sid-a"))
    store.redeem_code(redeemed, "fam-a1")
    store.put_code(pending, code("sid-a"))
    store.put_code(other, code("sid-b"))

    assert store.revoke_session("sid-a") == 2, "newly revoked families only"
    assert store.revoke_session("sid-a") == 0
    for fid, revoked in (
        ("fam-a1", True),
        ("fam-a2", True),
        ("fam-a3", True),
        ("fam-b", False),
        ("fam-m", False),
    ):
        fam = store.get_family(fid)
        assert fam is not None
        assert fam.revoked is revoked, fid
    assert store.is_revoked("jti-a1") is True
    assert store.is_revoked("jti-b") is False
    assert store.get_code(pending) is None, "an unredeemed code of the session cannot be used"
    assert store.get_code(redeemed) is not None, "kept: its replay must still revoke"
    assert store.get_code(other) is not None


def test_purge_forgets_what_expired_before_now(store: IdentityStore) -> None:
    store.put_code(credential_hash("old"), code(nonce="n-old", expires_at=NOW + 10))
    store.put_code(credential_hash("new"), code(nonce="n-new", expires_at=NOW + 100))
    store.put_family(family("fam-old", expires_at=NOW + 10))
    store.put_family(family("fam-new", expires_at=NOW + 100))
    store.put_access_token(access("jti-old", "fam-new", expires_at=NOW + 10))
    store.put_access_token(access("jti-edge", "fam-new", expires_at=NOW + 50))
    store.put_refresh_token(refresh("rt-old", "fam-new", expires_at=NOW + 10))
    store.put_refresh_token(refresh("rt-new", "fam-new", expires_at=NOW + 100))

    assert store.purge(NOW) == 0
    assert store.purge(NOW + 50) == 4, "code, family, access token, refresh token"
    assert store.get_code(credential_hash("old")) is None
    assert store.nonce_seen("portal-qh", "n-old") is False
    assert store.get_family("fam-old") is None
    assert store.get_access_token("jti-old") is None
    assert store.get_refresh_token(credential_hash("rt-old")) is None
    assert store.get_access_token("jti-edge") is not None, "expires_at == now is not before now"
    assert store.get_code(credential_hash("new")) is not None
    assert store.nonce_seen("portal-qh", "n-new") is True
    assert store.counts() == {
        "codes": 1,
        "redeemed_codes": 0,
        "families": 1,
        "revoked_families": 0,
        "access_tokens": 1,
        "refresh_tokens": 1,
    }
    assert store.purge(NOW + 50) == 0
    assert store.purge(NOW + 1000) == 4
    assert store.counts() == ZERO


def test_counts_every_kind(store: IdentityStore) -> None:
    store.put_code(credential_hash("a"), code())
    store.put_code(credential_hash("b"), code())
    store.redeem_code(credential_hash("a"), "fam-1")
    store.put_family(family("fam-1"))
    store.put_family(family("fam-2", revoked=True))
    store.put_access_token(access("jti-1", "fam-1"))
    store.put_refresh_token(refresh("rt-1", "fam-1"))
    assert store.counts() == {
        "codes": 2,
        "redeemed_codes": 1,
        "families": 2,
        "revoked_families": 1,
        "access_tokens": 1,
        "refresh_tokens": 1,
    }


# --- shared stores: two handles, as two instances -------------------------------------------


def test_a_second_handle_sees_the_first_ones_writes(shared_handles: Handles) -> None:
    first, second = shared_handles.handle(), shared_handles.handle()
    key = credential_hash("shared-code")
    first.put_code(key, code())
    first.put_family(family("fam-1"))
    assert second.redeem_code(key, "fam-1") is True
    assert first.redeem_code(key, "fam-2") is False
    second.revoke_family("fam-1")
    fam = first.get_family("fam-1")
    assert fam is not None
    assert fam.revoked is True


def test_compare_and_set_races_have_one_winner(shared_handles: Handles) -> None:
    """Two threads on two handles (two instances) redeem one code and rotate one refresh
    token at the same moment, many times over: exactly one of each pair wins."""
    handles = (shared_handles.handle(), shared_handles.handle())
    rounds = 60
    for n in range(rounds):
        handles[0].put_code(credential_hash(f"race-{n}"), code())
        handles[0].put_refresh_token(refresh(f"race-rt-{n}", "fam-1"))
    barrier = threading.Barrier(2)

    def contender(index: int) -> list[tuple[bool, bool]]:
        store = handles[index]
        results = []
        for n in range(rounds):
            barrier.wait()
            redeemed = store.redeem_code(credential_hash(f"race-{n}"), f"fam-{index}")
            rotated = store.rotate_refresh_token(credential_hash(f"race-rt-{n}"))
            results.append((redeemed, rotated))
        return results

    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(contender, (0, 1))
    for n, ((redeemed_a, rotated_a), (redeemed_b, rotated_b)) in enumerate(zip(a, b, strict=True)):
        assert redeemed_a != redeemed_b, f"round {n}: exactly one redemption wins"
        assert rotated_a != rotated_b, f"round {n}: exactly one rotation wins"
        stored = handles[1].get_code(credential_hash(f"race-{n}"))
        assert stored is not None
        assert stored.family_id == ("fam-0" if redeemed_a else "fam-1")


# --- one mechanism each ----------------------------------------------------------------------


def test_sqlite_state_survives_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / FILE_NAME
    store = SqliteIdentityStore(path)
    key = credential_hash("persisted")
    store.put_code(key, code())
    store.put_family(family("fam-1"))
    store.put_access_token(access("jti-1", "fam-1"))
    store.put_refresh_token(refresh("rt-1", "fam-1"))
    assert store.redeem_code(key, "fam-1") is True
    assert store.rotate_refresh_token(credential_hash("rt-1")) is True
    store.revoke_family("fam-1")
    store.close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "the file holds personal data"
    reopened = SqliteIdentityStore(path)
    try:
        assert reopened.redeem_code(key, "fam-2") is False, "a redeemed code stays redeemed"
        stored = reopened.get_code(key)
        assert stored is not None
        assert stored.family_id == "fam-1"
        fam = reopened.get_family("fam-1")
        assert fam is not None
        assert fam.revoked is True, "a revoked family stays revoked"
        assert reopened.is_revoked("jti-1") is True
        assert reopened.rotate_refresh_token(credential_hash("rt-1")) is False
        assert reopened.nonce_seen("portal-qh", "n-1") is True
    finally:
        reopened.close()


@pytest.mark.redis
async def test_redis_keys_expire_by_themselves() -> None:
    """TTLs follow expires_at (plus the grace that covers the verifier's leeway), so records
    go without a purge; the session index lives as long as its longest-lived member."""
    _redis_or_skip()
    prefix = _redis_prefix()
    store = RedisIdentityStore.from_url(REDIS_URL, prefix, expiry_grace=0)
    inspect = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        now = time.time()
        store.put_family(family("fam-long", "sid-ttl", expires_at=now + 600))
        store.put_family(family("fam-short", "sid-ttl", expires_at=now + 0.3))
        key = credential_hash("short-code")
        store.put_code(key, code("sid-ttl", nonce="n-ttl", expires_at=now + 0.3))
        store.put_access_token(access("jti-short", "fam-long", expires_at=now + 0.3))
        assert 590_000 < inspect.pttl(f"{prefix}fam:fam-long") <= 600_000
        assert 590_000 < inspect.pttl(f"{prefix}sid:sid-ttl") <= 600_000
        await asyncio.sleep(0.5)
        assert store.get_family("fam-short") is None
        assert store.get_code(key) is None
        assert store.nonce_seen("portal-qh", "n-ttl") is False
        assert store.get_access_token("jti-short") is None
        assert store.get_family("fam-long") is not None
        # The session index still finds the long-lived family.
        assert store.revoke_session("sid-ttl") == 1
    finally:
        store.close()
        inspect.close()
        _drop_prefix(prefix)


@pytest.mark.redis
def test_redis_keys_outlive_expiry_by_the_grace() -> None:
    _redis_or_skip()
    prefix = _redis_prefix()
    store = RedisIdentityStore.from_url(REDIS_URL, prefix, expiry_grace=120)
    inspect = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        store.put_access_token(access("jti-g", "fam-g", expires_at=time.time() + 10))
        assert 125_000 < inspect.pttl(f"{prefix}at:jti-g") <= 130_000
    finally:
        store.close()
        inspect.close()
        _drop_prefix(prefix)


@pytest.mark.redis
async def test_the_asynchronous_revocation_check_agrees_with_the_store() -> None:
    """The verifier's check (asyncio client, on the loop) reads what the store wrote."""
    _redis_or_skip()
    prefix = _redis_prefix()
    store = RedisIdentityStore.from_url(REDIS_URL, prefix)
    revocations = RedisRevocationList.from_url(REDIS_URL, prefix)
    try:
        store.put_family(family("fam-1"))
        store.put_family(family("fam-2"))
        store.put_tokens(access("jti-1", "fam-1"), None)
        store.put_tokens(access("jti-2", "fam-2"), None)
        store.put_tokens(access("jti-3", "fam-2"), None)
        store.put_tokens(access("jti-orphan", "fam-gone"), None)
        store.revoke_family("fam-1")
        store.revoke_access_token("jti-3")
        for jti in ("jti-1", "jti-2", "jti-3", "jti-orphan", "jti-unknown"):
            assert await revocations.is_revoked(jti) is store.is_revoked(jti), jti
        assert [await revocations.is_revoked(j) for j in ("jti-1", "jti-2", "jti-3")] == [
            True,
            False,
            True,
        ]
    finally:
        await revocations.aclose()
        store.close()
        _drop_prefix(prefix)


async def test_an_unreachable_redis_fails_the_revocation_check_closed() -> None:
    revocations = RedisRevocationList.from_url(
        "redis://127.0.0.1:1/0", "tongban-test:", timeout=0.5
    )
    try:
        with pytest.raises(IdentityStoreUnavailable):
            await revocations.is_revoked("jti")
    finally:
        await revocations.aclose()


def test_an_unreachable_redis_is_identity_store_unavailable() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    store = RedisIdentityStore.from_url("redis://127.0.0.1:1/0", "tongban-test:", timeout=0.5)
    try:
        with pytest.raises(IdentityStoreUnavailable) as caught:
            store.get_code(credential_hash("x"))
        assert caught.value.code == "gateway.identity_store_unavailable"
        assert caught.value.status == 503
        with pytest.raises(IdentityStoreUnavailable):
            store.redeem_code(credential_hash("x"), "fam")
        with pytest.raises(IdentityStoreUnavailable):
            store.put_family(family("fam"))
    finally:
        store.close()


# --- which store the settings open ------------------------------------------------------------


def _settings(**changes: object) -> ProviderSettings:
    return ProviderSettings(
        issuer="https://gw.example",
        pairwise_secret=SecretStr("p" * 40),
        **changes,
    )


def test_the_default_store_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    settings = _settings()
    assert settings.token_store == "sqlite"
    store = open_identity_store(settings, tmp_path)
    try:
        assert isinstance(store, SqliteIdentityStore)
        assert store.path == tmp_path / "identity.sqlite"
    finally:
        store.close()
    memory = open_identity_store(_settings(token_store="memory"), tmp_path)
    assert isinstance(memory, MemoryIdentityStore)


def test_the_redis_store_uses_the_session_url_and_its_own_prefix(tmp_path: Path) -> None:
    settings = _settings(
        token_store="redis",
        session={"store": "redis", "redis_url": "redis://127.0.0.1:6379/3"},
    )
    store = open_identity_store(settings, tmp_path)
    try:
        assert isinstance(store, RedisIdentityStore)
    finally:
        store.close()
    with pytest.raises(ValidationError, match="token_redis_prefix"):
        _settings(token_store="redis", token_redis_prefix="tongban:sso:")
