"""Run the gateway application on a TCP port until SIGINT or SIGTERM, then close cleanly.

A start-up that cannot complete (a configuration problem, a port in use, a store that cannot
be opened) ends the process within seconds with exit code 1 and one plain message, the same
``config check`` prints for a configuration problem: never a traceback, and never a hang on
something already opened (every resource opened before the failure is closed again).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gateway.adapter import AdapterConfigError
from gateway.app import create_app, open_provider
from gateway.errors import GatewayError, Unauthenticated
from gateway.http.admission import ADMISSION, limit_connections, refuse_at_the_door
from gateway.http.keys import METRICS, SETTINGS
from gateway.http.login import build_authenticator
from gateway.identity.devtokens import DevTokenIssuer, WithDevTokens
from gateway.identity.provider import OpenIDProvider
from gateway.logs import configure_logging
from gateway.principal import Principal, TokenVerifier
from gateway.settings import ConfigError, Settings, load_settings, with_instance_id
from gateway.stores.sqlite import private_dir

log = structlog.get_logger("tongban.serve")


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_started: Callable[[int], None] | None = None,
    listen: socket.socket | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> int:
    """Bind (or serve on the ``listen`` socket a supervisor handed over), start, tell
    ``on_started`` the bound port, wait for a stop signal, shut down."""
    runner = app_runner(app)
    try:
        # Inside the try: a start-up step that fails must still close the ones before it (an
        # open aiosqlite thread would otherwise keep the process alive after the error).
        await runner.setup()
        limit_connections_of(app, runner)
        site: web.BaseSite
        if listen is not None:
            site = web.SockSite(runner, listen)
        else:
            site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        freeze_startup_objects()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in stop_signals:
            loop.add_signal_handler(sig, stop.set)
        if on_started is not None:
            on_started(bound_port(runner))
        await stop.wait()
        log.info("gateway_stopping")
    finally:
        await runner.cleanup()
    return 0


def limit_connections_of(app: web.Application, runner: web.AppRunner) -> None:
    """The app's admission on the runner's server: its connection bound
    (admission.max_connections), and refusals answered as soon as a request is parsed."""
    admission = app.get(ADMISSION)
    if admission is not None and runner.server is not None:
        refuse_at_the_door(runner.server, admission)
        metrics = app[METRICS]
        limit_connections(
            runner.server,
            admission.settings.max_connections,
            lambda: metrics.refused_by_admission("connections"),
            admission,
        )


GC_YOUNG_THRESHOLD = 10_000
"""Container objects allocated (net of those freed) between two collections of the youngest
generation; CPython's default is 700."""


def freeze_startup_objects() -> None:
    """Keep what start-up built (modules, WSDL models, schemas, settings: most of a worker's
    heap, and alive for its whole life) out of the cyclic garbage collector's full
    collections, which otherwise walk all of it again and again under load.

    And collect the young generation less often. A call's objects die by reference counting
    and almost no garbage is cyclic, but at 700 the collector ran a hundred times a second at
    1,000 calls/s, each time promoting whatever the calls in flight held at that moment, and
    the older generations it filled took 1-3 ms per collection, stalling every call on the
    loop; they found nothing to free. At 10,000 the calls in flight are mostly gone before a
    collection sees them (docs/performance.md, "Tail latency")."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class WorkerRole:
    """What a supervised worker process is given (gateway/workers.py): the listening socket,
    the development-token key shared by all workers, and where to report."""

    listen: socket.socket
    on_started: Callable[[int], None]
    shared: Callable[[Settings], Settings]
    """The settings as one worker of several runs them (memory stores made shared)."""
    dev_secret: bytes | None = None


async def run_serve(
    *,
    config_dir: Path,
    host: str | None,
    port: int | None,
    dev_tokens: bool,
    instance_id: str | None = None,
    role: WorkerRole | None = None,
    report: Callable[[str], None] = _to_stderr,
) -> int:
    """Serve one process until stopped; ``report`` receives the one message of a failed start."""
    try:
        # Reading every file and each WSDL is blocking work: off the event loop.
        settings = await asyncio.to_thread(load_settings, config_dir)
        if instance_id is not None:
            settings = with_instance_id(settings, instance_id)
        if role is not None:
            settings = role.shared(settings)
    except ConfigError as exc:
        report(exc.report(config_dir))
        return 1
    configure_logging(settings.gateway.logging.level, settings.gateway.logging.format)
    if role is not None:
        _name_worker_in_logs(settings.gateway.instance_id)
    provider: OpenIDProvider | None = None
    try:
        private_dir(settings.data_dir())
        # The SSO session + federation when idps.yaml declares platforms, else nobody signs in.
        provider = await open_provider(settings, build_authenticator(settings))
        return await _serve(settings, provider, host, port, dev_tokens, role)
    except Exception as exc:
        report(f"tongban serve: cannot start: {startup_failure(exc)}")
        await _close_quietly(provider)
        return 1


def _name_worker_in_logs(name: str) -> None:
    """Every log line of a worker says which one wrote it (``worker``: its audit chain's id)."""

    def add_worker(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        event.setdefault("worker", name)
        return event

    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[add_worker, *processors])


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
    role: WorkerRole | None = None,
) -> int:
    server = settings.gateway.server
    verifier: TokenVerifier = provider.access_token_verifier() if provider else _NoTokens()
    if dev_tokens:
        issuer = DevTokenIssuer(role.dev_secret if role is not None else None)
        verifier = WithDevTokens(issuer, verifier)
        log.warning("insecure_dev_tokens_enabled")
        if role is None:  # a supervisor prints them once for all its workers
            print_dev_tokens(issuer)
    app = create_app(settings, verifier=verifier, oidc=provider)
    if role is None:
        return await serve_until_stopped(
            app, host or server.host, port if port is not None else server.port
        )
    # A worker stops on SIGTERM only: Ctrl-C reaches the supervisor, which stops every worker.
    return await serve_until_stopped(
        app,
        "",
        0,
        listen=role.listen,
        on_started=role.on_started,
        stop_signals=(signal.SIGTERM,),
    )


def print_dev_tokens(issuer: DevTokenIssuer) -> None:
    for level in ("L1", "L2", "L3"):
        print(f"dev token {level}: {issuer.issue(f'dev-{level.lower()}', level)}", flush=True)
