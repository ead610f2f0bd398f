"""Thin handlers: parse and check the request, call the core, shape the answer."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from jsonschema import Draft202012Validator

from gateway.adapter import Call, CallContext
from gateway.audit.record import AuditEvent, EventType
from gateway.cases.errors import CaseStoreDown
from gateway.cases.model import TERMINAL
from gateway.cases.store import CaseStoreUnavailable
from gateway.catalog import Route
from gateway.consent.contract import DataSubject
from gateway.errors import (
    BackendError,
    GatewayError,
    NoCaseAuthority,
    NotDataSubject,
    ValidationFailed,
)
from gateway.fastschema import SchemaGate
from gateway.http.answer import JsonAnswer
from gateway.http.cases import CASES
from gateway.http.client_io import check_json_content, json_object
from gateway.http.keys import LOG_FIELDS, METRICS, REQUEST_ID, STATE, SUBJECTS, principal_of
from gateway.http.oidc import (
    check_client_may_call,
    check_receiving_province,
    client_allows,
    client_registration,
    identity_assertion,
    machine_admitted,
)
from gateway.http.openapi import CALL_REQUEST_SCHEMA, build_openapi
from gateway.identity.clients import ClientRegistration
from gateway.identity.subject_keys import SubjectKeys, unkeyed_idempotency_key
from gateway.pipeline import CallTrace
from gateway.principal import Principal
from gateway.settings import PROVINCES, ServiceSettings
from gateway.subjects import (
    Binding,
    Named,
    SubjectDeclaration,
    SubjectRule,
    case_declaration,
    grant_ids,
    named_subjects,
)
from gateway.unsent import never_sent

log = structlog.get_logger("tongban.calls")
_CALL_VALIDATOR = SchemaGate(Draft202012Validator(CALL_REQUEST_SCHEMA))


def _json(data: Any, status: int = 200) -> web.Response:
    return JsonAnswer(orjson.dumps(data), status)


def _summary(
    code: str, service: ServiceSettings, provinces: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "code": code,
        "name": service.name.model_dump(),
        "modes": list(service.modes),
        "min_level": service.min_level,
        "levels": sorted(service.levels_for(None)),
        "handling_provinces": sorted({p for ps in provinces.values() for p in ps}),
        "operations": sorted(service.operations),
    }


async def list_services(request: web.Request) -> web.Response:
    """The catalogue as the calling client sees it: the services its registration allows."""
    catalog = request.app[STATE].catalog
    principal = principal_of(request)
    items = [
        _summary(code, service, catalog.provinces(code))
        for code, service in sorted(catalog.services.items())
        if client_allows(request.app, principal, code)
    ]
    return _json({"services": items})


async def get_service(request: web.Request) -> web.Response:
    catalog = request.app[STATE].catalog
    code = request.match_info["service"]
    service = catalog.service(code)
    guide = _summary(code, service, catalog.provinces(code))
    guide.update(
        description=service.description.model_dump() if service.description else None,
        consent_required=service.consent_required,
        time_limit_days=service.time_limit_days,
        materials=[m.model_dump() for m in service.materials],
        operations={
            name: {
                "name": op.name.model_dump(),
                "kind": op.kind,
                "levels": sorted(service.levels_for(name)),
                "subject": _subject_guide(service.subject_of(name)),
                "retry": op.retry,
                "input_schema": op.input_schema,
                "result_fields": {k: f.model_dump() for k, f in op.result_fields.items()},
            }
            for name, op in sorted(service.operations.items())
        },
        linked=_linked_guide(service),
        agreements=[
            {
                **a,
                "receiving_name": PROVINCES.get(a["receiving"], ("*", "any"))[0],
                "handling_name": PROVINCES[a["handling"]][0],
            }
            for a in catalog.agreements(code)
        ],
    )
    return _json(guide)


def _linked_guide(service: ServiceSettings) -> dict[str, Any] | None:
    """A linked service's parts (联动办理) for the guide: what happens, in which order."""
    if service.linked is None:
        return None
    return {
        "parts": [
            {
                "name": name,
                "title": (
                    part.title.model_dump()
                    if part.title is not None
                    else service.operations[part.operation].name.model_dump()
                ),
                "operation": part.operation,
                "handling_province": part.handling,
                "after": list(part.after),
                "required": part.required,
                "undone_if_the_case_fails": (
                    (case := service.operations[part.operation].case) is not None
                    and case.compensate_with is not None
                ),
            }
            for name, part in service.linked.parts.items()
        ],
        "input_schema": service.linked.input_schema,
    }


