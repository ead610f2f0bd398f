"""Reading the audit trail over HTTP, and recording what staff do through the admin API.

GET /admin/audit              auditor: records filtered by principal, actor, case, service,
                              province, time and type; keyset-paginated (``next_cursor``)
GET /api/v1/me/access-log     a citizen: which provinces and systems touched their data, when
                              and for what purpose (信息来源可溯、去向可查), their own records only

``admin_audit_middleware`` writes an ``admin_action`` record for every /admin request: a
changing request (POST, PUT, PATCH, DELETE) is recorded in ``required`` mode *before* its
handler runs (no audit, no admin action), and every request's outcome is recorded, buffered,
after it. Records name the staff member by pairwise subject and the route, never a body.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
import structlog
from aiohttp import web
from multidict import MultiMapping

from gateway.audit.query import (
    MAX_LIMIT,
    AuditQuery,
    InvalidCursor,
    QueryPosition,
    decode_cursor,
    encode_cursor,
    lookup_row,
    matches,
    record_subjects,
)
from gateway.audit.record import AuditEvent, EventType, format_time
from gateway.audit.store import AuditStore, AuditStoreError, StoredRecord
from gateway.audit.writer import AuditWriter
from gateway.consent.subjects import me
from gateway.errors import (
    AuditUnavailable,
    Forbidden,
    GatewayError,
    Unauthenticated,
    ValidationFailed,
)
from gateway.http.consents import SUBJECT_DIGEST
from gateway.http.keys import (
    LOG_FIELDS,
    PRINCIPAL,
    REQUEST_ID,
    SETTINGS,
    STATE,
    VERIFIER,
    principal_of,
)
from gateway.principal import Principal
from gateway.settings import PROVINCES

log = structlog.get_logger("tongban.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUDITOR_ROLE: Final = "auditor"
ACCESS_LOG_TYPES: Final = (
    EventType.SERVICE_CALL_COMPLETED.value,
    EventType.CASE_TRANSITION.value,
    EventType.LICENCE_VERIFIED.value,  # 亮证: who checked my licence, when, for which service
)
_EVENT_TYPES: Final = frozenset(t.value for t in EventType)
_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PROVINCE = re.compile(r"^[0-9]{2}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_ADMIN_FILTERS: Final = ("principal", "actor", "case_id", "service", "province")
_ADMIN_PARAMS: Final = frozenset(
    {*_ADMIN_FILTERS, "since", "until", "type", "limit", "cursor", "order"}
)
_ACCESS_LOG_PARAMS: Final = frozenset({"since", "until", "limit", "cursor"})


def add_audit_routes(app: web.Application) -> None:
    app[_GAPS] = _GapCheck()
    app.router.add_get("/admin/audit", admin_audit)
    app.router.add_get("/api/v1/me/access-log", access_log)


def _json(data: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


# --- parameters ------------------------------------------------------------------------------


class _Params:
    """Query parameters checked one by one; every problem is collected, then reported at once."""

    def __init__(self, query: MultiMapping[str], allowed: frozenset[str]) -> None:
        self.query = query
        self.errors: list[dict[str, str]] = []
        for name in sorted(set(query) - allowed):
            self.error(name, "unknown parameter")
        for name in sorted(allowed):
            if len(query.getall(name, [])) > 1 and name != "type":
                self.error(name, "given more than once")

    def error(self, name: str, message: str) -> None:
        self.errors.append({"path": f"/{name}", "message": message})

    def text(self, name: str, pattern: re.Pattern[str] = _TOKEN) -> str | None:
        value = self.query.get(name)
        if value is None:
            return None
        if not pattern.match(value):
            self.error(name, "not a valid value")
            return None
        return value

    def time(self, name: str) -> str | None:
        value = self.query.get(name)
        if value is None:
            return None
        # RFC 3339 §5.6 allows a lower-case t and z, and a leap second (taken as :59).
        text = value.upper()
        if text[17:19] == "60":
            text = text[:17] + "59" + text[19:]
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.error(name, "not an RFC 3339 time")
            return None
        if moment.tzinfo is None:
            self.error(name, "needs a time zone (Z or +08:00)")
            return None
        return format_time(moment)

    def limit(self, default: int = 50) -> int:
        value = self.query.get("limit")
        if value is None:
            return default
        if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
            self.error("limit", f"an integer from 1 to {MAX_LIMIT}")
            return default
        return int(value)

    def check(self) -> None:
        if self.errors:
            raise ValidationFailed("The query parameters are not valid.", errors=self.errors)


def _query(params: _Params, oldest_first: bool, **fixed: Any) -> AuditQuery:
    """Time range, cursor and limit, common to both endpoints."""
    since, until = params.time("since"), params.time("until")
    if since and until and since >= until:
        params.error("until", "must be after since")
    after = None
    cursor = params.query.get("cursor")
    if cursor is not None:
        try:
            after = decode_cursor(cursor, oldest_first=oldest_first)
        except InvalidCursor:
            params.error("cursor", "not a cursor of this listing")
    limit = params.limit()
    params.check()
    return AuditQuery(
        since=since, until=until, after=after, limit=limit, oldest_first=oldest_first, **fixed
    )


def _store(request: web.Request) -> AuditStore:
    store = request.app[STATE].audit_store
    if store is None:
        raise AuditUnavailable("The audit trail is not open.")
    return store


GAP_CHECK_INTERVAL: Final = 60.0
"""Seconds between two counts of the store's lookup rows (cheap: one per chain on a key)."""


