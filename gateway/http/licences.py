"""Electronic licences in the app: the verifier and the 免证办 hook of case intake, opened with
the app over the open systems (after the systems context, before the cases context)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import segno
from aiohttp import web
from jsonschema import Draft202012Validator

from gateway.adapter import CallContext
from gateway.audit.calls import CallAuditor
from gateway.audit.record import AuditEvent, EventType
from gateway.cases.store import CaseStore
from gateway.errors import (
    GatewayError,
    MalformedJson,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from gateway.http.client_io import json_object
from gateway.http.keys import LOG_FIELDS, REQUEST_ID, SETTINGS, STATE, principal_of
from gateway.http.login import LOGIN_AUTHENTICATOR
from gateway.http.oidc import check_client_may_call
from gateway.identity.sessions import MemorySessionStore
from gateway.identity.subject_keys import SubjectKeys
from gateway.licences.access import HolderCheck
from gateway.licences.bulk import BulkLimits
from gateway.licences.config import LICENCE_STATUSES
from gateway.licences.errors import LicenceIssuerUnknown, LicenceNotSubjects
from gateway.licences.issuers import StackIssuerCall
from gateway.licences.materials import LicenceMaterials
from gateway.licences.notices import LicenceNotices
from gateway.licences.polling import IssuerPoller
from gateway.licences.presentation import PresentationCodes
from gateway.licences.verify import LicenceVerifier, Verification
from gateway.pipeline import Sleep
from gateway.principal import Principal


@dataclass(slots=True)
class LicenceRuntime:
    """Filled in when the app starts; empty when no licence type is configured."""

    verifier: LicenceVerifier | None = None
    materials: LicenceMaterials | None = None
    notices: LicenceNotices | None = None
    presentations: PresentationCodes | None = None
    holders: HolderCheck | None = None
    cases: CaseStore | None = None
    """The case store, set by the cases context: notices reach the cases relying on a licence."""


LICENCES = web.AppKey("licences", LicenceRuntime)


def add_licences(app: web.Application, sleep: Sleep) -> None:
    app[LICENCES] = LicenceRuntime()
    # Under /api/v1/callbacks/: authenticated by the issuer's HMAC, not a bearer token.
    app.router.add_post("/api/v1/callbacks/licences/{province}", receive_notice)
    app.router.add_post("/api/v1/licences/presentations", present_licence)
    app.router.add_post("/api/v1/licences/presentations/check", check_presentation)

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings, state, runtime = app[SETTINGS], app[STATE], app[LICENCES]
        catalogue = settings.licences
        identity = settings.gateway.identity
        if catalogue.licence_types and identity is not None and identity.link_secret is not None:
            writer = state.audit
            names = SubjectKeys(
                pairwise_secret=identity.pairwise_secret,
                link_secret=identity.link_secret,
                link_algorithm=identity.link_algorithm,
            )
            calls = StackIssuerCall(
                catalogue,
                state.systems,
                auditor=CallAuditor(writer) if writer is not None else None,
                sleep=sleep,
            )
            runtime.verifier = LicenceVerifier(catalogue, calls, names)
            bulk = BulkLimits(catalogue.bulk_limit, catalogue.bulk_approved)
            runtime.verifier.bulk = bulk

            async def record(event: AuditEvent) -> None:
                if writer is not None:
                    await writer.append(event)

            holders = HolderCheck(lambda: state.consent)
            runtime.holders = holders
            login = app.get(LOGIN_AUTHENTICATOR)
            once = login.store.claim_once if login is not None else MemorySessionStore().claim_once
            runtime.presentations = PresentationCodes(
                identity.pairwise_secret.get_secret_value().encode(), runtime.verifier, once
            )
            runtime.materials = LicenceMaterials(
                runtime.verifier, lambda: state.catalog, record=record, holders=holders
            )
            runtime.notices = LicenceNotices(catalogue, runtime.verifier)
            poller = IssuerPoller(catalogue, calls, runtime.notices, lambda: runtime.cases)
            polling = (
                asyncio.create_task(poller.run(), name="licence-poller")
                if poller.interval is not None
                else None
            )
            try:
                yield
            finally:
                if polling is not None:
                    polling.cancel()
                    await asyncio.gather(polling, return_exceptions=True)
                await bulk.aclose()
            return
        yield

    app.cleanup_ctx.append(context)


async def receive_notice(request: web.Request) -> web.Response:
    """An issuer's signed status change: cached answers dropped, cases in flight told."""
    notices = request.app[LICENCES].notices
    if notices is None:
        raise NotFound("No licence issuer is configured.")
    province = request.match_info["province"][:8]
    fields = request[LOG_FIELDS]
    fields["system"] = f"licences-{province}"
    raw = await request.read()
    try:
        notices.verify_signature(
            province,
            raw,
            request.headers.get("X-Tongban-Timestamp", ""),
            request.headers.get("X-Tongban-Signature", ""),
        )
        body = json_object(raw)
        notice = notices.read(province, body)
    except GatewayError as exc:
        await _audit(request, province, "denied", exc.code)
        raise
    outcome = await notices.apply(notice, request.app[LICENCES].cases)
    await _audit(request, province, outcome.status, None, cases=len(outcome.cases))
    fields.update(outcome=outcome.status)
    return web.json_response(
        {
            "status": outcome.status,
            "cases": list(outcome.cases),
            "cached_dropped": outcome.forgotten,
        }
    )