def _subject_guide(declaration: SubjectDeclaration | None) -> Any:
    """An operation's data subject for the guide: caller, public, or the naming fields."""
    if declaration is None or isinstance(declaration, str):
        return declaration
    return [entry.model_dump(exclude_none=True) for entry in declaration]


_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


def _idempotency_key(request: web.Request) -> str | None:
    """The caller's key: visible ASCII, at most 128 long (scoped before it is forwarded)."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 128 visible ASCII characters.",
            errors=[{"path": "header:Idempotency-Key", "message": "1-128 visible ASCII"}],
        )
    return key


def scoped_key(keys: SubjectKeys | None, principal: Principal, key: str) -> str:
    """The key the back-end sees: the caller's, bound to its client and principal, so the same
    key from anyone else is another key and never replays this caller's answer."""
    if keys is not None:
        return keys.scoped_idempotency_key(principal.client_id, principal.owner, key)
    return unkeyed_idempotency_key(principal.client_id, principal.owner, key)


async def audit_refusal(
    app: web.Application,
    event: AuditEvent,
) -> None:
    """The refused request's record (buffered: an audit outage never turns a refusal into
    anything else)."""
    writer = app[STATE].audit
    if writer is None:
        return
    try:
        await writer.append(event, mode="buffered")
    except GatewayError:
        log.warning("refusal_not_audited", code=event.error_code)


async def case_authority(
    request: web.Request, registration: ClientRegistration, route: Route, body: dict[str, Any]
) -> frozenset[DataSubject]:
    """A provincial department's authority (依职权): the data subjects of the open case it
    names, handled in one of its provinces, of this very service; anything else is refused."""
    case_id = body.get("case_id")
    runtime = request.app.get(CASES)
    keys = request.app[SUBJECTS].keys
    if not isinstance(case_id, str) or runtime is None or keys is None:
        raise NoCaseAuthority(
            "A department's system acts within an open case it handles: name it in case_id."
        )
    try:
        case = await runtime.store.get(case_id, timeline=False)
    except CaseStoreUnavailable as exc:
        raise CaseStoreDown("The case store cannot say whether the case is open.") from exc
    handled = case is not None and any(
        p.handling_province in registration.provinces for p in case.parts
    )
    if (
        case is None
        or not handled
        or case.status in TERMINAL
        or case.service != route.service_code
        or case.data is None
    ):
        raise NoCaseAuthority(
            f"Case {case_id!r} is not an open {route.service_code!r} case handled in"
            f" {list(registration.provinces)}."
        )
    declaration = case_declaration(route.service, [p.operation for p in case.parts])
    if not isinstance(declaration, tuple):
        return frozenset()
    return frozenset(n.subject for n in named_subjects(keys, declaration, case.data))


async def bind_call(
    request: web.Request,
    principal: Principal,
    route: Route,
    body: dict[str, Any],
    raw: bytes,
    registration: ClientRegistration | None = None,
) -> Binding:
    """The subject rule for one routed call; a refusal is recorded and raised."""
    rule = request.app[SUBJECTS]
    declaration = route.subject
    consent = grant_ids(body.get("consent"))
    named: list[Named] = []
    try:
        authority = None
        if registration is not None and registration.acts_as == "department":
            authority = await case_authority(request, registration, route, body)
        if declaration is None:
            raise NotDataSubject("This operation declares no data subject; nothing is sent.")
        named = rule.named(declaration, body["data"], raw)  # an ambiguous field: before the schema
        route.validate(body["data"])
        if authority is None:
            # The caller's own data (or public): bound without the book, nor a coroutine.
            own = rule.own(principal, declaration, named)
            if own is not None:
                return own
        return await rule.check(
            principal,
            declaration,
            named,
            consent=consent,
            service=route.service_code,
            operation=route.operation_name,
            purpose=body["purpose"],
            requester_province=body["receiving_province"],
            authority=authority,
        )
    except ValidationFailed:
        raise  # the data does not fit the schema: nothing about anyone to record
    except GatewayError as exc:
        extra: dict[str, Any] = {"subjects": [n.subject.key for n in named]}
        if consent:
            extra["grant"] = ",".join(consent)
        await audit_refusal(
            request.app,
            AuditEvent(
                type=EventType.SERVICE_CALL_COMPLETED,
                request_id=request[REQUEST_ID],
                case_id=body.get("case_id"),
                actor=principal.actor,
                principal=principal.subject,
                identity_level=principal.level,
                client=principal.client_id,
                service=route.service_code,
                receiving_province=body["receiving_province"],
                handling_province=route.handling,
                system=route.system,
                operation=route.operation_name,
                purpose=body["purpose"],
                outcome="refused",
                error_code=exc.code,
                attempts=0,
                extra=extra,
            ),
        )
        request[LOG_FIELDS].update(outcome="refused")
        raise


