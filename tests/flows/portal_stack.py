"""The demo portals in front of a real gateway on loopback, with the gateway's clock in the
test's hands: an access token expires when the test says so, without waiting five minutes.

``portal_stack`` is the async form (flow tests); ``portal_stack_in_thread`` runs the same stack
on an event loop of its own, for sync Playwright tests in the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app, open_provider
from gateway.consent.contract import ConsentBook
from gateway.demo.backends import DemoSecrets, start_demo_backends
from gateway.demo.federation import DemoIdentitySecrets, start_demo_identity
from gateway.demo.runner import demo_identity_env, point_at
from gateway.http.login import build_authenticator
from gateway.identity.devtokens import DevTokenIssuer, WithDevTokens
from gateway.identity.sessions import MemorySessionStore
from gateway.principal import TokenVerifier
from gateway.settings import load_settings
from tests.flows.conftest import CONFIG_DIR
from tests.flows.test_federated_sso import Sso
from tests.flows.test_sso_session_expiry import GatewayClock
from tests.ports import HeldPort

T = TypeVar("T")


@dataclass
class PortalStack:
    sso: Sso
    clock: GatewayClock
    """The gateway's clock (provider, token verifier, SSO sessions); the portals keep theirs."""
    loop: asyncio.AbstractEventLoop | None = None
    """The loop serving the stack when it runs in a thread of its own."""

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the stack's own loop (from the test's thread) and wait for it."""
        assert self.loop is not None, "only a stack in a thread of its own"
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)


@contextlib.asynccontextmanager
async def portal_stack(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    config_dir: Path = CONFIG_DIR,
    env: dict[str, str] | None = None,
    consent_book: ConsentBook | None = None,
    dev_tokens: DevTokenIssuer | None = None,
) -> AsyncIterator[PortalStack]:
    """The stack on ``config_dir`` (a variant of the demo's), with ``env`` exported too before
    the configuration is read."""
    clock = GatewayClock()
    backend_secrets = DemoSecrets.generate()
    env = {**backend_secrets.env(), **demo_identity_env(tmp_path), **(env or {})}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    held = HeldPort()
    port = held.port
    gateway = f"http://127.0.0.1:{port}"
    async with (
        await start_demo_backends(backend_secrets, config_dir=config_dir) as backends,
        await start_demo_identity(gateway, DemoIdentitySecrets.from_env(env)) as identity,
    ):
        settings = point_at(load_settings(config_dir), backends.overrides(), tmp_path, port=port)
        settings = identity.configure(settings)
        store = MemorySessionStore(clock=clock)
        provider = await open_provider(
            settings, build_authenticator(settings, store=store, clock=clock)
        )
        assert provider is not None
        provider.clock = clock  # before the verifier is made: it keeps the provider's clock
        verifier: TokenVerifier = provider.access_token_verifier()
        if dev_tokens is not None:
            verifier = WithDevTokens(dev_tokens, verifier)
        app = create_app(
            settings,
            verifier=verifier,
            oidc=provider,
            consent_book=consent_book,
        )
        server = TestServer(app, host="127.0.0.1", port=port, socket_factory=held.socket_factory)
        await server.start_server()
        try:
            yield PortalStack(Sso(gateway, provider, identity, backends, list(env.values())), clock)
        finally:
            await server.close()


@contextlib.contextmanager
def portal_stack_in_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PortalStack]:
    """``portal_stack`` served from a thread of its own, so the test's thread may block."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="portal-stack", daemon=True)
    thread.start()
    try:
        stack = portal_stack(tmp_path, monkeypatch)
        entered = asyncio.run_coroutine_threadsafe(stack.__aenter__(), loop).result(60)
        entered.loop = loop
        try:
            yield entered
        finally:
            asyncio.run_coroutine_threadsafe(stack.__aexit__(None, None, None), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
