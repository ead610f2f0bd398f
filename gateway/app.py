"""Wiring only: build the aiohttp application from validated settings and injected parts."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from gateway.adapter import Adapter, SystemSpec, load_adapter_factory
from gateway.audit.calls import CallAuditor, RouteAudit
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.setup import open_audit_writer
from gateway.audit.sink import WriterAuditSink
from gateway.breaker import CircuitBreaker
from gateway.catalog import Catalog
from gateway.consent.contract import ConsentBook
from gateway.consent.factory import subject_keys
from gateway.http import handlers
from gateway.http.admission import ADMISSION, Admission, admission_middleware
from gateway.http.audit import add_audit_routes
from gateway.http.cases import add_case_routes
from gateway.http.chain import request_middleware
from gateway.http.consents import AppConsentBook, add_consent_routes
from gateway.http.dispatch import Handler, direct_calls
from gateway.http.guards import add_guards
from gateway.http.keys import METRICS, SETTINGS, STATE, SUBJECTS, VERIFIER, GatewayState
from gateway.http.licences import add_licences
from gateway.http.oidc import OIDC_PROVIDER, add_oidc_routes
from gateway.http.ratelimit import add_rate_limits
from gateway.identity.authn import Authenticator
from gateway.identity.provider import OpenIDProvider
from gateway.identity.subject_keys import SubjectKeys
from gateway.metrics import Metrics
from gateway.pipeline import Sleep, SystemRuntime, build_stack
from gateway.principal import TokenVerifier
from gateway.settings import RouteSettings, Settings, SystemSettings
from gateway.subjects import SubjectRule

log = structlog.get_logger("tongban.app")


def _admitted_calls(app: web.Application, route: AbstractRoute) -> Handler | None:
    """The call endpoint's middlewares, ``admission_middleware`` and ``request_middleware``,
    as one frame (``request_middleware`` given the admission), while they are the app's."""
    if list(app.middlewares) != [admission_middleware, request_middleware]:
        return None
    return functools.partial(request_middleware, handler=route.handler, admission=app[ADMISSION])


def create_app(
    settings: Settings,
    *,
    verifier: TokenVerifier,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    open_adapter: AdapterOpener | None = None,
    oidc: OpenIDProvider | None = None,
    consent_book: ConsentBook | None = None,
    subjects: SubjectKeys | None = None,
) -> web.Application:
    """The gateway app. ``open_adapter`` replaces plugin lookup (tests pass fakes through it);
    ``consent_book`` decides the grants that open someone else's data (none: every grant is
    refused, and only the principal's own and public data are reached); ``subjects`` replaces
    the subject keys the identity secrets give (tests without an identity block)."""
    app = web.Application(
        # Admission first: it refuses what this worker cannot take in now, before any other
        # work (no access line, no token check, no store). Then every other layer in one
        # middleware (request context and access line, anonymous refusal records, problem+json,
        # the body, the endpoint budgets, the token, the /api rate limits, the /admin and
        # identity audit), in that order: gateway/http/chain.py says why and how.
        middlewares=[admission_middleware, request_middleware],
        client_max_size=settings.gateway.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    metrics = app[METRICS] = Metrics()
    app[ADMISSION] = Admission(
        settings.gateway.admission,
        settings.gateway.server.max_body_bytes,
        on_refused=metrics.refused_by_admission,
    )
    app[VERIFIER] = verifier
    app[STATE] = GatewayState()
    # The data-subject rule asks the consent book the consent context opens (failing closed
    # while it is not open), unless one is injected.
    app[SUBJECTS] = SubjectRule(
        subjects or subject_keys(settings), consent_book or AppConsentBook(app[STATE])
    )
    # The audit trail opens first: every route's stack records through it.
    app.cleanup_ctx.append(_audit_context)
    # The consent book next: it records through the audit trail, and the routes' rule asks it.
    add_consent_routes(app)
    app.cleanup_ctx.append(_systems_context(sleep, clock, open_adapter or _open_plugin))
    add_licences(app, sleep)  # after the systems, before the cases: intake verifies licences
    add_rate_limits(app)
    add_guards(app)

    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)
    app.router.add_get("/api/v1/services", handlers.list_services)
    app.router.add_get("/api/v1/services/{service}", handlers.get_service)
    calls = app.router.add_post("/api/v1/services/{service}/calls", handlers.call_service)
    # Their dispatch without aiohttp's general one (dispatch.py), the admission's check in the
    # request middleware's frame (chain.py).
    direct_calls(app, calls, _admitted_calls)
    add_case_routes(app)  # after the systems context: the case worker needs the catalogue
    add_audit_routes(app)
    if oidc is not None:
        add_oidc_routes(app, oidc)
    return app