class _GapCheck:
    """Whether lookup rows are missing, asked of the store at most every GAP_CHECK_INTERVAL."""

    def __init__(self) -> None:
        self.checked_at = float("-inf")
        self.gaps: dict[str, int] = {}

    async def gaps_of(self, store: AuditStore) -> dict[str, int]:
        count = getattr(store, "lookup_gaps", None)
        now = time.monotonic()
        if count is None or now - self.checked_at < GAP_CHECK_INTERVAL:
            return self.gaps
        self.checked_at = now
        self.gaps = await count()
        if self.gaps:
            log.error("audit_lookup_rows_missing", chains=sorted(self.gaps))
        return self.gaps


_GAPS = web.AppKey("audit_lookup_gaps", _GapCheck)


@dataclass(frozen=True, slots=True)
class _Page:
    records: list[dict[str, Any]]
    cursor: str | None
    integrity: dict[str, str] | None
    """Set when the answer cannot be trusted to be complete (the derived data is damaged)."""

    def answer(self, items: str, values: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {items: values, "next_cursor": self.cursor}
        if self.integrity is not None:
            body["integrity"] = self.integrity
        return body


async def _run(request: web.Request, query: AuditQuery) -> _Page:
    """One page of records. Each is checked against what found it: its stored time is the
    record's own and it matches the filter by its own text; and the store is asked now and then
    whether lookup rows are missing. Either failing marks the answer (``integrity``) and logs an
    error: the records shown are true (the chain proves them), but some may be missing."""
    store = _store(request)
    try:
        page = await store.query(query)
        gaps = await request.app[_GAPS].gaps_of(store)
    except AuditStoreError as exc:
        raise AuditUnavailable("The audit trail cannot be read now; try again.") from exc
    records: list[dict[str, Any]] = []
    mismatched = 0
    for stored in page.records:
        try:
            body = orjson.loads(stored.text)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            # Shown, not hidden: a record that is not JSON is a finding for the verifier.
            body = {"chain": stored.chain, "sequence": stored.sequence, "unreadable": True}
        else:
            own = lookup_row(
                StoredRecord(
                    stored.chain, stored.sequence, str(body.get("time")), stored.text, stored.hash
                )
            )
            if (
                body.get("time") != stored.time
                or not matches(query, own)
                or (query.subject is not None and query.subject not in record_subjects(stored.text))
            ):
                mismatched += 1  # found by derived data the record itself contradicts
        body["hash"] = stored.hash
        records.append(body)
    cursor = None
    if page.next is not None:
        cursor = encode_cursor(page.next, oldest_first=query.oldest_first)
    integrity = None
    if mismatched or gaps:
        if mismatched:
            log.error("audit_derived_data_mismatch", records=mismatched)
        integrity = {
            "derived_data": "damaged",
            "detail": "The store's lookup rows or stored times do not match its records: this "
            "answer may be incomplete. Run `tongban audit verify`.",
        }
    return _Page(records, cursor, integrity)


# --- staff -----------------------------------------------------------------------------------


async def _bearer_principal(request: web.Request) -> Principal:
    """Admin routes sit outside /api, so they check the bearer token themselves."""
    found = request.get(PRINCIPAL)
    if isinstance(found, Principal):
        return found
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("A bearer token is required.")
    principal = await request.app[VERIFIER].verify(token.strip())
    request[PRINCIPAL] = principal
    request[LOG_FIELDS]["client"] = principal.client_id
    return principal


async def require_role(request: web.Request, role: str) -> Principal:
    principal = await _bearer_principal(request)
    if role not in principal.roles:
        raise Forbidden(f"This needs the {role} role.")
    return principal


async def admin_audit(request: web.Request) -> web.Response:
    """GET /admin/audit: the trail as an auditor searches it."""
    await require_role(request, AUDITOR_ROLE)
    params = _Params(request.query, _ADMIN_PARAMS)
    filters = {name: params.text(name) for name in ("principal", "actor", "case_id", "service")}
    province = params.text("province", _PROVINCE)
    if province is not None and province not in PROVINCES:
        params.error("province", "not a GB/T 2260 province code")
    types: list[str] = []
    for raw in request.query.getall("type", []):
        for kind in filter(None, raw.split(",")):
            if kind not in _EVENT_TYPES:
                params.error("type", f"unknown event type {kind[:40]!r}")
            types.append(kind)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        params.error("order", "asc or desc")
    query = _query(
        params, order == "asc", province=province, types=tuple(dict.fromkeys(types)), **filters
    )
    page = await _run(request, query)
    return _json(page.answer("records", page.records))


# --- the citizen's access log ------------------------------------------------------------------


def _province(code: str | None) -> dict[str, str] | None:
    if not code or code not in PROVINCES:
        return None
    zh, en = PROVINCES[code]
    return {"code": code, "name": zh, "name_en": en}


_KINDS: Final = {
    EventType.SERVICE_CALL_COMPLETED.value: "service_call",
    EventType.CASE_TRANSITION.value: "case_step",
    EventType.CONSENT_USED.value: "grant_used",
    EventType.CONSENT_REFUSED.value: "grant_refused",
    EventType.CONSENT_RETURNED.value: "grant_returned",  # a use given back: the call was not sent
    EventType.LICENCE_VERIFIED.value: "licence_check",  # 亮证 and 免证办: my licence was checked
}
SUBJECT_LOG_TYPES: Final = tuple(_KINDS)
"""What the subject's access log shows of records naming it in ``extra.subjects``: calls and
case steps about it (whoever made them: the subject, an institution under its consent, an
agent, a clerk) and every use, refused use or use given back of a grant of its."""


def _entry(app: web.Application, record: Mapping[str, Any], mine: str | None) -> dict[str, Any]:
    settings = app[SETTINGS]
    service = settings.services.get(str(record.get("service")))
    system = settings.systems.get(str(record.get("system")))
    handling = [
        p
        for p in (_province(code) for code in str(record.get("handling_province") or "").split(","))
        if p is not None
    ]
    actor = record.get("actor")
    extra = _extra(record)
    grant = extra.get("grant")
    return {
        "time": record.get("time"),
        "kind": _KINDS.get(str(record.get("type")), "case_step"),
        "service": record.get("service"),
        "service_name": service.name.model_dump() if service else None,
        "operation": record.get("operation"),
        "receiving_province": _province(record.get("receiving_province")),
        "handling_provinces": handling,
        "system": record.get("system"),
        "system_name": system.name.model_dump() if system else None,
        "purpose": record.get("purpose"),
        "outcome": record.get("outcome"),
        "error_code": record.get("error_code"),
        "case_id": record.get("case_id"),
        "client": record.get("client"),
        "acted_by": actor if actor and actor != record.get("principal") else None,
        "request_id": record.get("request_id"),
        "grant_id": grant if isinstance(grant, str) else None,
        "subject": mine,
    }


def _extra(record: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = record.get("extra")
    return extra if isinstance(extra, dict) else {}


def _merge(
    pages: list[tuple[list[dict[str, Any]], str | None]], limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first across several pages of one window, each record once; True when more
    follow (a page was cut, or the merge was)."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    more = False
    for records, cursor in pages:
        more = more or cursor is not None
        for record in records:
            seen.setdefault((str(record.get("chain")), int(record.get("sequence") or 0)), record)
    ordered = sorted(
        seen.values(),
        key=lambda r: (str(r.get("time")), str(r.get("chain")), int(r.get("sequence") or 0)),
        reverse=True,
    )
    return ordered[:limit], more or len(ordered) > limit


async def access_log(request: web.Request) -> web.Response:
    """GET /api/v1/me/access-log: who touched the caller's data, newest first.

    A person sees the records of their own requests (by pairwise subject) and every record
    naming them as a data subject (by key, whoever made it); an enterprise's operators see the
    enterprise's. Someone acting for another person (a clerk, an agent) sees neither."""
    principal = principal_of(request)
    holder = me(principal)
    if principal.actor is not None and holder is None:
        raise Forbidden("Only the holder reads their own access log, not someone acting for them.")
    params = _Params(request.query, _ACCESS_LOG_PARAMS)
    own = _query(params, False, principal=principal.subject, types=ACCESS_LOG_TYPES)
    pages = [await _run(request, own)]
    key = None
    if holder is not None:
        key = holder.subject.key
        about = dataclasses.replace(own, principal=None, subject=key, types=SUBJECT_LOG_TYPES)
        pages.append(await _run(request, about))
    records, more = _merge([(page.records, page.cursor) for page in pages], own.limit)
    digest = request.app.get(SUBJECT_DIGEST)
    shown = digest.display(holder.subject) if digest is not None and holder is not None else None
    entries = []
    for record in records:
        extra = _extra(record)
        about_me = key is not None and key in (extra.get("subjects") or [])
        if about_me or record.get("principal") == principal.subject:
            entries.append(_entry(request.app, record, shown if about_me else None))
    cursor = None
    if more and records:
        last = records[-1]
        position = QueryPosition(str(last["time"]), str(last["chain"]), int(last["sequence"]))
        cursor = encode_cursor(position, oldest_first=False)
    answer: dict[str, Any] = {"entries": entries, "next_cursor": cursor}
    damaged = next((page.integrity for page in pages if page.integrity is not None), None)
    if damaged is not None:
        answer["integrity"] = damaged
    return _json(answer)


# --- recording staff actions -------------------------------------------------------------------


def _admin_event(
    request: web.Request, principal: Principal | None, outcome: str, **fields: Any
) -> AuditEvent:
    route = request.match_info.route.resource
    query = {k: v[:64] for k, v in request.query.items() if k in _ADMIN_PARAMS and k != "cursor"}
    extra: dict[str, Any] = {
        "method": request.method,
        "route": route.canonical if route is not None else "unmatched",
    }
    if query:
        extra["query"] = query
    extra.update(fields.pop("extra", {}))
    return AuditEvent(
        type=EventType.ADMIN_ACTION,
        request_id=request.get(REQUEST_ID),
        case_id=request.match_info.get("case_id"),
        actor=principal.acting if principal else None,
        principal=principal.subject if principal and principal.actor else None,
        identity_level=principal.level if principal else None,
        client=principal.client_id if principal else None,
        operation=f"{request.method} {extra['route']}"[:128],
        outcome=outcome,
        extra=extra,
        **fields,
    )


async def _quiet_principal(request: web.Request) -> Principal | None:
    try:
        return await _bearer_principal(request)
    except GatewayError:
        return None  # the handler refuses it and renders the problem


@web.middleware
async def admin_audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An ``admin_action`` record for every /admin request (see the module docstring)."""
    if not request.path.startswith("/admin/"):
        return await handler(request)
    writer: AuditWriter | None = request.app[STATE].audit
    if writer is None:
        return await handler(request)
    principal = await _quiet_principal(request)
    if request.method in _CHANGING and principal is not None:
        # Required: the change does not happen unless the trail holds the request first.
        await writer.append(_admin_event(request, principal, "requested"))
    try:
        response = await handler(request)
    except GatewayError as exc:
        event = _admin_event(
            request,
            principal,
            "denied" if exc.status in (401, 403) else "error",
            error_code=exc.code,
            extra={"status": exc.status},
        )
        _append_quietly(writer, event)
        raise
    event = _admin_event(request, principal, "ok", extra={"status": response.status})
    _append_quietly(writer, event)
    return response


def _append_quietly(writer: AuditWriter, event: AuditEvent) -> None:
    try:
        writer.append_nowait(event)
    except AuditUnavailable:
        log.warning("admin_action_unaudited", route=event.operation)


# --- OpenAPI fragment (merged into /openapi.json by gateway.http.openapi) ----------------------

_NULLABLE_TEXT = {"type": ["string", "null"]}
_PROVINCE_REF = {
    "type": "object",
    "required": ["code", "name", "name_en"],
    "properties": {
        "code": {"type": "string", "pattern": "^[0-9]{2}$"},
        "name": {"type": "string", "description": "Chinese name, e.g. 陕西"},
        "name_en": {"type": "string"},
    },
}
_LOCALIZED_OR_NULL = {
    "anyOf": [
        {
            "type": "object",
            "required": ["zh", "en"],
            "properties": {"zh": {"type": "string"}, "en": {"type": "string"}},
        },
        {"type": "null"},
    ]
}


_ENTRY_REQUIRED = (
    "time", "kind", "service", "receiving_province", "handling_provinces", "system",
    "purpose", "outcome", "acted_by",
)  # fmt: skip


def audit_openapi_schemas() -> dict[str, Any]:
    names = (
        "request_id", "case_id", "actor", "principal", "identity_level", "client", "service",
        "receiving_province", "handling_province", "system", "operation", "purpose",
        "outcome", "error_code", "request_digest", "response_digest",
    )  # fmt: skip
    record_fields = dict.fromkeys(names, _NULLABLE_TEXT)
    return {
        "AuditRecord": {
            "type": "object",
            "description": "A stored record exactly as chained (docs/audit.md), plus its hash.",
            "required": ["chain", "sequence", "hash"],
            "properties": {
                "v": {"type": "integer"},
                "chain": {"type": "string"},
                "sequence": {"type": "integer", "minimum": 1},
                "time": {"type": "string", "format": "date-time"},
                "type": {"type": "string", "enum": sorted(_EVENT_TYPES)},
                "alg": {"type": "string"},
                "prev_hash": {"type": "string"},
                "hash": {"type": "string"},
                "attempts": {"type": ["integer", "null"]},
                "latency_ms": {"type": ["integer", "null"]},
                "extra": {"type": "object"},
                "unreadable": {"type": "boolean", "description": "the stored text is not JSON"},
                **record_fields,
            },
        },
        "AuditPage": {
            "type": "object",
            "required": ["records", "next_cursor"],
            "properties": {
                "records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for the next page; null on the last page.",
                },
                "integrity": {"$ref": "#/components/schemas/AuditIntegrity"},
            },
        },
        "AuditIntegrity": {
            "type": "object",
            "description": "Present only when the store's derived data (lookup rows, stored "
            "times) does not match its records: the answer may be incomplete.",
            "required": ["derived_data", "detail"],
            "properties": {
                "derived_data": {"type": "string", "enum": ["damaged"]},
                "detail": {"type": "string"},
            },
        },
        "AccessLogEntry": {
            "type": "object",
            "required": [*_ENTRY_REQUIRED],
            "properties": {
                "time": {"type": "string", "format": "date-time"},
                "kind": {
                    "type": "string",
                    "enum": [
                        "service_call",
                        "case_step",
                        "grant_used",
                        "grant_refused",
                        "grant_returned",
                        "licence_check",
                    ],
                },
                "service": _NULLABLE_TEXT,
                "service_name": _LOCALIZED_OR_NULL,
                "operation": _NULLABLE_TEXT,
                "receiving_province": {"anyOf": [_PROVINCE_REF, {"type": "null"}]},
                "handling_provinces": {"type": "array", "items": _PROVINCE_REF},
                "system": _NULLABLE_TEXT,
                "system_name": _LOCALIZED_OR_NULL,
                "purpose": _NULLABLE_TEXT,
                "outcome": _NULLABLE_TEXT,
                "error_code": _NULLABLE_TEXT,
                "case_id": _NULLABLE_TEXT,
                "client": _NULLABLE_TEXT,
                "acted_by": {
                    **_NULLABLE_TEXT,
                    "description": "Who acted for the holder (a window clerk or an agent).",
                },
                "request_id": _NULLABLE_TEXT,
                "grant_id": {
                    **_NULLABLE_TEXT,
                    "description": "The consent grant or delegation the request presented.",
                },
                "subject": {
                    **_NULLABLE_TEXT,
                    "description": "When the record names the holder as a data subject: the "
                    "holder as a keyed digest (never an ID number or credit code).",
                },
            },
        },
        "AccessLog": {
            "type": "object",
            "required": ["entries", "next_cursor"],
            "properties": {
                "entries": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/AccessLogEntry"},
                },
                "next_cursor": {"type": ["string", "null"]},
                "integrity": {"$ref": "#/components/schemas/AuditIntegrity"},
            },
        },
    }


def _param(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "maxLength": 128},
    }


def _problem_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Problem details (RFC 9457)",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for s in statuses
    }


def audit_openapi_paths() -> dict[str, Any]:
    window = [
        _param(
            "since",
            "First time included (RFC 3339 with zone).",
            {"type": "string", "format": "date-time", "minLength": 1},
        ),
        _param(
            "until",
            "First time excluded (RFC 3339 with zone).",
            {"type": "string", "format": "date-time", "minLength": 1},
        ),
        _param("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        _param(
            "cursor",
            "`next_cursor` of the previous page.",
            {"type": "string", "minLength": 1, "maxLength": 512, "pattern": "^[A-Za-z0-9_-]+$"},
        ),
    ]
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/admin/audit": {
            "get": {
                "summary": "Search the audit trail (auditor role); newest first by default",
                "security": secured,
                "parameters": [
                    _param("principal", "Pairwise subject of the person concerned."),
                    _param("actor", "Who acted (clerk, agent, operator)."),
                    _param("case_id", "Case (办件) id."),
                    _param("service", "Service code."),
                    _param(
                        "province",
                        "Receiving or handling province (GB/T 2260).",
                        {"type": "string", "pattern": "^[0-9]{2}$"},
                    ),
                    _param(
                        "type",
                        "Event types, comma-separated or repeated.",
                        {"type": "string"},
                    ),
                    _param("order", "desc (default) or asc.", {"enum": ["asc", "desc"]}),
                    *window,
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AuditPage"}
                            }
                        },
                    },
                    **_problem_responses(401, 403, 422, 503),
                },
            }
        },
        "/api/v1/me/access-log": {
            "get": {
                "summary": "Who touched my data: provinces, systems, purposes (newest first)",
                "security": secured,
                "parameters": window,
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AccessLog"}
                            }
                        },
                    },
                    **_problem_responses(401, 403, 422, 503),
                },
            }
        },
    }
