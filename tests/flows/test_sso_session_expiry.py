"""An SSO session that times out ends like a logout, whether or not the browser comes back.

Over real loopback HTTP (portal A / B → gateway → demo Qinghai IdP, as in test_federated_sso.py):
sign in at both portals, move the gateway's clock past a timeout with no browser request, and
the sweeper ends the session: both portals receive a back-channel logout token (their own
pairwise ``sub``, the session's ``sid``), portal A's refresh token is refused, the cookie no
longer signs anyone in and the trail holds one ``logout`` record per portal with the reason.
On the in-memory store and on Redis; every journey ends with ``tongban audit verify``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.app import create_app, open_provider
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditEvent, AuditRecord
from gateway.demo.backends import DemoSecrets, start_demo_backends
from gateway.demo.federation import DemoIdentitySecrets, start_demo_identity
from gateway.demo.runner import demo_identity_env, point_at
from gateway.http.login import build_authenticator
from gateway.identity.redis_sessions import RedisSessionStore
from gateway.identity.sessions import MemorySessionStore, SessionStore
from gateway.settings import Settings, load_settings
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.flows.conftest import CONFIG_DIR, audit_verify
from tests.flows.test_federated_sso import QH, SX, Sso, browser, eventually, only_session, sign_in
from tests.ports import HeldPort

REDIS_URL = "redis://127.0.0.1:6379/0"
IDLE, ABSOLUTE = 900, 1800


class GatewayClock:
    """Wall time plus an offset the test moves forward: the gateway, its session store and the
    portals read it, so timeouts pass at once while real timers (back-off, TTLs) still run."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Expiry:
    sso: Sso
    clock: GatewayClock
    data_dir: Path


