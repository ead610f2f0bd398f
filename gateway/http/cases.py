"""The case API: thin handlers over ``gateway.cases``, and the case resources' cleanup context.

POST /api/v1/cases                     take an application in (Idempotency-Key) → 202 receipt
GET  /api/v1/cases/{case_id}           timeline, materials by reference, result, what is missing
POST /api/v1/cases/{case_id}/supplements  补齐补正: supply what was asked (Idempotency-Key) → 202
GET  /api/v1/cases                     mine (?queue=window: a clerk's window queue)
POST /api/v1/callbacks/{system}        a provincial system's status push (HMAC, sequenced)
GET  /admin/cases/dead-letters         operator: what delivery gave up on, with the reason
POST /admin/cases/{case_id}/replay     operator: put a dead-lettered case back on schedule
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.audit.writer import AuditWriter
from gateway.cases.audit import CaseAudit, WriterCaseAudit
from gateway.cases.config import CaseSettings
from gateway.cases.dispatcher import DispatcherLock, ElectedDispatcher
from gateway.cases.errors import CaseStoreDown
from gateway.cases.events import EventSink, JsonlEventSink, NullEventSink, WebhookEventSink
from gateway.cases.intake import CASE_REQUEST_SCHEMA
from gateway.cases.model import Case, CaseStatus, CaseSummary, PartStatus, Supplement
from gateway.cases.service import CaseService
from gateway.cases.store import CaseStore, CaseStoreUnavailable
from gateway.cases.supplements import SUPPLEMENT_SCHEMA
from gateway.cases.worker import DeliveryWorker
from gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
)
from gateway.http.client_io import json_object, read_json_body
from gateway.http.keys import (
    LOG_FIELDS,
    REQUEST_ID,
    SETTINGS,
    STATE,
    SUBJECTS,
    principal_of,
)
from gateway.http.licences import LICENCES
from gateway.http.middlewares import authenticate
from gateway.http.oidc import (
    check_client_may_call,
    check_receiving_province,
    client_registration,
    machine_admitted,
)
from gateway.principal import Principal
from gateway.settings import Settings
from gateway.stores.postgres_cases import PostgresCaseStore
from gateway.stores.sqlite_cases import SqliteCaseStore

log = structlog.get_logger("tongban.cases")


@dataclass(slots=True)
class CaseRuntime:
    service: CaseService
    store: CaseStore
    worker: DeliveryWorker | None
    events: EventSink


CASES = web.AppKey("cases", CaseRuntime)
CASE_AUDIT = web.AppKey("case_audit", CaseAudit)
"""Set by the wiring before start-up to audit every case transition (optional)."""


def open_case_store(settings: Settings) -> CaseStore:
    config = settings.gateway.cases.store
    store: PostgresCaseStore | SqliteCaseStore
    if config.backend == "postgres":
        assert config.dsn is not None
        store = PostgresCaseStore(config.dsn, schema=config.schema_name, max_size=config.pool_size)
    else:
        store = SqliteCaseStore(settings.data_dir() / config.path)
    store.keep_events = settings.gateway.cases.events.kind != "none"
    return store


def open_event_sink(settings: Settings) -> EventSink:
    config = settings.gateway.cases.events
    if config.kind == "jsonl":
        return JsonlEventSink(settings.data_dir() / config.path)
    if config.kind == "webhook":
        assert config.url is not None
        secret = config.secret.get_secret_value() if config.secret else None
        return WebhookEventSink(config.url, secret=secret, timeout=config.timeout)
    return NullEventSink()


def callback_keys(config: CaseSettings) -> dict[str, bytes]:
    return {
        sid: entry.secret.get_secret_value().encode() for sid, entry in config.callbacks.items()
    }


def add_case_routes(app: web.Application) -> None:
    """Mount the case API and open the store, event sink and worker with the app."""
    app.cleanup_ctx.append(_cases_context)
    app.router.add_post("/api/v1/cases", submit_case)
    app.router.add_get("/api/v1/cases", list_cases)
    app.router.add_get("/api/v1/cases/{case_id}", get_case)
    app.router.add_post("/api/v1/cases/{case_id}/supplements", submit_supplement)
    app.router.add_post("/api/v1/callbacks/{system}", receive_callback)
    app.router.add_get("/admin/cases/dead-letters", dead_letters)
    app.router.add_post("/admin/cases/{case_id}/replay", replay_case)


async def _cases_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = settings.gateway.cases
    if not config.enabled:
        yield
        return
    state = app[STATE]
    store = open_case_store(settings)
    await store.open()
    events = open_event_sink(settings)
    audit = app.get(CASE_AUDIT)
    writer = getattr(state, "audit", None)
    if audit is None and isinstance(writer, AuditWriter):
        # The instance's audit chain: intake fail-closed, later transitions buffered.
        audit = WriterCaseAudit(writer)
    worker = None
    if config.worker:
        worker = DeliveryWorker(
            store,
            lambda: state.catalog,
            config.delivery,
            events=events,
            audit=audit,
            subject_keys=app[SUBJECTS].keys,
        )
    service = CaseService(
        store,
        lambda: state.catalog,
        audit=audit,
        callback_keys=callback_keys(config),
        on_written=worker.notify if worker else None,
        subjects=app[SUBJECTS],
        materials=licences.materials if (licences := app.get(LICENCES)) else None,
    )
    app[CASES] = CaseRuntime(service, store, worker, events)
    if licences is not None:
        licences.cases = store  # an issuer's status change reaches the cases relying on it

    async def probe() -> dict[str, Any]:
        await store.ping()
        return {"ready": True}

    state.readiness["cases"] = probe
    # On SQLite one process of those sharing the data directory dispatches (a lock file).
    dispatcher: DeliveryWorker | ElectedDispatcher | None = worker
    if worker is not None and config.store.backend == "sqlite":
        database = settings.data_dir() / config.store.path
        dispatcher = ElectedDispatcher(worker, DispatcherLock.beside(database))
    if dispatcher is not None:
        dispatcher.start()
    try:
        yield
    finally:
        # An application being taken in when its handler was stopped ends before the store
        # closes: taken in, or its uses given back (the consent book closes after this).
        await service.drain()
        if dispatcher is not None:
            await dispatcher.aclose()
        await events.aclose()
        await store.aclose()


def _runtime(request: web.Request) -> CaseRuntime:
    runtime = request.app.get(CASES)
    if runtime is None:
        raise web.HTTPNotFound()
    return runtime


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def receipt(case: Case, base: str) -> dict[str, Any]:
    """受理回执: what the applicant keeps as proof the application was taken in."""
    return {
        "case_id": case.case_id,
        "service": case.service,
        "mode": case.mode.value,
        "receiving_province": case.receiving_province,
        "handling_provinces": case.handling_provinces,
        "received_at": case.created_at,
        "status": case.status.value,
        "status_url": f"{base}/api/v1/cases/{case.case_id}",
    }


def case_view(case: Case) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "service": case.service,
        "mode": case.mode.value,
        "status": case.status.value,
        "receiving_province": case.receiving_province,
        "handling_provinces": case.handling_provinces,
        "purpose": case.purpose,
        "actor": case.actor,
        "created_at": case.created_at,
        "updated_at": case.updated_at,
        "materials": [m.as_json() for m in case.materials],
        # A linked case's combined outcome once it closed (what was done, refused, undone).
        "outcome": case.outcome,
        "parts": [
            {
                "part": p.number,
                "name": p.name,
                "after": [case.part(n).label for n in p.after],
                "required": p.required,
                "handling_province": p.handling_province,
                "operation": p.operation,
                "system": p.system,
                "status": p.status.value,
                "result": p.result,
                "error_code": p.error_code,
                # Beside a dead letter's last error: what the system itself failed with first.
                "cause": p.cause,
                "updated_at": p.updated_at,
                # 补齐补正: what the handling province asked for last (kept once answered).
                "supplement_request": p.supplement.as_json() if p.supplement else None,
            }
            for p in case.parts
        ],
        "supplements": [s.as_json() for s in case.supplements],
        "timeline": [t.as_json() for t in case.transitions],
    }


def supplement_receipt(case: Case, supplement: Supplement, base: str) -> dict[str, Any]:
    """补正回执: the case's receipt again, naming the supplement it took in."""
    return {
        **receipt(case, base),
        "supplement": {
            "sequence": supplement.sequence,
            "part": supplement.part,
            "submitted_at": supplement.submitted_at,
            "materials": [m.as_json() for m in supplement.materials],
        },
    }