async def _audit(
    request: web.Request, province: str, outcome: str, error: str | None, **extra: int
) -> None:
    writer = request.app[STATE].audit
    if writer is None:
        return
    await writer.append(
        AuditEvent(
            type=EventType.CALLBACK_RECEIVED,
            request_id=request[REQUEST_ID],
            system=f"licences-{province}",
            outcome=outcome,
            error_code=error,
            extra=dict(extra),
        ),
        mode="buffered",
    )


_PROBLEM = {
    "description": "Problem details (RFC 9457) with a stable code",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def licence_openapi_paths() -> dict[str, Any]:
    """The licence endpoints' OpenAPI fragment (merged into /openapi.json)."""
    header = {"in": "header", "required": True, "schema": {"type": "string"}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/api/v1/licences/presentations": {
            "post": {
                "summary": "亮证: the signed-in holder gets a short-lived, single-use code and QR",
                "security": secured,
                "requestBody": _json_body(PRESENT_SCHEMA),
                "responses": {
                    "201": _answer(
                        "The code, its expiry and its QR code (SVG data URI)",
                        {
                            "type": "object",
                            "required": ["code", "expires_at", "expires_in", "qr_svg", "licence"],
                        },
                    ),
                    **{str(s): _PROBLEM for s in (400, 401, 403, 404, 415, 422, 502, 503)},
                },
            }
        },
        "/api/v1/licences/presentations/check": {
            "post": {
                "summary": "A verifier checks a presented code: once, live, masked fields",
                "security": secured,
                "requestBody": _json_body(CHECK_SCHEMA),
                "responses": {
                    "200": _answer(
                        "The licence and its fields, masked where the service does not need them",
                        {"type": "object", "required": ["licence", "fields", "labels"]},
                    ),
                    **{str(s): _PROBLEM for s in (400, 401, 403, 404, 409, 415, 422, 502, 503)},
                },
            }
        },
        "/api/v1/callbacks/licences/{province}": {
            "post": {
                "summary": "An issuer's signed licence status change (revoked, cancelled, ...)",
                "parameters": [
                    {
                        "name": "province",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        **header,
                        "name": "X-Tongban-Signature",
                        "description": "sha256=hex(HMAC-SHA256(notice_secret,"
                        " timestamp + '.' + body))",
                    },
                    {**header, "name": "X-Tongban-Timestamp"},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["sequence", "licenceType", "number", "status"],
                                "properties": {
                                    "sequence": {"type": "integer", "minimum": 1},
                                    "licenceType": {"type": "string"},
                                    "number": {"type": "string"},
                                    "status": {"type": "string", "enum": list(LICENCE_STATUSES)},
                                    "changedAt": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Applied, or a duplicate that changed nothing",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "cases", "cached_dropped"],
                                    "properties": {
                                        "status": {
                                            "type": "string",
                                            "enum": ["applied", "duplicate"],
                                        },
                                        "cases": {"type": "array", "items": {"type": "string"}},
                                        "cached_dropped": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                    **{str(s): _PROBLEM for s in (400, 401, 404, 422, 503)},
                },
            }
        },
    }


PRESENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "holder_id"],
    "properties": {
        "type": {"type": "string", "minLength": 1, "maxLength": 64},
        "number": {"type": "string", "minLength": 1, "maxLength": 64},
        "issuing_province": {"type": "string", "pattern": "^[0-9]{2}$"},
        "holder_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "holder_id_type": {"type": "string", "pattern": "^[0-9]{3}$", "default": "111"},
    },
}
CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["code", "service"],
    "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": 1024},
        "service": {"type": "string", "minLength": 1, "maxLength": 64},
    },
}
_PRESENT = Draft202012Validator(PRESENT_SCHEMA)
_CHECK = Draft202012Validator(CHECK_SCHEMA)


async def _body(request: web.Request, validator: Draft202012Validator) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise MalformedJson("The body is not valid JSON.") from None
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        raise ValidationFailed(
            "The body does not match the schema.",
            errors=[
                {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.validator}
                for e in errors[:20]
            ],
        )
    assert isinstance(body, dict)
    return body


def _runtime(request: web.Request) -> tuple[LicenceRuntime, LicenceVerifier, PresentationCodes]:
    runtime = request.app[LICENCES]
    if runtime.verifier is None or runtime.presentations is None:
        raise NotFound("No licence type is configured.")
    return runtime, runtime.verifier, runtime.presentations


def _context(
    request: web.Request, principal: Principal, province: str, service: str
) -> CallContext:
    return CallContext(
        request_id=request[REQUEST_ID],
        purpose="亮证",
        service=service,
        receiving_province=province,
        handling_province=province,
        principal=principal.subject,
        actor=principal.acting,
        level=principal.level,
        client=principal.client_id,
    )


