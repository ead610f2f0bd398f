"""Run the gateway application on a TCP port until SIGINT or SIGTERM, then close cleanly."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from gateway.app import create_app, open_provider
from gateway.errors import Unauthenticated
from gateway.http.login import build_authenticator
from gateway.identity.devtokens import DevTokenIssuer, WithDevTokens
from gateway.logs import configure_logging
from gateway.principal import Principal, TokenVerifier
from gateway.settings import ConfigError, load_settings, with_instance_id

log = structlog.get_logger("tongban.serve")


async def serve_until_stopped(
    app: web.Application, host: str, port: int, *, on_started: Callable[[int], None] | None = None
) -> int:
    """Bind, start, tell ``on_started`` the bound port, wait for a stop signal, shut down."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
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
        settings = load_settings(config_dir)
        if instance_id is not None:
            settings = with_instance_id(settings, instance_id)
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 1
    server = settings.gateway.server
    configure_logging(settings.gateway.logging.level, settings.gateway.logging.format)
    settings.data_dir().mkdir(parents=True, exist_ok=True)
    # The SSO session + federation when idps.yaml declares platforms, else nobody signs in.
    provider = await open_provider(settings, build_authenticator(settings))
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