def summary_view(summary: CaseSummary) -> dict[str, Any]:
    return {
        "case_id": summary.case_id,
        "service": summary.service,
        "mode": summary.mode.value,
        "status": summary.status.value,
        "receiving_province": summary.receiving_province,
        "handling_provinces": list(summary.handling_provinces),
        "created_at": summary.created_at,
        "updated_at": summary.updated_at,
        "actor": summary.actor,
    }


def _base_url(request: web.Request) -> str:
    public = request.app[SETTINGS].gateway.server.public_url
    return (public or f"{request.scheme}://{request.host}").rstrip("/")


async def submit_case(request: web.Request) -> web.Response:
    principal = principal_of(request)
    runtime = _runtime(request)
    raw, body = await read_json_body(request)
    fields = request[LOG_FIELDS]
    fields.update(service=str(body.get("service", ""))[:64])
    registration = client_registration(request.app, principal)
    if isinstance(body.get("service"), str):
        # The same client rules as a synchronous call: allowed_services and the call scope.
        check_client_may_call(request.app, principal, body["service"])
    if isinstance(body.get("receiving_province"), str):
        check_receiving_province(registration, principal, body["receiving_province"])
    submitted = await runtime.service.submit(
        principal,
        body,
        idempotency_key=request.headers.get("Idempotency-Key"),
        request_id=request[REQUEST_ID],
        raw=raw,
        machine=machine_admitted(registration, principal),
    )
    fields.update(case_id=submitted.case.case_id, created=submitted.created)
    answer = receipt(submitted.case, _base_url(request))
    return _json(
        answer,
        status=202,
        headers={
            "Location": answer["status_url"],
            "Idempotent-Replayed": "false" if submitted.created else "true",
        },
    )


