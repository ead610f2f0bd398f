"""收件受理: check an application against the catalogue and turn it into a ``NewCase``.

Every refusal is a client error with a stable code and nothing is written: a missing key, an
unknown service, a mode the service does not offer, a province pair without an agreement, a
level too low, a window case without a clerk's check of the originals, data that does not fit
the operation's schema, materials that fail verification.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from jsonschema import Draft202012Validator

from gateway.cases.config import carrier_operations
from gateway.cases.errors import (
    ClerkRequired,
    IdempotencyKeyMissing,
    MaterialsInvalid,
    ModeNotOffered,
    NotASubmission,
)
from gateway.cases.linked import part_input
from gateway.cases.model import MaterialRef, Mode, NewCase, PartPlan, body_digest
from gateway.catalog import Catalog, Route
from gateway.errors import ValidationFailed
from gateway.mapping import compile_mapping
from gateway.principal import Principal
from gateway.subject_config import CONSENT
from gateway.subjects import check_unambiguous, service_subject_fields

PROVINCE: Final = {"type": "string", "pattern": "^[0-9]{2}$"}
CASE_REQUEST_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["service", "receiving_province", "purpose", "data"],
    "properties": {
        "service": {"type": "string", "minLength": 1, "maxLength": 64},
        "operation": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "The submit operation; may be omitted when the service has one.",
        },
        "mode": {"type": "string", "enum": ["online", "proxy", "joint"], "default": "online"},
        "receiving_province": {**PROVINCE, "description": "收件地: where it is taken in."},
        "handling_province": {**PROVINCE, "description": "办理地 (online and proxy modes)."},
        "parts": {
            "type": "array",
            "minItems": 2,
            "maxItems": 8,
            "description": "多地联办: one entry per handling province.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["handling_province"],
                "properties": {
                    "handling_province": PROVINCE,
                    "operation": {"type": "string", "minLength": 1, "maxLength": 64},
                },
            },
        },
        "purpose": {"type": "string", "minLength": 1, "maxLength": 200},
        "consent": CONSENT,
        "authorisation_ref": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "deprecated": True,
            "description": "Accepted for older clients and ignored: it opens nothing.",
        },
        "data": {"type": "object"},
        "materials": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code"],
                # By reference and digest, or (免证办) as a licence the gateway finds itself.
                "oneOf": [
                    {"required": ["ref", "digest"], "properties": {"licence": False}},
                    {"required": ["licence"], "properties": {"ref": False, "digest": False}},
                ],
                "properties": {
                    "code": {"type": "string", "minLength": 1, "maxLength": 64},
                    "ref": {"type": "string", "minLength": 1, "maxLength": 512},
                    "digest": {"type": "string", "maxLength": 80},
                    "licence": {
                        "type": "object",
                        "additionalProperties": False,
                        "description": "免证办: the licence type, and its number when the "
                        "holder has several; found and verified at its issuer at intake.",
                        "properties": {
                            "type": {"type": "string", "minLength": 1, "maxLength": 64},
                            "number": {"type": "string", "minLength": 1, "maxLength": 64},
                        },
                    },
                },
            },
        },
        "originals_check": {
            "type": "object",
            "additionalProperties": False,
            "required": ["checked"],
            "description": "原件核验 by the window clerk (proxy mode).",
            "properties": {
                "checked": {"type": "boolean"},
                "note": {"type": "string", "maxLength": 200},
            },
        },
    },
}
_ENVELOPE = Draft202012Validator(CASE_REQUEST_SCHEMA)
_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sm3:[0-9a-f]{64})$")
_REF = re.compile(r"^(urn|https|elicence):[^\s]{1,500}$")


def check_idempotency_key(value: str | None) -> str:
    if not value:
        raise IdempotencyKeyMissing(
            "Send an Idempotency-Key header (8-128 characters): "
            "a retry with it never makes a second case."
        )
    if not _KEY.match(value):
        raise IdempotencyKeyMissing(
            "The Idempotency-Key must be 8-128 characters of letters, digits and ._:-"
        )
    return value


def new_case_id(receiving: str, now: datetime | None = None) -> str:
    """TB + receiving province + date + 12 random hex: unique, sortable by day, unguessable."""
    moment = now or datetime.now(UTC)
    return f"TB{receiving}{moment:%Y%m%d}{secrets.token_hex(6).upper()}"


def _envelope_errors(body: Mapping[str, Any]) -> None:
    problems = sorted(_ENVELOPE.iter_errors(body), key=lambda e: list(e.absolute_path))
    if problems:
        raise ValidationFailed(
            "The application envelope is not valid.",
            errors=[
                {
                    "path": "/" + "/".join(str(p) for p in e.absolute_path),
                    "message": e.message[:200] if e.validator != "pattern" else "bad format",
                }
                for e in problems[:20]
            ],
        )


def _submit_operation(catalog: Catalog, service: str, named: str | None) -> str | None:
    if named is not None:
        return named
    operations = catalog.service(service).operations
    # An operation that carries supplements (补齐补正) or undos is never a case of its own.
    carriers = carrier_operations(operations)
    submits = [n for n, op in operations.items() if op.kind == "submit" and n not in carriers]
    return submits[0] if len(submits) == 1 else None


def _check_materials(
    catalog: Catalog,
    service: str,
    given: list[Mapping[str, str]],
    *,
    requested: Collection[str] | None = None,
) -> tuple[MaterialRef, ...]:
    """Each material by code, reference and digest. ``requested``: a supplement (补齐补正), which
    must give these codes (the back-end may name codes the catalogue does not list) instead of
    the service's required materials."""
    declared = {m.code: m for m in catalog.service(service).materials}
    known = declared.keys() | set(requested or ())
    errors: list[dict[str, str]] = []
    seen: set[str] = set()
    refs: list[MaterialRef] = []
    for index, item in enumerate(given):
        path = f"/materials/{index}"
        code = item["code"]
        if code not in known:
            errors.append({"path": f"{path}/code", "message": "not a material of this service"})
        elif code in seen:
            errors.append({"path": f"{path}/code", "message": "given twice"})
        if "licence" in item:
            # 免证办: found and verified at the issuer by the licence hook (gateway/licences).
            if requested is not None or (code in declared and declared[code].licence is None):
                errors.append({"path": f"{path}/licence", "message": "not found as a licence"})
            seen.add(code)
            continue
        if not _DIGEST.match(item["digest"]):
            errors.append({"path": f"{path}/digest", "message": "expected sha256:<64 hex>"})
        if not _REF.match(item["ref"]):
            errors.append(
                {"path": f"{path}/ref", "message": "expected a urn:, https: or elicence: reference"}
            )
        seen.add(code)
        refs.append(MaterialRef(code, item["ref"], item["digest"]))
    for code in requested or ():
        if code not in seen:
            errors.append({"path": "/materials", "message": f"material {code!r} was requested"})
    mandatory = declared.items() if requested is None else ()
    for code, material in mandatory:
        # Shared data is fetched by the gateway (免证办) and originals are seen at the window.
        if (
            material.required
            and material.source in ("e-licence", "upload")
            and material.licence is None  # 免证办: the gateway finds it for the data subject
            and code not in seen
        ):
            errors.append({"path": "/materials", "message": f"material {code!r} is required"})
    if errors:
        raise MaterialsInvalid(errors)
    return tuple(refs)