_BINDING: set[asyncio.Future[Binding]] = set()
"""The subject rules of calls whose handler was cancelled while the rule spent their uses."""


async def _bind_to_the_end(
    request: web.Request,
    principal: Principal,
    route: Route,
    body: dict[str, Any],
    raw: bytes,
    registration: ClientRegistration | None,
) -> Binding:
    """``bind_call``; for a call presenting a grant, run to its end in a task of its own, so
    that a handler cancelled while the book spends uses (its client gone with handler
    cancellation on, the server stopping) gives them back once they are spent: such a call is
    never sent."""
    if not grant_ids(body.get("consent")):
        return await bind_call(request, principal, route, body, raw, registration)
    rule = request.app[SUBJECTS]
    left = False

    async def bind() -> Binding:
        binding = await bind_call(request, principal, route, body, raw, registration)
        if left and binding.spent:
            await rule.give_back(binding.spent)
        return binding

    task = asyncio.ensure_future(bind())
    _BINDING.add(task)
    task.add_done_callback(_bound)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            left = True  # the task gives the uses back when it has them
        elif not task.cancelled() and task.exception() is None and task.result().spent:
            await asyncio.shield(rule.give_back(task.result().spent))
        raise


def _bound(task: asyncio.Future[Binding]) -> None:
    _BINDING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a refusal nobody waits for any more


async def call_service(request: web.Request) -> web.Response:
    """A synchronous query or verification in a named province."""
    principal = principal_of(request)
    code = request.match_info["service"]
    app = request.app
    catalog = app[STATE].catalog
    catalog.service(code)  # unknown service → 404 before we look at the body
    check_client_may_call(app, principal, code)  # allowed_services + scope → 403
    check_json_content(request)  # read_json_body, its await in this coroutine
    raw = request._read_bytes  # what read() returns once the body is read (the request
    if raw is None:  # middleware reads a body in one chunk), without its coroutine
        raw = await request.read()
    body = json_object(raw)
    if not _CALL_VALIDATOR.is_valid(body):
        _refuse_envelope(body)
    registration = client_registration(app, principal)
    receiving = body["receiving_province"]
    check_receiving_province(registration, principal, receiving)
    route = catalog.route(code, body.get("operation"), receiving, body["handling_province"])
    state = request._state  # request[...] without its frame
    fields = state[LOG_FIELDS]
    fields.update(service=code, province=route.handling, system=route.system)
    machine = machine_admitted(registration, principal)
    if not machine:
        principal.require_levels(route.levels, route.level_requirement)
    # A call without a grant spends nothing a cancelled handler would have to give back: the
    # subject rule runs in this task, without the task of its own a grant's needs.
    bind = _bind_to_the_end if grant_ids(body.get("consent")) else bind_call
    binding = await bind(request, principal, route, body, raw, registration if machine else None)
    rule = app[SUBJECTS]
    request_id = state[REQUEST_ID]
    try:
        context = _call_context(
            request, app, request_id, code, principal, route, body, binding, rule
        )
    except GatewayError:
        await asyncio.shield(rule.give_back(binding.spent))  # refused before anything was sent
        raise
    trace = CallTrace()
    metrics = app[METRICS]
    outcome = "ok"
    started = time.perf_counter()
    try:
        try:
            # Route.invoke, in this coroutine: one frame less for every wake-up of the call.
            call = Call(route.system_operation, route.request_map.apply(body["data"]), context)
            reply = await route.stack(call, trace)
            data = route.response_map.apply(reply.data)
        except GatewayError as exc:
            outcome = "error" if isinstance(exc, BackendError) else "refused"
            trace.error_code = exc.code
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.backend_call(code, route.system, outcome, elapsed)
            fields.update(attempts=trace.attempts, outcome=outcome, breaker=trace.breaker_state)
    except GatewayError as exc:
        if binding.spent and never_sent(exc, trace):
            # Nobody's data was touched: a counted grant is not spent by this request. (Shielded
            # here and below: a handler cancelled meanwhile does not stop the give-back.)
            await asyncio.shield(rule.give_back(binding.spent))
        raise
    except asyncio.CancelledError as exc:
        # Handler cancelled (its client gone with handler cancellation on, the server
        # stopping): the same rule, from the trace.
        if binding.spent and never_sent(exc, trace):
            await asyncio.shield(rule.give_back(binding.spent))
        raise
    return _json(
        {
            "request_id": request_id,
            "service": code,
            "operation": route.operation_name,
            "receiving_province": receiving,
            "handling_province": route.handling,
            "system": route.system,
            "attempts": trace.attempts,
            "data": data,
        }
    )