async def get_case(request: web.Request) -> web.Response:
    case = await _runtime(request).service.get_for(
        principal_of(request), request.match_info["case_id"]
    )
    request[LOG_FIELDS]["case_id"] = case.case_id
    return _json(case_view(case))


async def submit_supplement(request: web.Request) -> web.Response:
    """补齐补正: the applicant (or whoever acts for them) answers a supplement request."""
    principal = principal_of(request)
    runtime = _runtime(request)
    _raw, body = await read_json_body(request)
    case = await runtime.service.get_for(principal, request.match_info["case_id"])
    fields = request[LOG_FIELDS]
    fields.update(case_id=case.case_id, service=case.service)
    # The same client rules as taking the case in: allowed_services and the call scope.
    check_client_may_call(request.app, principal, case.service)
    taken = await runtime.service.supplement(
        principal,
        case.case_id,
        body,
        idempotency_key=request.headers.get("Idempotency-Key"),
        request_id=request[REQUEST_ID],
    )
    fields.update(created=taken.created)
    answer = supplement_receipt(taken.case, taken.supplement, _base_url(request))
    return _json(
        answer,
        status=202,
        headers={
            "Location": answer["status_url"],
            "Idempotent-Replayed": "false" if taken.created else "true",
        },
    )


async def list_cases(request: web.Request) -> web.Response:
    asked = request.query.get("queue")
    if asked is not None and asked != "window":
        raise InvalidRequest("queue must be 'window' (a clerk's window queue) or absent.")
    queue = asked == "window"
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 500)
    except ValueError:
        raise InvalidRequest("limit must be a number.") from None
    found = await _runtime(request).service.list_for(
        principal_of(request), queue=queue, limit=limit
    )
    return _json({"cases": [summary_view(s) for s in found]})


async def receive_callback(request: web.Request) -> web.Response:
    """Authenticated by the system's HMAC, not a bearer token (the auth middleware skips it)."""
    runtime = _runtime(request)
    system = request.match_info["system"]
    request[LOG_FIELDS]["system"] = system[:64]
    raw = await request.read()
    try:
        runtime.service.verify_callback(
            system,
            raw,
            request.headers.get("X-Tongban-Timestamp", ""),
            request.headers.get("X-Tongban-Signature", ""),
        )
    except GatewayError as exc:
        await runtime.service.audit_refused_callback(system, exc.code, request[REQUEST_ID])
        raise
    body = json_object(raw)
    outcome = await runtime.service.callback(system, body, request_id=request[REQUEST_ID])
    request[LOG_FIELDS].update(case_id=outcome.case_id, outcome=outcome.status)
    return _json({"status": outcome.status, "case_id": outcome.case_id})


async def _operator(request: web.Request) -> Principal:
    """Admin routes sit outside /api, so they check the bearer token themselves."""
    await authenticate(request)
    principal = principal_of(request)
    if "operator" not in principal.roles:
        raise Forbidden("This needs the operator role.")
    return principal


