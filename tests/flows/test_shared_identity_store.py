"""Two OpenID provider instances sharing one identity store, over real loopback HTTP.

What several gateway instances need (Redis when several instances run): a code issued
by instance A is redeemed at B; its replay at A revokes the family for both; a refresh token
rotated at A is detected as reused at B; revocation, introspection, userinfo and the API's
revocation check agree across instances; and two instances racing for one refresh token leave
exactly one winner.

Each journey runs on Redis (marker redis) and on a blocking in-memory double, which puts the
provider in its worker-thread mode without a server. Both stores note any call made on the
event loop's thread and the audit sink notes any record made off it: there must be none.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from redis import Redis
from redis.exceptions import RedisError

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.sink import FakeAuditSink, WriterAuditSink
from gateway.audit.writer import AuditWriter
from gateway.errors import Unauthenticated
from gateway.http.keys import METRICS, VERIFIER
from gateway.http.middlewares import auth_middleware, problem_middleware, request_context_middleware
from gateway.http.oidc import add_oidc_routes
from gateway.identity.authn import AuthenticatedUser, FakeAuthenticator
from gateway.identity.clients import ClientRegistration, ClientRegistry
from gateway.identity.config import ProviderSettings
from gateway.identity.keys import SigningKeys
from gateway.identity.provider import OpenIDProvider
from gateway.identity.store import (
    AccessTokenRecord,
    CodeRecord,
    GrantFamily,
    IdentityStore,
    MemoryIdentityStore,
    RefreshTokenRecord,
)
from gateway.identity.store_redis import RedisIdentityStore, RedisRevocationList
from gateway.identity.store_sqlite import SqliteIdentityStore
from gateway.metrics import Metrics
from gateway.stores.memory_audit import MemoryAuditStore
from tests.flows.test_federated_sso import (
    QH,
    Sso,
    browser,
    only_session,
    sign_in,
    sso,  # noqa: F401 - the fixture
)
from tests.flows.test_oidc_provider import (
    PUBLIC_REDIRECT,
    SYSTEM_SECRET,
    FakeClock,
    World,
    api_status,
    exchange,
    get_code,
    introspect,
    refresh,
    tokens,
    whoami,
)
from tests.ports import HeldPort

REDIS_URL = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


class LoopCheckedStore:
    """A real store behind a blocking face: notes every call made on the loop's thread.

    ``serialise``: a lock around each call, for a store that is not thread-safe by itself
    (the in-memory one; its compare-and-set operations are then atomic across threads)."""

    blocking: ClassVar[bool] = True

    def __init__(self, inner: IdentityStore, loop_thread: int, *, serialise: bool) -> None:
        self.inner = inner
        self.on_loop: list[str] = []
        self._loop_thread = loop_thread
        self._lock = threading.Lock() if serialise else None

    def _call(self, name: str, work: Callable[[], T]) -> T:
        if threading.get_ident() == self._loop_thread:
            self.on_loop.append(name)
        with self._lock or contextlib.nullcontext():
            return work()

    def put_code(self, code_hash: str, record: CodeRecord) -> None:
        self._call("put_code", lambda: self.inner.put_code(code_hash, record))

    def get_code(self, code_hash: str) -> CodeRecord | None:
        return self._call("get_code", lambda: self.inner.get_code(code_hash))

    def redeem_code(self, code_hash: str, family_id: str) -> bool:
        return self._call("redeem_code", lambda: self.inner.redeem_code(code_hash, family_id))

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        return self._call("nonce_seen", lambda: self.inner.nonce_seen(client_id, nonce))

    def put_family(self, family: GrantFamily) -> None:
        self._call("put_family", lambda: self.inner.put_family(family))

    def get_family(self, family_id: str) -> GrantFamily | None:
        return self._call("get_family", lambda: self.inner.get_family(family_id))

    def revoke_family(self, family_id: str) -> None:
        self._call("revoke_family", lambda: self.inner.revoke_family(family_id))

    def put_access_token(self, record: AccessTokenRecord) -> None:
        self._call("put_access_token", lambda: self.inner.put_access_token(record))

    def get_access_token(self, jti: str) -> AccessTokenRecord | None:
        return self._call("get_access_token", lambda: self.inner.get_access_token(jti))

    def revoke_access_token(self, jti: str) -> None:
        self._call("revoke_access_token", lambda: self.inner.revoke_access_token(jti))

    def is_revoked(self, jti: str) -> bool:
        return self._call("is_revoked", lambda: self.inner.is_revoked(jti))

    def put_refresh_token(self, record: RefreshTokenRecord) -> None:
        self._call("put_refresh_token", lambda: self.inner.put_refresh_token(record))

    def put_tokens(self, access: AccessTokenRecord, refresh: RefreshTokenRecord | None) -> None:
        self._call("put_tokens", lambda: self.inner.put_tokens(access, refresh))

    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return self._call("get_refresh_token", lambda: self.inner.get_refresh_token(token_hash))

    def get_refresh_grant(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, GrantFamily | None] | None:
        return self._call("get_refresh_grant", lambda: self.inner.get_refresh_grant(token_hash))

    def rotate_refresh_token(self, token_hash: str) -> bool:
        return self._call(
            "rotate_refresh_token", lambda: self.inner.rotate_refresh_token(token_hash)
        )

    def revoke_session(self, sid: str) -> int:
        return self._call("revoke_session", lambda: self.inner.revoke_session(sid))

    def purge(self, now: float) -> int:
        return self._call("purge", lambda: self.inner.purge(now))

    def counts(self) -> dict[str, int]:
        return self._call("counts", self.inner.counts)

    def close(self) -> None:
        self._call("close", self.inner.close)


class LoopOnlySink(FakeAuditSink):
    """The audit sink is not thread-safe: note every record made off the loop's thread."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__()
        self.off_loop = 0
        self._loop_thread = loop_thread

    def record(self, event: AuditEvent) -> None:
        if threading.get_ident() != self._loop_thread:
            self.off_loop += 1
        super().record(event)