async def open_provider(settings: Settings, authenticator: Authenticator) -> OpenIDProvider | None:
    """The OpenID provider of ``settings`` (keys loaded or created off the event loop), if any."""
    if settings.gateway.identity is None:
        return None
    return await asyncio.to_thread(
        OpenIDProvider.from_config,
        settings.gateway.identity,
        settings.clients.values(),
        data_dir=settings.data_dir(),
        authenticator=authenticator,
    )


AdapterOpener = Callable[[SystemSettings, SystemSpec], Awaitable[Adapter]]


async def _open_plugin(system: SystemSettings, spec: SystemSpec) -> Adapter:
    return await load_adapter_factory(system.adapter_name).open(spec)


def _systems_context(
    sleep: Sleep, clock: Callable[[], float], open_adapter: AdapterOpener
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def systems(app: web.Application) -> AsyncIterator[None]:
        settings, state, metrics = app[SETTINGS], app[STATE], app[METRICS]
        try:
            for sid, system in settings.systems.items():
                adapter = await open_adapter(system, system.spec(sid, settings.config_dir))
                breaker = CircuitBreaker(
                    sid,
                    failure_threshold=system.breaker.failure_threshold,
                    reset_timeout=system.breaker.reset_timeout,
                    half_open_max_calls=system.breaker.half_open_max_calls,
                    clock=clock,
                    on_change=_breaker_logger(metrics),
                )
                metrics.breaker_changed(sid, breaker.state)
                state.systems[sid] = SystemRuntime(
                    sid, system, adapter, breaker, asyncio.Semaphore(system.concurrency_limit)
                )
            auditor = CallAuditor(state.audit) if state.audit is not None else None
            state.opened_catalog = Catalog.build(
                settings,
                lambda route, operation: build_stack(
                    state.systems[route.system],
                    policy=operation.retry,
                    sleep=sleep,
                    observer=metrics,
                    audit=(auditor, _route_audit(settings, route)) if auditor else None,
                ),
            )
            log.info("gateway_started", systems=len(state.systems), routes=len(settings.routes))
            yield
        finally:
            for runtime in state.systems.values():
                await runtime.adapter.aclose()

    return systems


def _route_audit(settings: Settings, route: RouteSettings) -> RouteAudit:
    return RouteAudit(
        service=route.service,
        operation=route.operation,
        system=route.system,
        system_operation=route.system_operation,
        mode=settings.services[route.service].audit,
        outcome=settings.services[route.service].audit_outcome,
    )


async def _audit_context(app: web.Application) -> AsyncIterator[None]:
    """This instance's audit chain, open for the app's whole life; closing flushes and signs."""
    settings, state = app[SETTINGS], app[STATE]
    store, _keys, writer = await open_audit_writer(
        settings.gateway.audit, settings.data_dir(), settings.gateway.instance_id
    )
    state.audit, state.audit_store = writer, store

    async def readiness() -> dict[str, Any]:
        report = writer.readiness()
        return {
            "ready": report.ready,
            "state": report.state,
            "chain": report.chain,
            "head_sequence": report.head_sequence,
            "buffer_fill": round(report.buffer_fill, 4),
        }

    state.readiness["audit"] = readiness
    # The identity core records logins, tokens and logouts through the provider's sink.
    provider = app.get(OIDC_PROVIDER)
    sink = provider.audit if provider is not None else None
    if isinstance(sink, WriterAuditSink):
        sink.bind(writer)
    try:
        await writer.append(
            AuditEvent(
                type=EventType.CONFIG_LOADED,
                extra={
                    "systems": len(settings.systems),
                    "services": len(settings.services),
                    "routes": len(settings.routes),
                },
            ),
            mode="buffered",
        )
        yield
    finally:
        if isinstance(sink, WriterAuditSink):
            sink.unbind()
        await writer.aclose()
        await store.aclose()


def _breaker_logger(metrics: Metrics) -> Callable[[str, Any], None]:
    def changed(system: str, state: Any) -> None:
        metrics.breaker_changed(system, state)
        log.warning("breaker_changed", system=system, state=state.value)

    return changed