def check_supplement_materials(
    catalog: Catalog, service: str, given: list[Mapping[str, str]], requested: Collection[str]
) -> tuple[MaterialRef, ...]:
    """A supplement's materials (补齐补正), checked like an application's; every requested code
    must be among them (client.materials_invalid)."""
    return _check_materials(catalog, service, given, requested=requested)


def _linked_parts(
    catalog: Catalog, code: str, data: Mapping[str, Any], receiving: str
) -> tuple[list[PartPlan], list[Route]]:
    """The parts a linked service declares, resolved for this application: each part's province
    and route, its dependencies by number, and the input of every part that waits for nothing
    checked against its operation's schema now (the others' once their inputs exist)."""
    service = catalog.service(code)
    assert service.linked is not None
    errors = [
        {"path": "/data/" + "/".join(str(p) for p in e.absolute_path), "message": _rule(e)}
        for e in sorted(
            catalog.linked_validator(code).iter_errors(data), key=lambda e: list(e.absolute_path)
        )
    ]
    if errors:
        raise ValidationFailed(
            "The application data does not match the service's schema.", errors[:20]
        )
    numbers = {name: n for n, name in enumerate(service.linked.parts)}
    plans: list[PartPlan] = []
    routes: list[Route] = []
    for name, part in service.linked.parts.items():
        handling = part.handling
        if handling is None:
            assert part.handling_from is not None
            found = compile_mapping({"v": part.handling_from}).apply(data).get("v")
            if not isinstance(found, str) or not re.fullmatch(r"[0-9]{2}", found):
                raise ValidationFailed(
                    f"Part {name!r} is handled in the province the application names.",
                    errors=[
                        {
                            "path": "/data/" + part.handling_from.replace(".", "/"),
                            "message": "a GB/T 2260 province code",
                        }
                    ],
                )
            handling = found
        route = catalog.route(code, part.operation, receiving, handling)  # client.no_agreement
        if not part.after:
            try:
                route.validate(part_input(part.input, data, {}))
            except ValidationFailed as exc:
                raise ValidationFailed(
                    f"Part {name!r} cannot be made from the application data.",
                    [
                        {**e, "path": f"/linked/{name}{e.get('path', '')}"}
                        for e in exc.extra.get("errors", [])
                    ],
                ) from None
        undo = route.operation.case.compensate_with if route.operation.case else None
        plans.append(
            PartPlan(
                handling,
                part.operation,
                route.system,
                name=name,
                after=tuple(numbers[d] for d in part.after),
                required=part.required,
                compensate_with=undo,
                reads_only=route.operation.kind != "submit",
            )
        )
        routes.append(route)
    return plans, routes