@dataclass
class Pair:
    a: World
    b: World
    stores: tuple[LoopCheckedStore, LoopCheckedStore]
    sinks: tuple[LoopOnlySink, LoopOnlySink]
    inspect: IdentityStore
    """A handle of the test's own on the shared data (never the instances')."""

    def assert_loop_clean(self) -> None:
        assert [s.on_loop for s in self.stores] == [[], []], "store work ran on the event loop"
        assert [s.off_loop for s in self.sinks] == [0, 0], "an audit record was made off-loop"

    def events(self, kind: EventType) -> list[AuditEvent]:
        return [e for sink in self.sinks for e in sink.events if e.type == kind]


def _clients() -> list[ClientRegistration]:
    return [
        ClientRegistration(
            client_id="portal-qh",
            name="青海政务服务网",
            type="public",
            redirect_uris=(PUBLIC_REDIRECT,),
            scopes=("openid", "profile", "phone"),
            allowed_services=("*",),
        ),
        ClientRegistration(
            client_id="system-61",
            type="confidential",
            client_secret=SecretStr(SYSTEM_SECRET),
            grant_types=("client_credentials",),
            scopes=("services:call",),
            may_introspect=True,
        ),
    ]


@contextlib.contextmanager
def _shared_stores(kind: str, loop_thread: int) -> Iterator[tuple[IdentityStore, ...]]:
    """Three handles on one store's data: instance A's, instance B's, the test's."""
    if kind == "memory":
        memory = MemoryIdentityStore()
        checked = LoopCheckedStore(memory, loop_thread, serialise=True)
        yield checked, checked, memory
        return
    probe = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        probe.ping()
    except RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    prefix = f"tongban-test:{secrets.token_hex(8)}:oidc:"
    handles = [RedisIdentityStore.from_url(REDIS_URL, prefix) for _ in range(3)]
    try:
        yield (
            LoopCheckedStore(handles[0], loop_thread, serialise=False),
            LoopCheckedStore(handles[1], loop_thread, serialise=False),
            handles[2],
        )
    finally:
        handles[2].close()  # A's and B's are closed by their applications' cleanup
        keys = list(probe.scan_iter(match=prefix + "*", count=500))
        if keys:
            probe.delete(*keys)
        probe.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    loop_thread = threading.get_ident()
    clock = FakeClock()
    held = {"a": HeldPort(), "b": HeldPort()}
    port_a = held["a"].port
    # One issuer, one key set (the shared data directory), two servers: as behind a balancer.
    issuer = f"http://127.0.0.1:{port_a}"
    settings = ProviderSettings(
        issuer=issuer, pairwise_secret=SecretStr("p" * 40), algorithms=("ES256",)
    )
    user = AuthenticatedUser(
        local_id="u-2002",
        acr="L2",
        auth_time=int(clock()),
        amr=("pwd",),
        claims={"name": "马文华", "phone_number": "+86 139 0000 0001"},
        session_id="sess-shared",
    )
    with _shared_stores(request.param, loop_thread) as (store_a, store_b, inspect):
        worlds: list[World] = []
        sinks: list[LoopOnlySink] = []
        try:
            for store, holder in ((store_a, held["a"]), (store_b, held["b"])):
                authenticator = FakeAuthenticator(user)
                provider = OpenIDProvider.from_config(
                    settings,
                    _clients(),
                    data_dir=tmp_path,
                    authenticator=authenticator,
                    store=store,
                    clock=clock,
                )
                sink = LoopOnlySink(loop_thread)
                provider.audit = sink
                app = web.Application(
                    middlewares=[request_context_middleware, problem_middleware, auth_middleware]
                )
                app[METRICS] = Metrics()
                app[VERIFIER] = provider.access_token_verifier()
                app.router.add_get("/api/v1/whoami", whoami)
                add_oidc_routes(app, provider)
                http: TestClient[Any, Any] = TestClient(
                    TestServer(
                        app,
                        host="127.0.0.1",
                        port=holder.port,
                        socket_factory=holder.socket_factory,
                    )
                )
                await http.start_server()
                worlds.append(World(http, provider, store, authenticator, clock, issuer))
                sinks.append(sink)
            assert isinstance(store_a, LoopCheckedStore)
            assert isinstance(store_b, LoopCheckedStore)
            pair = Pair(worlds[0], worlds[1], (store_a, store_b), (sinks[0], sinks[1]), inspect)
            yield pair
            pair.assert_loop_clean()
        finally:
            for world in worlds:
                await world.http.close()


