"""Electronic licences in the app: the verifier and the 免证办 hook of case intake, opened with
the app over the open systems (after the systems context, before the cases context)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.audit.calls import CallAuditor
from gateway.audit.record import AuditEvent, EventType
from gateway.cases.store import CaseStore
from gateway.errors import GatewayError, InvalidRequest, MalformedJson, NotFound
from gateway.http.keys import LOG_FIELDS, REQUEST_ID, SETTINGS, STATE
from gateway.identity.identifiers import link_keyer
from gateway.identity.person_key import PersonKeys
from gateway.licences.access import HolderCheck
from gateway.licences.config import LICENCE_STATUSES
from gateway.licences.issuers import StackIssuerCall
from gateway.licences.materials import LicenceMaterials
from gateway.licences.notices import LicenceNotices
from gateway.licences.verify import LicenceVerifier
from gateway.pipeline import Sleep


@dataclass(slots=True)
class LicenceRuntime:
    """Filled in when the app starts; empty when no licence type is configured."""

    verifier: LicenceVerifier | None = None
    materials: LicenceMaterials | None = None
    notices: LicenceNotices | None = None
    cases: CaseStore | None = None
    """The case store, set by the cases context: notices reach the cases relying on a licence."""


LICENCES = web.AppKey("licences", LicenceRuntime)


def add_licences(app: web.Application, sleep: Sleep) -> None:
    app[LICENCES] = LicenceRuntime()
    # Under /api/v1/callbacks/: authenticated by the issuer's HMAC, not a bearer token.
    app.router.add_post("/api/v1/callbacks/licences/{province}", receive_notice)

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings, state, runtime = app[SETTINGS], app[STATE], app[LICENCES]
        catalogue = settings.licences
        identity = settings.gateway.identity
        if catalogue.licence_types and identity is not None and identity.link_secret is not None:
            writer = state.audit
            keyer = link_keyer(identity.link_secret.get_secret_value(), identity.link_algorithm)
            calls = StackIssuerCall(
                catalogue,
                state.systems,
                auditor=CallAuditor(writer) if writer is not None else None,
                sleep=sleep,
            )
            runtime.verifier = LicenceVerifier(catalogue, calls, keyer)

            async def record(event: AuditEvent) -> None:
                if writer is not None:
                    await writer.append(event)

            holders = HolderCheck(PersonKeys(identity.pairwise_secret), None)
            runtime.materials = LicenceMaterials(
                runtime.verifier, lambda: state.catalog, record=record, holders=holders
            )
            runtime.notices = LicenceNotices(catalogue, runtime.verifier)
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
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedJson("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.")
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


def licence_openapi_paths() -> dict[str, Any]:
    """The licence endpoints' OpenAPI fragment (merged into /openapi.json)."""
    header = {"in": "header", "required": True, "schema": {"type": "string"}}
    return {
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
        }
    }