def _rule(error: Any) -> str:
    # Schema messages may quote the value (an ID number): name the rule instead.
    if error.validator in {"required", "additionalProperties", "type"}:
        return (
            str(error.message)[:200]
            if error.validator != "type"
            else f"expected {error.validator_value}"
        )
    return f"does not satisfy '{error.validator}'"


def build_new_case(
    catalog: Catalog,
    principal: Principal,
    body: Mapping[str, Any],
    *,
    idempotency_key: str | None,
    request_id: str | None = None,
    case_id: str | None = None,
    machine: bool = False,
) -> tuple[NewCase, list[Route]]:
    """A NewCase (and the route of each part), or a client error; nothing is written here."""
    key = check_idempotency_key(idempotency_key)
    _envelope_errors(body)
    code = body["service"]
    service = catalog.service(code)  # client.unknown_service
    mode = Mode(body.get("mode", "online"))
    if mode.value not in service.modes:
        raise ModeNotOffered(
            f"Service {code!r} is offered as {sorted(service.modes)}, not {mode.value!r}."
        )
    if not machine:
        # client.insufficient_level
        principal.require_levels(service.levels_for(None), service.level_requirement(None))
    receiving = body["receiving_province"]
    linked = service.linked is not None
    if linked and ({"parts", "handling_province", "operation"} & body.keys()):
        raise ValidationFailed(
            f"Service {code!r} declares its parts (联动办理): send the application data only.",
            errors=[
                {"path": f"/{k}", "message": "declared by the service"}
                for k in sorted({"parts", "handling_province", "operation"} & body.keys())
            ],
        )
    if linked:
        wanted = []
    elif "parts" in body:
        # 多地联办 (joint: several provinces) or a bundle (online: several operations, 企业开办).
        if "handling_province" in body or "operation" in body:
            raise ValidationFailed(
                "With 'parts', each part names its handling province and operation.",
                errors=[{"path": "/parts", "message": "excludes handling_province/operation"}],
            )
        wanted = [(p["handling_province"], p.get("operation")) for p in body["parts"]]
        if len(set(wanted)) != len(wanted):
            raise ValidationFailed(
                "Each part (handling province and operation) appears once.",
                errors=[{"path": "/parts", "message": "duplicate part"}],
            )
        if mode == Mode.JOINT and len({w[0] for w in wanted}) < 2:
            raise ValidationFailed(
                "A joint (多地联办) application has parts in at least two provinces.",
                errors=[{"path": "/parts", "message": "one province only"}],
            )
        if mode == Mode.PROXY:
            raise ValidationFailed(
                "A window (异地代收代办) application has one handling province.",
                errors=[{"path": "/parts", "message": "not for mode 'proxy'"}],
            )
    elif mode == Mode.JOINT:
        raise ValidationFailed(
            "A joint (多地联办) application lists its handling provinces in 'parts'.",
            errors=[{"path": "/parts", "message": "required for mode 'joint'"}],
        )
    elif "handling_province" not in body:
        raise ValidationFailed(
            "Name the handling province (办理地) of the application.",
            errors=[{"path": "/handling_province", "message": "required"}],
        )
    else:
        wanted = [(body["handling_province"], body.get("operation"))]
    clerk = principal.actor_role == "clerk" or "clerk" in principal.roles
    checked_by: str | None = None
    if mode == Mode.PROXY:
        if not clerk:
            raise ClerkRequired("A 异地代收代办 application is taken in by a window clerk.")
        check = body.get("originals_check") or {}
        if check.get("checked") is not True:
            raise ValidationFailed(
                "The clerk checks the originals (原件核验) before the application is forwarded.",
                errors=[{"path": "/originals_check/checked", "message": "must be true"}],
            )
        checked_by = principal.acting
    plans: list[PartPlan] = []
    routes: list[Route] = []
    check_unambiguous(service_subject_fields(service), body["data"], None)
    if linked:
        plans, routes = _linked_parts(catalog, code, body["data"], receiving)
        if mode == Mode.JOINT and len({p.handling_province for p in plans}) < 2:
            raise ValidationFailed(
                "A joint (多地联办) application has parts in at least two provinces.",
                errors=[{"path": "/mode", "message": "this application stays in one province"}],
            )
    for handling, named in wanted:
        operation = _submit_operation(catalog, code, named)
        route = catalog.route(code, operation, receiving, handling)  # client.no_agreement
        if route.operation.kind != "submit":
            raise NotASubmission(
                f"Operation {route.operation_name!r} is a {route.operation.kind}; call it "
                f"through /api/v1/services/{code}/calls instead."
            )
        if route.operation_name in carrier_operations(route.service.operations):
            raise NotASubmission(
                f"Operation {route.operation_name!r} carries supplements (补齐补正) or undos of "
                "a case's parts, never a case of its own; supplements are POSTed to "
                "/api/v1/cases/{case_id}/supplements."
            )
        route.validate(body["data"])  # client.validation_failed
        plans.append(PartPlan(handling, route.operation_name, route.system))
        routes.append(route)
    materials = _check_materials(catalog, code, list(body.get("materials", ())))
    case = NewCase(
        case_id=case_id or new_case_id(receiving),
        service=code,
        mode=mode,
        subject=principal.subject,
        owner=principal.owner,
        actor=principal.actor,
        actor_role=principal.actor_role or ("clerk" if clerk else None),
        client_id=principal.client_id,
        level=principal.level,
        receiving_province=receiving,
        purpose=body["purpose"],
        authorisation_ref=None,  # the grant that covers it, once the subject rule has bound it
        idempotency_key=key,
        body_digest=body_digest(body),
        data=body["data"],
        materials=materials,
        parts=tuple(plans),
        originals_checked_by=checked_by,
        request_id=request_id,
    )
    return case, routes