# --- journeys across two instances -----------------------------------------------------------


async def test_a_code_issued_at_a_is_redeemed_at_b_and_its_replay_revokes_at_both(
    pair: Pair,
) -> None:
    code, verifier, _ = await get_code(pair.a)
    status, body, _ = await exchange(pair.b, code, verifier)
    assert status == 200, body
    access = body["access_token"]
    assert await api_status(pair.a, access) == 200
    assert await api_status(pair.b, access) == 200

    status, replay, _ = await exchange(pair.a, code, verifier)
    assert status == 400
    assert replay["error"] == "invalid_grant"
    assert "access_token" not in replay
    assert await api_status(pair.a, access) == 401, "RFC 6749 §4.1.2: its tokens are revoked"
    assert await api_status(pair.b, access) == 401
    assert (await refresh(pair.b, body["refresh_token"]))[0] == 400
    assert pair.inspect.counts()["revoked_families"] == 1
    assert [e.operation for e in pair.events(EventType.TOKEN_REVOKED)] == ["code_replay_detected"]


async def test_a_refresh_token_rotated_at_a_is_detected_as_reused_at_b(pair: Pair) -> None:
    first = await tokens(pair.a)
    status, second = await refresh(pair.a, first["refresh_token"])
    assert status == 200, second
    assert await api_status(pair.b, second["access_token"]) == 200

    status, reused = await refresh(pair.b, first["refresh_token"])
    assert status == 400
    assert reused["error"] == "invalid_grant"
    # RFC 9700 §4.14.2: the whole family goes, at both instances.
    assert await api_status(pair.a, second["access_token"]) == 401
    assert await api_status(pair.b, second["access_token"]) == 401
    assert (await refresh(pair.a, second["refresh_token"]))[0] == 400
    assert (await introspect(pair.a, second["refresh_token"]))["active"] is False
    revoked = pair.sinks[1].events
    assert [(e.type, e.operation) for e in revoked] == [
        (EventType.TOKEN_REVOKED, "refresh_reuse_detected")
    ]