def _short_sessions(settings: Settings) -> Settings:
    identity = settings.gateway.identity
    assert identity is not None
    session = identity.session.model_copy(
        update={"idle_timeout": IDLE, "absolute_timeout": ABSOLUTE, "sweep_interval": 0.05}
    )
    identity = identity.model_copy(update={"session": session})
    return dataclasses.replace(
        settings, gateway=settings.gateway.model_copy(update={"identity": identity})
    )


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def expiry(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Expiry]:
    clock = GatewayClock()
    prefix = f"tongban-test:{secrets.token_hex(8)}:"
    store: SessionStore
    if request.param == "memory":
        store = MemorySessionStore(clock=clock)
    else:
        store = RedisSessionStore.from_url(REDIS_URL, prefix, clock=clock)
        if not await store.ping():
            await store.aclose()
            pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    backend_secrets = DemoSecrets.generate()
    env = {**backend_secrets.env(), **demo_identity_env(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    held = HeldPort()
    port = held.port
    gateway = f"http://127.0.0.1:{port}"
    try:
        async with (
            await start_demo_backends(backend_secrets, config_dir=CONFIG_DIR) as backends,
            await start_demo_identity(gateway, DemoIdentitySecrets.from_env(env)) as identity,
        ):
            settings = point_at(
                load_settings(CONFIG_DIR), backends.overrides(), tmp_path, port=port
            )
            settings = _short_sessions(identity.configure(settings))
            provider = await open_provider(
                settings, build_authenticator(settings, store=store, clock=clock)
            )
            assert provider is not None
            provider.clock = clock
            for portal in identity.portals.values():
                portal.clock = clock  # they check the logout tokens' iat against it
            app = create_app(settings, verifier=provider.access_token_verifier(), oidc=provider)
            server = TestServer(
                app, host="127.0.0.1", port=port, socket_factory=held.socket_factory
            )
            await server.start_server()
            try:
                yield Expiry(
                    Sso(gateway, provider, identity, backends, list(env.values())), clock, tmp_path
                )
            finally:
                await server.close()  # closes the session store too
    finally:
        if request.param == "redis":
            async with Redis.from_url(REDIS_URL) as redis:
                async for name in redis.scan_iter(match=f"{prefix}*"):
                    await redis.delete(name)
    # The gateway has closed its audit chain: the independent verifier passes on it.
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


# --- helpers ---------------------------------------------------------------------------------


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(client_id, secret)}


async def refresh_token_of_portal_a(sso: Sso, b: aiohttp.ClientSession) -> str:
    """A code for portal A in the browser's SSO session, redeemed for a refresh token (the demo
    portal keeps none of its own)."""
    portal = sso.portal(QH)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    redirect_uri = f"{portal.base_url}/callback"
    params = {
        "response_type": "code",
        "client_id": QH,
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    answer = await b.get(f"{sso.gateway}/oauth2/authorize", params=params, allow_redirects=False)
    assert answer.status == 302, await answer.text()
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    status, body = await token_request(
        sso,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )
    assert status == 200, body
    return str(body["refresh_token"])


async def token_request(sso: Sso, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    portal = sso.portal(QH)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sso.gateway}/oauth2/token",
            data=form,
            headers=_basic(QH, portal.client_secret),
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def refresh(sso: Sso, token: str) -> tuple[int, dict[str, Any]]:
    return await token_request(sso, {"grant_type": "refresh_token", "refresh_token": token})


async def session_ended_records(data_dir: Path, count: int) -> list[AuditEvent]:
    """The ``sso_session_ended`` logout records, once ``count`` of them reached the store."""
    found: list[AuditEvent] = []
    for _ in range(100):  # buffered records reach the store within milliseconds
        store = SqliteAuditStore(data_dir / "audit.sqlite")
        await store.open()
        try:
            page = await store.query(AuditQuery(types=("logout",), limit=500, oldest_first=True))
        finally:
            await store.aclose()
        found = [
            event
            for event in (AuditRecord.from_stored(r.text, r.hash).event for r in page.records)
            if event.operation == "sso_session_ended"
        ]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {count} sso_session_ended records: {found}")


async def sign_in_at_both_portals(sso: Sso, b: aiohttp.ClientSession) -> None:
    await sign_in(sso, b, "qh-100233")  # 苏兰心 at the Qinghai platform, L2
    page = await b.get(f"{sso.portal(SX).base_url}/login")  # portal B: SSO, no second login
    assert str(page.url) == f"{sso.portal(SX).base_url}/"


async def assert_ended_like_a_logout(
    expiry: Expiry, b: aiohttp.ClientSession, refresh_token: str, reason: str, families: int
) -> None:
    sso = expiry.sso
    portal_a, portal_b = sso.portal(QH), sso.portal(SX)
    subject_a, subject_b = only_session(portal_a).subject, only_session(portal_b).subject
    sid = only_session(portal_a).sid
    # No browser request: the sweeper ends the session and both portals hear it by back-channel.
    await eventually(lambda: portal_a.backchannel_logouts and portal_b.backchannel_logouts)
    assert (portal_a.backchannel_logouts[0]["sid"], portal_a.backchannel_logouts[0]["sub"]) == (
        sid,
        subject_a,
    )
    assert (portal_b.backchannel_logouts[0]["sid"], portal_b.backchannel_logouts[0]["sub"]) == (
        sid,
        subject_b,
    )
    assert portal_a.sessions == {}
    assert portal_b.sessions == {}
    # The session's grants are revoked: portal A's refresh token is refused.
    status, body = await refresh(sso, refresh_token)
    assert (status, body["error"]) == (400, "invalid_grant")
    # The cookie no longer signs anyone in: a new authorization asks for a login.
    page = await b.get(f"{portal_b.base_url}/login")
    assert str(page.url).startswith(f"{sso.gateway}/login?tx=")
    # One record per portal, under its pairwise subject, naming the timeout.
    ended = await session_ended_records(expiry.data_dir, 2)
    assert sorted((e.client or "", e.principal, e.extra["reason"]) for e in ended) == sorted(
        [(QH, subject_a, reason), (SX, subject_b, reason)]
    )
    assert all(e.extra["families_revoked"] == families for e in ended)
    assert all(e.extra["backchannel"] for e in ended)
    # Ended once: later sweeps find nothing, and no portal hears of it twice.
    assert await sso.authenticator.sweep_expired() == 0
    await asyncio.sleep(0.2)
    assert len(await session_ended_records(expiry.data_dir, 2)) == 2
    assert len(portal_a.backchannel_logouts) == len(portal_b.backchannel_logouts) == 1


# --- the journeys ----------------------------------------------------------------------------


async def test_an_idle_session_ends_like_a_logout_without_the_browser(expiry: Expiry) -> None:
    sso = expiry.sso
    async with browser() as b:
        await sign_in_at_both_portals(sso, b)
        token = await refresh_token_of_portal_a(sso, b)
        status, body = await refresh(sso, token)  # the token works while the session lives
        assert status == 200, body
        token = body["refresh_token"]
        expiry.clock.advance(IDLE - 60)
        await asyncio.sleep(0.2)  # several sweeps: nothing is due yet
        assert sso.portal(QH).backchannel_logouts == []
        assert sso.portal(SX).backchannel_logouts == []

        expiry.clock.advance(61)  # past the idle timeout, and not a single request
        # Grant families of the session: portal A's own and the test's, portal B's.
        await assert_ended_like_a_logout(expiry, b, token, "idle_timeout", families=3)


async def test_an_active_session_ends_at_its_absolute_timeout(expiry: Expiry) -> None:
    sso = expiry.sso
    portal_b = sso.portal(SX)
    async with browser() as b:
        await sign_in_at_both_portals(sso, b)
        token = await refresh_token_of_portal_a(sso, b)
        # In use every 800 s (under the idle timeout): the session lives on...
        for _ in range(2):
            expiry.clock.advance(800)
            page = await b.get(f"{portal_b.base_url}/login")
            assert str(page.url) == f"{portal_b.base_url}/", "still signed in, no prompt"
        assert portal_b.backchannel_logouts == []
        # ...until ABSOLUTE after the login, 200 s after its last use.
        expiry.clock.advance(ABSOLUTE - 1600 + 1)
        # Portal A's two, and portal B's three (a new code at each use).
        await assert_ended_like_a_logout(expiry, b, token, "absolute_timeout", families=5)
