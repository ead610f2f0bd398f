"""Typed application keys and the request-scoped names shared by the HTTP layer and the wiring."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter
from gateway.catalog import Catalog
from gateway.consent.book import ConsentService
from gateway.metrics import Metrics
from gateway.pipeline import SystemRuntime
from gateway.principal import Principal, TokenVerifier
from gateway.ratelimit.limiter import ApiRateLimiter
from gateway.settings import Settings
from gateway.subjects import SubjectRule

ReadinessProbe = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class GatewayState:
    """Resources opened at start-up (in cleanup contexts), after the app is frozen."""

    systems: dict[str, SystemRuntime] = field(default_factory=dict)
    readiness: dict[str, ReadinessProbe] = field(default_factory=dict)
    opened_catalog: Catalog | None = None
    audit: AuditWriter | None = None
    audit_store: AuditStore | None = None
    rate_limiter: ApiRateLimiter | None = None
    consent: ConsentService | None = None
    """The consent book (a ConsentBook for the data-subject rule), once its store is open."""

    @property
    def catalog(self) -> Catalog:
        if self.opened_catalog is None:
            raise RuntimeError("the catalogue is built when the app starts")
        return self.opened_catalog


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
VERIFIER = web.AppKey("verifier", TokenVerifier)
STATE = web.AppKey("state", GatewayState)
SUBJECTS = web.AppKey("subjects", SubjectRule)
"""The data-subject rule with its consent book (gateway/subjects.py)."""

PRINCIPAL = web.RequestKey("principal", Principal)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, Any])
REQUEST_ID = web.RequestKey("request_id", str)


def principal_of(request: web.Request) -> Principal:
    principal = request._state.get(PRINCIPAL)  # request.get: Mapping.get and request[...]
    assert isinstance(principal, Principal), "auth middleware runs before every /api handler"
    return principal
