"""Run the gateway application on a TCP port until SIGINT or SIGTERM, then close cleanly.

A start-up that cannot complete (a configuration problem, a port in use, a store that cannot
be opened) ends the process within seconds with exit code 1 and one plain message, the same
``config check`` prints for a configuration problem: never a traceback, and never a hang on
something already opened (every resource opened before the failure is closed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from gateway.adapter import AdapterConfigError
from gateway.app import create_app, open_provider
from gateway.errors import GatewayError, Unauthenticated
from gateway.http.keys import SETTINGS
from gateway.http.login import build_authenticator
from gateway.identity.devtokens import DevTokenIssuer, WithDevTokens
from gateway.identity.provider import OpenIDProvider
from gateway.logs import configure_logging
from gateway.principal import Principal, TokenVerifier
from gateway.settings import ConfigError, Settings, load_settings, with_instance_id
from gateway.stores.sqlite import private_dir

log = structlog.get_logger("tongban.serve")


async def serve_until_stopped(
    app: web.Application, host: str, port: int, *, on_started: Callable[[int], None] | None = None
) -> int:
    """Bind, start, tell ``on_started`` the bound port, wait for a stop signal, shut down."""
    runner = app_runner(app)
    try:
        # Inside the try: a start-up step that fails must still close the ones before it (an
        # open aiosqlite thread would otherwise keep the process alive after the error).
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            on_started(bound_port(runner))
        await stop.wait()
        log.info("gateway_stopping")
    finally:
        await runner.cleanup()
    return 0


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner of the gateway's server, with its idle and header timeout."""
    settings = app.get(SETTINGS)
    # aiohttp's keep-alive timer also runs while a request head is incomplete: it is the
    # header timeout too (server.idle_timeout; the body timeout is gateway/http/client_io.py).
    idle = settings.gateway.server.idle_timeout if settings is not None else 15.0
    return web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=idle)


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        return int(address[1])
    raise RuntimeError("the runner is not listening")


class _NoTokens:
    """Without an identity provider configured, `serve` refuses every bearer token."""

    async def verify(self, token: str) -> Principal:
        raise Unauthenticated("No token issuer is configured.")


async def run_serve(
    *,
    config_dir: Path,
    host: str | None,
    port: int | None,
    dev_tokens: bool,
    instance_id: str | None = None,
) -> int:
    try:
        # Reading every file and each WSDL is blocking work: off the event loop.
        settings = await asyncio.to_thread(load_settings, config_dir)
        if instance_id is not None:
            settings = with_instance_id(settings, instance_id)
    except ConfigError as exc:
        print(exc.report(config_dir), file=sys.stderr)
        return 1
    configure_logging(settings.gateway.logging.level, settings.gateway.logging.format)
    provider: OpenIDProvider | None = None
    try:
        private_dir(settings.data_dir())
        # The SSO session + federation when idps.yaml declares platforms, else nobody signs in.
        provider = await open_provider(settings, build_authenticator(settings))
        return await _serve(settings, provider, host, port, dev_tokens)
    except Exception as exc:
        print(f"tongban serve: cannot start: {startup_failure(exc)}", file=sys.stderr)
        await _close_quietly(provider)
        return 1


def startup_failure(exc: BaseException) -> str:
    """One line for a failed start-up: the error's own words (ours are safe to show; an OS
    error names the address or file), never a traceback."""
    if isinstance(exc, AdapterConfigError):
        return "; ".join(f"{e.field}: {e.message}" for e in exc.all())
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, OSError | GatewayError) else f"{type(exc).__name__}: {text}"


async def _close_quietly(provider: OpenIDProvider | None) -> None:
    """Close what start-up opened outside the app (closing twice is harmless)."""
    if provider is None:
        return
    authenticator = provider.authenticator
    resources = getattr(authenticator, "resources", None)
    with contextlib.suppress(Exception):
        await provider.aclose()
    http = getattr(resources, "http", None)
    if http is not None:
        with contextlib.suppress(Exception):
            await http.aclose()
    store = getattr(authenticator, "store", None)
    if store is not None:
        with contextlib.suppress(Exception):
            await store.aclose()


async def _serve(
    settings: Settings,
    provider: OpenIDProvider | None,
    host: str | None,
    port: int | None,
    dev_tokens: bool,
) -> int:
    server = settings.gateway.server
    verifier: TokenVerifier = provider.access_token_verifier() if provider else _NoTokens()
    if dev_tokens:
        issuer = DevTokenIssuer()
        verifier = WithDevTokens(issuer, verifier)
        log.warning("insecure_dev_tokens_enabled")
        for level in ("L1", "L2", "L3"):
            print(f"dev token {level}: {issuer.issue(f'dev-{level.lower()}', level)}", flush=True)
    app = create_app(settings, verifier=verifier, oidc=provider)
    return await serve_until_stopped(
        app, host or server.host, port if port is not None else server.port
    )