async def test_one_refresh_token_at_both_instances_at_once_has_one_winner(pair: Pair) -> None:
    first = await tokens(pair.a)
    (status_a, body_a), (status_b, body_b) = await asyncio.gather(
        refresh(pair.a, first["refresh_token"]), refresh(pair.b, first["refresh_token"])
    )
    assert sorted((status_a, status_b)) == [200, 400], (body_a, body_b)
    winner = body_a if status_a == 200 else body_b
    # Presented twice is reuse, whichever instance saw it second: the family is revoked, the
    # winner's fresh tokens with it.
    assert pair.inspect.counts()["revoked_families"] == 1
    assert await api_status(pair.a, winner["access_token"]) == 401
    assert (await refresh(pair.b, winner["refresh_token"]))[0] == 400
    assert [e.operation for e in pair.events(EventType.TOKEN_REVOKED)] == ["refresh_reuse_detected"]


async def test_one_code_at_both_instances_at_once_issues_no_lasting_tokens(pair: Pair) -> None:
    code, verifier, _ = await get_code(pair.a)
    answers = await asyncio.gather(
        exchange(pair.a, code, verifier), exchange(pair.b, code, verifier)
    )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 400], answers
    winner = next(body for status, body, _ in answers if status == 200)
    # Used twice is a replay (RFC 6749 §4.1.2), however close together.
    assert await api_status(pair.b, winner["access_token"]) == 401
    assert pair.inspect.counts()["redeemed_codes"] == 1


async def test_revocation_introspection_userinfo_and_logout_agree_across_instances(
    pair: Pair,
) -> None:
    body = await tokens(pair.a)
    access = body["access_token"]
    info = await pair.b.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access}"})
    assert info.status == 200
    assert (await info.json())["name"] == "马文华"
    assert (await introspect(pair.b, access))["active"] is True

    revoked = await pair.b.http.post(
        "/oauth2/revoke", data={"token": access, "client_id": "portal-qh"}
    )
    assert revoked.status == 200
    assert await api_status(pair.a, access) == 401
    assert (await introspect(pair.a, access))["active"] is False

    # An SSO logout at one instance ends the session's grants everywhere (sso.py does this).
    other = await tokens(pair.b)
    provider = pair.a.provider
    # Two families: the first one's access token was revoked alone, the family was not.
    assert await provider.run_with_store(provider.store.revoke_session, "sess-shared") == 2
    assert await api_status(pair.b, other["access_token"]) == 401
    assert (await refresh(pair.b, other["refresh_token"]))[0] == 400


async def test_audit_records_are_made_on_the_loop_in_order(pair: Pair) -> None:
    first = await tokens(pair.a)
    await refresh(pair.b, first["refresh_token"])
    kinds = [(e.type, e.operation) for e in pair.sinks[0].events + pair.sinks[1].events]
    assert kinds == [
        (EventType.TOKEN_ISSUED, "authorization_code"),
        (EventType.TOKEN_REFRESHED, "refresh_token"),
    ]
    # pair.assert_loop_clean() runs after every test.


async def test_no_token_leaves_when_the_trail_cannot_take_its_record(pair: Pair) -> None:
    writer = AuditWriter(
        MemoryAuditStore(),
        chain="gw-t",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
    )
    await writer.start()
    await writer.aclose()  # a writer that stopped: nothing can be queued
    stopped = WriterAuditSink()
    stopped.bind(writer)
    pair.b.provider.audit = stopped
    code, verifier, _ = await get_code(pair.a)
    status, body, _ = await exchange(pair.b, code, verifier)
    assert status == 503
    assert body["code"] == "gateway.audit_unavailable"
    assert "access_token" not in body


async def test_purge_runs_off_the_loop_and_forgets_expired_records(pair: Pair) -> None:
    await tokens(pair.a)
    assert pair.inspect.counts()["access_tokens"] == 1
    pair.a.clock.advance(13 * 3600)  # past the family's grant_max_age and every token
    provider = pair.a.provider
    assert await provider.run_with_store(provider.purge_expired) >= 4
    counts = pair.inspect.counts()
    assert counts["access_tokens"] == counts["refresh_tokens"] == counts["families"] == 0