async def present_licence(request: web.Request) -> web.Response:
    """亮证: the signed-in holder asks for a short-lived, single-use code for one licence."""
    principal = principal_of(request)
    runtime, verifier, codes = _runtime(request)
    body = await _body(request, _PRESENT)
    principal.require_level("L2")
    licence = verifier.licence_type(body["type"])
    province = body.get("issuing_province")
    if province is None and len(licence.issued_in) == 1:
        province = next(iter(licence.issued_in))
    if province is None and not licence.issued_in:
        raise LicenceIssuerUnknown(f"No connected issuer issues {licence.name.zh} yet.")
    if province is None:
        raise ValidationFailed(
            "Name the issuing province.",
            errors=[{"path": "/issuing_province", "message": "required"}],
        )
    holder = verifier.holder(licence.holder, body.get("holder_id_type", "111"), body["holder_id"])
    assert runtime.holders is not None
    if runtime.holders.is_holder(principal, holder.subject) is not True:
        raise LicenceNotSubjects("Only the licence's holder, signed in, shows it (亮证).")
    context = _context(request, principal, province, f"licence:{body['type']}")
    try:
        found = await verifier.find(
            body["type"], province, holder, context, number=body.get("number"), fresh=True
        )
    except GatewayError as exc:
        await _audit_presentation(request, principal.subject, None, "denied", exc.code, province)
        raise
    presentation = codes.issue(found, principal.subject)
    await _audit_presentation(request, principal.subject, None, "presented", None, province, found)
    request[LOG_FIELDS].update(service=f"licence:{found.licence_type}")
    qr = segno.make(presentation.code, error="m")
    return web.json_response(
        {
            "code": presentation.code,
            "expires_at": _iso(presentation.expires_at),
            "expires_in": int(codes.ttl),
            "qr_svg": qr.svg_data_uri(scale=4),
            "licence": {
                "type": found.licence_type,
                "issuing_province": found.province,
                "number": found.number,
                "status": found.status,
            },
        },
        status=201,
    )


async def check_presentation(request: web.Request) -> web.Response:
    """A verifier (a window clerk, a verifier client) checks a presented code for its service."""
    principal = principal_of(request)
    _, verifier, codes = _runtime(request)
    body = await _body(request, _CHECK)
    code = body["service"]
    check_client_may_call(request.app, principal, code)
    service = request.app[STATE].catalog.service(code)  # client.unknown_service
    show_for = {
        m.licence.type: m.licence.show
        for m in service.materials
        if m.licence is not None and m.licence.type is not None
    }
    if not show_for:
        raise ValidationFailed(
            f"Service {code!r} verifies no licence.",
            errors=[{"path": "/service", "message": "no licence material"}],
        )
    context = _context(request, principal, "", code)
    try:
        presented = await codes.check(body["code"], context, show_for=show_for)
    except GatewayError as exc:
        await _audit_presentation(request, None, principal, "denied", exc.code, None, service=code)
        raise
    found = presented.verification
    await _audit_presentation(
        request, presented.holder_subject, principal, "checked", None, found.province, found, code
    )
    request[LOG_FIELDS].update(service=code)
    return web.json_response(
        {
            "licence": {
                "type": found.licence_type,
                "name": request.app[SETTINGS].licences.licence_types[found.licence_type].name.zh,
                "issuing_province": found.province,
                "issuer": verifier.issuer_name(found.province),
                "number": found.number,
                "status": found.status,
                "verified_at": found.verified_at,
                "seal_kid": found.seal_kid,
            },
            "fields": presented.fields,
            "labels": {
                name: {"zh": field.zh, "en": field.en}
                for name, field in request.app[SETTINGS]
                .licences.licence_types[found.licence_type]
                .fields.items()
                if name in presented.fields
            },
        }
    )


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _audit_presentation(
    request: web.Request,
    holder_subject: str | None,
    verifier: Principal | None,
    outcome: str,
    error: str | None,
    province: str | None,
    found: Verification | None = None,
    service: str | None = None,
) -> None:
    writer = request.app[STATE].audit
    if writer is None:
        return
    extra: dict[str, Any] = {"presentation": True}
    if found is not None:
        extra.update(
            licence_type=found.licence_type,
            number=found.number,
            seal_kid=found.seal_kid,
            subjects=[found.holder.key],  # the holder's access log finds it
        )
    await writer.append(
        AuditEvent(
            type=EventType.LICENCE_VERIFIED,
            request_id=request[REQUEST_ID],
            principal=holder_subject,
            actor=verifier.acting if verifier is not None else None,
            client=verifier.client_id if verifier is not None else None,
            identity_level=verifier.level if verifier is not None else None,
            service=service or (f"licence:{found.licence_type}" if found else None),
            handling_province=province,
            purpose="亮证",
            outcome=outcome,
            error_code=error,
            response_digest=found.data_digest if found is not None else None,
            extra=extra,
        )
    )