def _refuse_envelope(body: Any) -> None:
    """ValidationFailed naming (at most twenty of) the envelope's errors, in path order."""
    problems = sorted(_CALL_VALIDATOR.iter_errors(body), key=lambda e: list(e.absolute_path))
    raise ValidationFailed(
        "The call envelope is not valid.",
        errors=[
            {
                "path": "/" + "/".join(str(p) for p in e.absolute_path),
                "message": e.message[:200],
            }
            for e in problems[:20]
        ],
    )


def _call_context(
    request: web.Request,
    app: web.Application,
    request_id: str,
    code: str,
    principal: Principal,
    route: Route,
    body: dict[str, Any],
    binding: Binding,
    rule: SubjectRule,
) -> CallContext:
    """What the adapter is told about the call."""
    idempotency_key = None
    keys = rule.keys
    if route.operation.retry == "idempotent-with-key":
        given = _idempotency_key(request)
        idempotency_key = scoped_key(keys, principal, given) if given else uuid.uuid4().hex
    province_subjects, subject_hashes = binding.province_subjects(keys, route.handling)
    purpose = body["purpose"]
    receiving = body["receiving_province"]
    case_id = body.get("case_id")
    grant = binding.grant
    assertion = identity_assertion(
        app,
        principal,
        audience=route.system,
        purpose=purpose,
        service=code,
        case_id=case_id,
        grant=grant,
        source_province=receiving,
        data_subjects=province_subjects,
    )
    # Positional, in the fields' order (gateway/adapter.py): fifteen keywords cost a routed
    # call more than the rest of the context's making.
    return CallContext(
        request_id,
        purpose,
        code,
        receiving,
        route.handling,
        principal.subject,
        principal.acting,
        principal.level,
        case_id,
        grant,  # authorisation_ref
        idempotency_key,
        assertion,
        principal.client_id,
        tuple([s.key for s in binding.subjects]),
        subject_hashes,
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every store answers; each system's breaker state is reported, not judged."""
    systems = {
        sid: {"province": rt.settings.province, "breaker": rt.breaker.state.value}
        for sid, rt in sorted(request.app[STATE].systems.items())
    }
    stores: dict[str, Any] = {}
    ready = True
    for name, probe in request.app[STATE].readiness.items():
        try:
            state = await probe()
        except Exception as exc:  # a probe failing is exactly what readiness reports
            state = {"ready": False, "error": type(exc).__name__}
        stores[name] = state
        ready = ready and bool(state.get("ready"))
    return _json(
        {"status": "ready" if ready else "not_ready", "systems": systems, "stores": stores},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    for sid, rt in request.app[STATE].systems.items():
        request.app[METRICS].breaker_state.labels(sid).set(rt.breaker.state.gauge)
    return web.Response(
        body=request.app[METRICS].render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(build_openapi(request.app[STATE].catalog))