async def test_store_work_outlives_a_cancelled_request_and_its_records_still_land() -> None:
    """A client that goes away cancels its handler, not the worker thread: the store work
    finishes, and what it reported is recorded on the loop when it does."""
    loop_thread = threading.get_ident()
    store = LoopCheckedStore(MemoryIdentityStore(), loop_thread, serialise=True)
    provider = OpenIDProvider(
        ProviderSettings(issuer="https://gw.example", pairwise_secret=SecretStr("p" * 40)),
        ClientRegistry(_clients()),
        SigningKeys.generate(("ES256",)),
        store,
        FakeAuthenticator(),
    )
    sink = LoopOnlySink(loop_thread)
    provider.audit = sink
    release = threading.Event()

    def work() -> None:
        release.wait(5)
        provider.audit_event(
            EventType.TOKEN_REVOKED, client_id="portal-qh", subject="s", operation="revocation"
        )

    task = asyncio.create_task(provider.run_with_store(work))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.events == []
    release.set()
    for _ in range(200):
        if sink.events:
            break
        await asyncio.sleep(0.01)
    assert [e.operation for e in sink.events] == ["revocation"]
    assert sink.off_loop == 0


@pytest.mark.redis
async def test_a_provider_configured_for_redis_checks_revocations_on_the_loop(
    tmp_path: Path,
) -> None:
    """Built from settings (token_store: redis): the store on the synchronous client in threads,
    the API's revocation check on the asyncio client; both see the same revocation."""
    probe = Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        probe.ping()
    except RedisError:
        probe.close()
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    prefix = f"tongban-test:{secrets.token_hex(8)}:oidc:"
    held = HeldPort()
    port = held.port
    settings = ProviderSettings(
        issuer=f"http://127.0.0.1:{port}",
        pairwise_secret=SecretStr("p" * 40),
        algorithms=("ES256",),
        token_store="redis",
        token_redis_prefix=prefix,
        session={"redis_url": REDIS_URL, "redis_prefix": "tongban-test:sso:"},
    )
    user = AuthenticatedUser(local_id="u-3003", acr="L2", auth_time=int(FakeClock()()))
    provider = OpenIDProvider.from_config(
        settings, _clients(), data_dir=tmp_path, authenticator=FakeAuthenticator(user)
    )
    assert isinstance(provider.store, RedisIdentityStore)
    assert isinstance(provider.revocations, RedisRevocationList)
    app = web.Application(
        middlewares=[request_context_middleware, problem_middleware, auth_middleware]
    )
    app[METRICS] = Metrics()
    app[VERIFIER] = provider.access_token_verifier()
    app.router.add_get("/api/v1/whoami", whoami)
    add_oidc_routes(app, provider)
    http: TestClient[Any, Any] = TestClient(
        TestServer(app, host="127.0.0.1", port=port, socket_factory=held.socket_factory)
    )
    await http.start_server()
    try:
        world = World(http, provider, provider.store, FakeAuthenticator(user), FakeClock(), "")
        body = await tokens(world)
        assert await api_status(world, body["access_token"]) == 200
        assert (await refresh(world, body["refresh_token"]))[0] == 200
        assert (await refresh(world, body["refresh_token"]))[0] == 400  # reuse
        assert await api_status(world, body["access_token"]) == 401
    finally:
        await http.close()  # closes the provider's store and revocation client
        keys = list(probe.scan_iter(match=prefix + "*", count=500))
        if keys:
            probe.delete(*keys)
        probe.close()


# --- the gateway's default ---------------------------------------------------------------------


async def test_the_gateway_keeps_codes_and_grants_in_sqlite_in_its_data_directory(
    sso: Sso,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Built from configuration as `serve` and `demo` build it: identity.sqlite in the data
    directory; a federated login's grant lands there and the SSO logout revokes it."""
    store = sso.provider.store
    assert isinstance(store, SqliteIdentityStore)
    assert store.path == tmp_path / "identity.sqlite"
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        access = only_session(sso.portal(QH)).access_token
        assert store.counts()["families"] == 1
        assert store.counts()["redeemed_codes"] == 1
        await b.get(f"{sso.portal(QH).base_url}/logout")
    assert store.counts()["revoked_families"] == 1
    with pytest.raises(Unauthenticated):
        await sso.provider.access_token_verifier().verify(access)
