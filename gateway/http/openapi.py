"""The OpenAPI 3.1 description of the public HTTP surface, built from the live catalogue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.http.audit import audit_openapi_paths, audit_openapi_schemas
from gateway.http.cases import NO_AGREEMENT_OR_INVALID, case_openapi_paths
from gateway.http.consents import consent_openapi_paths, consent_openapi_schemas
from gateway.http.licences import licence_openapi_paths
from gateway.subject_config import CONSENT

if TYPE_CHECKING:
    from gateway.catalog import Catalog

PROVINCE = {"type": "string", "pattern": "^[0-9]{2}$", "description": "GB/T 2260 province code"}
LOCALIZED = {
    "type": "object",
    "required": ["zh", "en"],
    "properties": {"zh": {"type": "string"}, "en": {"type": "string"}},
}

CALL_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["receiving_province", "handling_province", "purpose", "data"],
    "properties": {
        "operation": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "description": "Operation of the service; may be omitted when it has only one.",
        },
        "receiving_province": {**PROVINCE, "description": "Where the request is made (收件地)."},
        "handling_province": {**PROVINCE, "description": "Whose system handles it (办理地)."},
        "purpose": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "Why the data is needed; recorded with every call.",
        },
        "consent": CONSENT,
        "authorisation_ref": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "deprecated": True,
            "description": "Accepted for older clients and ignored: it opens nothing. Present a"
            " grant in 'consent' instead.",
        },
        "case_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "data": {"type": "object", "description": "Input, per the operation's input_schema."},
    },
}

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "pattern": "^(client|backend|gateway)\\.[a-z_]+$"},
        "request_id": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "required_level": {"type": "string"},
        "current_level": {"type": "string"},
        "policy": {
            "type": "string",
            "enum": ["client", "person"],
            "description": "client.rate_limited: the budget that refused the call",
        },
    },
}

_SUMMARY = {
    "type": "object",
    "required": ["code", "name", "modes", "min_level", "handling_provinces", "operations"],
    "properties": {
        "code": {"type": "string"},
        "name": LOCALIZED,
        "modes": {"type": "array", "items": {"type": "string"}},
        "min_level": {"anyOf": [{"type": "null"}, {"enum": ["L1", "L2", "L3", "LP", "Counter"]}]},
        "levels": {
            "type": "array",
            "description": "Identity levels admitted, as a set.",
            "items": {"type": "string", "enum": ["L1", "L2", "L3", "LP", "Counter"]},
        },
        "handling_provinces": {"type": "array", "items": PROVINCE},
        "operations": {"type": "array", "items": {"type": "string"}},
    },
}

_OPERATION_GUIDE = {
    "type": "object",
    "required": ["name", "kind", "retry", "input_schema"],
    "properties": {
        "name": LOCALIZED,
        "kind": {"type": "string", "enum": ["query", "verify", "submit"]},
        "retry": {"type": "string", "enum": ["safe", "idempotent-with-key", "never"]},
        "input_schema": {"type": "object"},
        "levels": {"type": "array", "items": {"type": "string"}},
        "subject": {
            "description": "Whose data: caller, public, or the input fields naming the"
            " person(s) or enterprise(s).",
            "anyOf": [
                {"type": "null"},
                {"enum": ["caller", "public"]},
                {"type": "array", "items": {"type": "object"}},
            ],
        },
        "result_fields": {
            "type": "object",
            "description": "Labels of the answer's fields for people, by dotted path.",
            "additionalProperties": {
                "type": "object",
                "required": ["zh"],
                "properties": {
                    "zh": {"type": "string"},
                    "en": {"type": ["string", "null"]},
                    "values": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}

_GUIDE = {
    "type": "object",
    "required": [
        "code",
        "name",
        "modes",
        "min_level",
        "handling_provinces",
        "operations",
        "materials",
        "agreements",
        "consent_required",
    ],
    "properties": {
        **_SUMMARY["properties"],  # type: ignore[dict-item]
        "operations": {"type": "object", "additionalProperties": _OPERATION_GUIDE},
        "description": {"anyOf": [LOCALIZED, {"type": "null"}]},
        "consent_required": {"type": "boolean"},
        "time_limit_days": {"type": ["integer", "null"]},
        "materials": {"type": "array", "items": {"type": "object"}},
        "agreements": {"type": "array", "items": {"type": "object"}},
        "linked": {
            "description": "联动办理: the parts every case of this service is made of, in order",
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["parts", "input_schema"],
                    "properties": {
                        "input_schema": {"type": "object"},
                        "parts": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "title", "operation", "after", "required"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "title": LOCALIZED,
                                    "operation": {"type": "string"},
                                    "handling_province": {"anyOf": [PROVINCE, {"type": "null"}]},
                                    "after": {"type": "array", "items": {"type": "string"}},
                                    "required": {"type": "boolean"},
                                    "undone_if_the_case_fails": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
            ],
        },
    },
}

_CALL_RESPONSE = {
    "type": "object",
    "required": ["request_id", "service", "operation", "handling_province", "system", "data"],
    "properties": {
        "request_id": {"type": "string"},
        "service": {"type": "string"},
        "operation": {"type": "string"},
        "receiving_province": PROVINCE,
        "handling_province": PROVINCE,
        "system": {"type": "string"},
        "attempts": {"type": "integer", "minimum": 1},
        "data": {},
    },
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Problem details (RFC 9457)",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for s in statuses
    }


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_RATE_LIMIT_POLICY = {
    "description": (
        "The rate-limit budgets this call drew on (draft-ietf-httpapi-ratelimit-headers), "
        'e.g. "person";q=300;w=60, "client";q=6000;w=60'
    ),
    "schema": {"type": "string"},
}
_RATE_LIMITED = {
    "description": (
        "client.rate_limited: the person's or the client's budget is spent; nothing was done "
        "(no back-end call, no case). Retry after Retry-After seconds."
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds until the budget has room again",
            "schema": {"type": "integer", "minimum": 1},
        },
        "RateLimit": {
            "description": 'The refusing budget, e.g. "person";r=0;t=42',
            "schema": {"type": "string"},
        },
        "RateLimit-Policy": _RATE_LIMIT_POLICY,
    },
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _rate_limited(paths: dict[str, Any]) -> dict[str, Any]:
    """Every authenticated /api operation may answer 429 and names its budgets on each answer
    past authentication (gateway/http/ratelimit.py); callbacks and /admin are not limited."""
    limited: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith("/api/"):
            limited[path] = item
            continue
        operations: dict[str, Any] = {}
        for method, operation in item.items():
            if not isinstance(operation, dict) or "security" not in operation:
                operations[method] = operation
                continue
            responses = {
                status: response
                if status == "401"
                else {
                    **response,
                    "headers": {
                        **response.get("headers", {}),
                        "RateLimit-Policy": _RATE_LIMIT_POLICY,
                    },
                }
                for status, response in operation["responses"].items()
            }
            responses["429"] = _RATE_LIMITED
            operations[method] = {**operation, "responses": responses}
        limited[path] = operations
    return limited


def build_openapi(catalog: Catalog) -> dict[str, Any]:
    service_param = {
        "name": "service",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(catalog.services)},
    }
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tongban gateway",
            "version": "1",
            "description": "跨省通办 integration gateway: catalogue, routed calls, operations.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": _PROBLEM,
                "ServiceSummary": _SUMMARY,
                "ServiceGuide": _GUIDE,
                "CallRequest": CALL_REQUEST_SCHEMA,
                "CallResponse": _CALL_RESPONSE,
                **audit_openapi_schemas(),
                **consent_openapi_schemas(),
            },
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _ok({"type": "object", "required": ["status"]})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: store state and each system's breaker",
                    "responses": {
                        "200": _ok({"type": "object", "required": ["status", "systems"]}),
                        "503": _ok({"type": "object"}, "Not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _ok({"type": "object"})},
                }
            },
            "/api/v1/services": {
                "get": {
                    "summary": "The service catalogue (事项目录): what the calling client may call",
                    "security": secured,
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": ["services"],
                                "properties": {
                                    "services": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/ServiceSummary"},
                                    }
                                },
                            }
                        ),
                        **_problems(401),
                    },
                }
            },
            "/api/v1/services/{service}": {
                "get": {
                    "summary": "A service's guide: modes, provinces, materials, minimum level",
                    "security": secured,
                    "parameters": [service_param],
                    "responses": {
                        "200": _ok({"$ref": "#/components/schemas/ServiceGuide"}),
                        **_problems(401, 404),
                    },
                }
            },
            "/api/v1/services/{service}/calls": {
                "post": {
                    "summary": "A synchronous query or verification in a named province",
                    "security": secured,
                    "parameters": [
                        service_param,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 128},
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CallRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _ok({"$ref": "#/components/schemas/CallResponse"}),
                        **_problems(400, 401, 403, 404, 413, 415, 422, 502, 503, 504),
                        "422": NO_AGREEMENT_OR_INVALID,
                    },
                }
            },
            **case_openapi_paths(),
            **licence_openapi_paths(),
            **audit_openapi_paths(),
            **consent_openapi_paths(_problems, _ok),
        },
    }
    document["paths"] = _rate_limited(document["paths"])
    return document