async def dead_letters(request: web.Request) -> web.Response:
    await _operator(request)
    try:
        entries = await _runtime(request).store.dead_letters(limit=500)
    except CaseStoreUnavailable as exc:
        raise CaseStoreDown() from exc
    return _json(
        {
            "dead_letters": [
                {
                    "entry_id": e.entry_id,
                    "case_id": e.case_id,
                    "part": e.part,
                    "kind": e.kind.value,
                    "attempts": e.attempts,
                    "reason": e.last_error,
                    "cause": e.cause,
                    "created_at": e.created_at,
                }
                for e in entries
            ]
        }
    )


async def replay_case(request: web.Request) -> web.Response:
    operator = await _operator(request)
    case = await _runtime(request).service.replay(
        request.match_info["case_id"],
        operator=operator.acting,
        request_id=request[REQUEST_ID],
    )
    request[LOG_FIELDS]["case_id"] = case.case_id
    return _json(case_view(case), status=202)


# --- OpenAPI fragment (merged into /openapi.json by gateway.http.openapi) ----------------------
# The 429 of rate limits and the RateLimit-Policy field are added to every authenticated /api
# operation there (gateway.http.openapi._rate_limited), not repeated here.

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


NO_AGREEMENT_OR_INVALID: dict[str, Any] = {
    "description": (
        "client.validation_failed: the envelope or its data do not fit the schema; or "
        "client.no_agreement: no agreement covers this service and operation between the "
        "receiving and the handling province (a well-formed request the catalogue refuses)"
    ),
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
"""The 422 of a routed call or case: the one refusal a schema-valid request can still meet."""


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Problem details (RFC 9457) with a stable code",
            "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
        }
        for s in statuses
    }


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_RECEIPT = {
    "type": "object",
    "required": ["case_id", "service", "handling_provinces", "received_at", "status_url"],
    "properties": {
        "case_id": {"type": "string"},
        "service": {"type": "string"},
        "mode": {"type": "string", "enum": ["online", "proxy", "joint"]},
        "receiving_province": {"type": "string"},
        "handling_provinces": {"type": "array", "items": {"type": "string"}},
        "received_at": {"type": "string"},
        "status": {"type": "string"},
        "status_url": {"type": "string"},
    },
}
_MATERIAL = {
    "type": "object",
    "required": ["code", "ref", "digest"],
    "properties": {
        "code": {"type": "string"},
        "ref": {"type": "string"},
        "digest": {"type": "string"},
    },
}
_SUPPLEMENT_REQUEST = {
    "description": "补齐补正: what the handling province asked for last (null: never asked)",
    "type": ["object", "null"],
    "required": ["materials", "message", "deadline", "requested_at"],
    "properties": {
        "materials": {"type": "array", "items": {"type": "string"}},
        "message": {"type": ["string", "null"]},
        "deadline": {"type": ["string", "null"]},
        "requested_at": {"type": ["string", "null"]},
    },
}
_SUPPLEMENT = {
    "type": "object",
    "required": ["sequence", "part", "materials", "note", "actor", "submitted_at"],
    "properties": {
        "sequence": {"type": "integer", "minimum": 1},
        "part": {"type": "integer", "minimum": 0},
        "materials": {"type": "array", "items": _MATERIAL},
        "note": {"type": ["string", "null"]},
        "actor": {"type": "string"},
        "submitted_at": {"type": "string"},
    },
}
_CASE = {
    "type": "object",
    "required": ["case_id", "service", "status", "parts", "timeline", "materials", "supplements"],
    "properties": {
        "case_id": {"type": "string"},
        "service": {"type": "string"},
        "mode": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in CaseStatus]},
        "outcome": {
            "type": ["object", "null"],
            "description": "A linked case's combined outcome, once closed",
        },
        "parts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["part", "status", "supplement_request"],
                "properties": {
                    "part": {"type": "integer"},
                    "name": {
                        "type": ["string", "null"],
                        "description": "A linked part's name (联动办理); null for a plain part",
                    },
                    "after": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The parts this one waits for",
                    },
                    "required": {"type": "boolean"},
                    "status": {
                        "type": "string",
                        "enum": [s.value for s in PartStatus],
                    },
                    "error_code": {"type": ["string", "null"]},
                    "cause": {
                        "type": ["string", "null"],
                        "description": "A dead letter's first failure of the system itself",
                    },
                    "supplement_request": _SUPPLEMENT_REQUEST,
                },
            },
        },
        "timeline": {"type": "array", "items": {"type": "object"}},
        "materials": {"type": "array", "items": {"type": "object"}},
        "supplements": {"type": "array", "items": _SUPPLEMENT},
    },
}
_SUPPLEMENT_RECEIPT = {
    "type": "object",
    "required": [*_RECEIPT["required"], "supplement"],
    "properties": {
        **_RECEIPT["properties"],  # type: ignore[dict-item]
        "supplement": {
            "type": "object",
            "required": ["sequence", "part", "submitted_at", "materials"],
            "properties": {
                "sequence": {"type": "integer", "minimum": 1},
                "part": {"type": "integer", "minimum": 0},
                "submitted_at": {"type": "string"},
                "materials": {"type": "array", "items": _MATERIAL},
            },
        },
    },
}
_STRING = {"type": "string"}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_CASE_ID = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"}}


def case_openapi_paths() -> dict[str, Any]:
    """The case endpoints, for /openapi.json."""
    return {
        "/api/v1/cases": {
            "post": {
                "summary": "Take an application in (收件受理); answers a receipt (受理回执)",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "description": "Same key + same body → the same case; another body → 409",
                        "schema": {"type": "string", "minLength": 8, "maxLength": 128},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": CASE_REQUEST_SCHEMA}},
                },
                "responses": {
                    "202": _ok(_RECEIPT, "Accepted: the receipt"),
                    **_problems(400, 401, 403, 404, 409, 415, 422, 503),
                    "422": NO_AGREEMENT_OR_INVALID,
                },
            },
            "get": {
                "summary": "My cases, or (?queue=window) a clerk's window queue",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "queue",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["window"]},
                    },
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {
                    "200": _ok({"type": "object", "required": ["cases"]}),
                    **_problems(400, 401, 403),
                },
            },
        },
        "/api/v1/cases/{case_id}": {
            "get": {
                "summary": "A case: status, timeline, parts, materials by reference, result",
                "security": _SECURED,
                "parameters": [_CASE_ID],
                "responses": {"200": _ok(_CASE), **_problems(401, 404)},
            }
        },
        "/api/v1/cases/{case_id}/supplements": {
            "post": {
                "summary": "补齐补正: supply the material the handling province asked for",
                "description": (
                    "For the applicant, whoever acts for them or their window's clerk, while the "
                    "case (多地联办: the part) is supplement_requested. Same key + same body → "
                    "the same supplement (Idempotent-Replayed: true); another body → 409 "
                    "client.idempotency_key_reused; no supplement asked for → 409 "
                    "client.case_not_awaiting_supplement."
                ),
                "security": _SECURED,
                "parameters": [
                    _CASE_ID,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": True,
                        "description": "Scoped to the case: a retry sends no second supplement",
                        "schema": {"type": "string", "minLength": 8, "maxLength": 128},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": SUPPLEMENT_SCHEMA}},
                },
                "responses": {
                    "202": _ok(_SUPPLEMENT_RECEIPT, "Accepted: the receipt, with the supplement"),
                    **_problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            }
        },
        "/api/v1/callbacks/{system}": {
            "post": {
                "summary": "A provincial system's status push (HMAC-signed, sequenced)",
                "parameters": [
                    {
                        "name": "system",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "X-Tongban-Signature",
                        "in": "header",
                        "required": True,
                        "description": "sha256=hex(HMAC-SHA256(key, timestamp + '.' + body))",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "X-Tongban-Timestamp",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sequence", "case_id", "status"],
                                "properties": {
                                    "sequence": {"type": "integer", "minimum": 1},
                                    "case_id": {"type": "string"},
                                    "part": {"type": "integer"},
                                    "status": {"type": "string"},
                                    "result": {"type": "object"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _ok({"type": "object", "required": ["status"]}),
                    **_problems(400, 401, 422, 503),
                },
            }
        },
        "/admin/cases/dead-letters": {
            "get": {
                "summary": "Operator: entries delivery gave up on, with the reason",
                "security": _SECURED,
                "responses": {"200": _ok({"type": "object"}), **_problems(401, 403)},
            }
        },
        "/admin/cases/{case_id}/replay": {
            "post": {
                "summary": "Operator: replay a dead-lettered case",
                "security": _SECURED,
                "parameters": [_CASE_ID],
                "responses": {"202": _ok(_CASE), **_problems(401, 403, 404, 409)},
            }
        },
    }
