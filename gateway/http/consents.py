"""The holder's grants over HTTP, and the consent book's place in the app.

GET    /api/v1/me/consents               my consent grants (授权用证), newest first
POST   /api/v1/me/consents               give one: requester, services, purpose, expiry, uses
DELETE /api/v1/me/consents/{grant_id}    revoke one (at once: the next use is refused)
GET    /api/v1/me/delegations            delegations I gave (``given``) and hold (``received``)
POST   /api/v1/me/delegations            name an agent (ID type and number, kept as a hash only)
DELETE /api/v1/me/delegations/{grant_id} revoke one

"Me" is a signed-in person, or an enterprise (LP) through its operator, who manages the
enterprise's grants and gives them on its behalf (never another enterprise's). An agent gives a
consent grant for the person who delegated to it by naming the delegation (``delegation``).

``add_consent_routes`` opens the configured store with the app and keeps the book in
``GatewayState.consent``: the ConsentBook the data-subject rule asks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web
from jsonschema import Draft202012Validator

from gateway.consent.book import ConsentService, Giver, GrantRequest
from gateway.consent.contract import ConsentStoreUnavailable, GrantAsk, GrantKind, GrantUse
from gateway.consent.factory import build_consent_book, subject_digest, subject_keys
from gateway.consent.model import (
    MAX_PURPOSE,
    MAX_SERVICES,
    MAX_USES,
    Grant,
    GrantDelegationEnded,
    NotYourEnterprise,
)
from gateway.consent.subjects import Me, SubjectDigest, me, requester_person
from gateway.errors import (
    Forbidden,
    ValidationFailed,
)
from gateway.http.client_io import read_json_body
from gateway.http.keys import REQUEST_ID, SETTINGS, STATE, GatewayState, principal_of
from gateway.identity.identifiers import ID_TYPES, RESIDENT_ID_CARD, valid_resident_id
from gateway.identity.subject_keys import SubjectKeys
from gateway.principal import Principal
from gateway.settings import PROVINCES

SUBJECT_KEYS = web.AppKey("consent_subject_keys", SubjectKeys)
"""Keys naming subjects by identifier (an agent's ID number, an enterprise's credit code)."""
SUBJECT_DIGEST = web.AppKey("subject_digest", SubjectDigest)
"""The keyed digest naming subjects in answers."""
_NAME: Final = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}
_GRANT_ID: Final = {"type": "string", "pattern": "^(cg|dg)_[A-Za-z0-9_-]{32}$"}
_TIME: Final = {"type": "string", "format": "date-time", "maxLength": 40}
_SERVICES: Final = {"type": "array", "minItems": 1, "maxItems": MAX_SERVICES, "items": _NAME}

CONSENT_REQUEST: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["requester", "services", "purpose", "expires_at"],
    "properties": {
        "requester": {
            "description": "A registered client, or a department: a province and the client "
            "its system is registered under.",
            "type": "object",
            "additionalProperties": False,
            "required": ["client"],
            "properties": {
                "client": _NAME,
                "province": {"type": "string", "pattern": "^[0-9]{2}$"},
            },
        },
        "services": _SERVICES,
        "operations": {**_SERVICES, "description": "Only these operations (default: all)."},
        "purpose": {"type": "string", "minLength": 1, "maxLength": MAX_PURPOSE},
        "expires_at": {**_TIME, "description": "RFC 3339, at most a year ahead."},
        "max_uses": {"type": "integer", "minimum": 1, "maximum": MAX_USES},
        "enterprise": {
            "description": "The enterprise the operator grants for, as the portal shows it; "
            "refused unless it is the operator's own.",
            "type": "string",
            "pattern": "^[0-9A-Z]{15,18}$",
        },
        "delegation": {
            **_GRANT_ID,
            "description": "An agent granting for the person who delegated to it: the "
            "delegation's id.",
        },
    },
}
DELEGATION_REQUEST: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["agent", "services", "expires_at"],
    "properties": {
        "agent": {
            "description": "The agent's identity document; kept only as a keyed hash.",
            "type": "object",
            "additionalProperties": False,
            "required": ["id_type", "id_number"],
            "properties": {
                "id_type": {"type": "string", "enum": sorted(ID_TYPES)},
                "id_number": {"type": "string", "minLength": 4, "maxLength": 40},
            },
        },
        "services": _SERVICES,
        "expires_at": _TIME,
    },
}
_VALIDATORS: Final = {
    "consent": Draft202012Validator(CONSENT_REQUEST),
    "delegation": Draft202012Validator(DELEGATION_REQUEST),
}


def add_consent_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_consent_context)
    app.router.add_get("/api/v1/me/consents", list_consents)
    app.router.add_post("/api/v1/me/consents", create_consent)
    app.router.add_delete("/api/v1/me/consents/{grant_id}", revoke_consent)
    app.router.add_get("/api/v1/me/delegations", list_delegations)
    app.router.add_post("/api/v1/me/delegations", create_delegation)
    app.router.add_delete("/api/v1/me/delegations/{grant_id}", revoke_delegation)


async def _consent_context(app: web.Application) -> AsyncIterator[None]:
    settings, state = app[SETTINGS], app[STATE]
    book = build_consent_book(settings, state.audit)
    await book.store.open()
    state.consent = book
    keys, digest = subject_keys(settings), subject_digest(settings)
    if keys is not None:
        app[SUBJECT_KEYS] = keys
    if digest is not None:
        app[SUBJECT_DIGEST] = digest

    async def probe() -> dict[str, Any]:
        await book.store.ping()
        return {"ready": True}

    state.readiness["consent"] = probe
    try:
        yield
    finally:
        state.consent = None
        await book.store.aclose()


class AppConsentBook:
    """The app's ConsentBook before its store is open: what the data-subject rule is given when
    the app is built (``create_app``), using the book the consent context opens later, and
    failing closed (ConsentStoreUnavailable) while there is none."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    async def use(self, ask: GrantAsk) -> GrantUse:
        book = self._state.consent
        if book is None:
            raise ConsentStoreUnavailable("The consent store is not open.")
        return await book.use(ask)

    async def give_back(self, ask: GrantAsk, use: GrantUse) -> None:
        book = self._state.consent
        if book is not None:  # closed meanwhile: the use stays spent
            await book.give_back(ask, use)


def _book(request: web.Request) -> ConsentService:
    book = request.app[STATE].consent
    if book is None:
        raise ConsentStoreUnavailable("The consent store is not open.")
    return book


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _body(request: web.Request, kind: GrantKind) -> dict[str, Any]:
    _raw, body = await read_json_body(request)
    errors = [
        {"path": "/" + "/".join(str(p) for p in e.absolute_path), "message": e.message[:200]}
        for e in _VALIDATORS[kind].iter_errors(body)
    ]
    if errors:
        raise ValidationFailed("The body does not match the schema.", errors=errors[:20])
    return body


def _expiry(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValidationFailed(
            "expires_at is not an RFC 3339 time with a zone.",
            errors=[{"path": "/expires_at", "message": "an RFC 3339 time with Z or an offset"}],
        )
    return moment.timestamp()


def _time(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _holder(principal: Principal) -> Me:
    found = me(principal)
    if found is None:
        raise Forbidden(
            "Only a signed-in person, or an enterprise's operator, manages grants; "
            "someone acting for another person does not."
        )
    return found


def _giver(request: web.Request, holder: Me) -> Giver:
    principal = principal_of(request)
    return Giver(
        holder.subject,
        "operator" if holder.operator else "subject",
        grantor=holder.operator,
        client=principal.client_id,
        request_id=request.get(REQUEST_ID),
    )


def _check_names(request: web.Request, services: list[str], operations: list[str] | None) -> None:
    settings = request.app[SETTINGS]
    errors: list[dict[str, str]] = []
    for i, name in enumerate(services):
        if name not in settings.services:
            errors.append({"path": f"/services/{i}", "message": "not a service of the catalogue"})
    if operations is not None:
        known = {
            op for s in services if s in settings.services for op in settings.services[s].operations
        }
        for i, name in enumerate(operations):
            if name not in known:
                errors.append(
                    {"path": f"/operations/{i}", "message": "not an operation of these services"}
                )
    if errors:
        raise ValidationFailed("The grant names what the catalogue does not have.", errors=errors)


def grant_view(grant: Grant, now: float, keys: SubjectDigest | None) -> dict[str, Any]:
    """What the holder is shown: never a key, the subject only as a keyed digest."""
    view: dict[str, Any] = {
        "id": grant.grant_id,
        "kind": grant.kind,
        "state": grant.state(now),
        "subject": keys.display(grant.subject) if keys is not None else None,
        "granted_by": grant.granted_by,
        "services": list(grant.services),
        "operations": list(grant.operations) if grant.operations is not None else None,
        "purpose": grant.purpose,
        "created_at": _time(grant.created_at),
        "expires_at": _time(grant.expires_at),
        "revoked_at": _time(grant.revoked_at),
        "max_uses": grant.max_uses,
        "uses": grant.uses if grant.max_uses is not None else None,
    }
    if grant.kind == "consent":
        view["requester"] = {"client": grant.requester_client, "province": grant.requester_province}
    else:
        view["agent"] = keys.display(grant.agent) if keys and grant.agent else None
    if grant.delegation is not None:
        view["delegation"] = grant.delegation
    return view


def _views(request: web.Request, grants: list[Grant], kind: GrantKind) -> list[dict[str, Any]]:
    digest = request.app.get(SUBJECT_DIGEST)
    now = _book(request).now()
    return [grant_view(g, now, digest) for g in grants if g.kind == kind]


# --- consents ---------------------------------------------------------------------------------


async def list_consents(request: web.Request) -> web.Response:
    holder = _holder(principal_of(request))
    grants = await _book(request).mine(holder.subject)
    return _json({"consents": _views(request, grants, "consent")})


async def create_consent(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await _body(request, "consent")
    settings = request.app[SETTINGS]
    book = _book(request)
    delegation_id = body.get("delegation")
    if delegation_id is not None:
        giver = await _agent_giver(request, principal, delegation_id)
    else:
        giver = _giver(request, _holder(principal))
    named = body.get("enterprise")
    keys = request.app.get(SUBJECT_KEYS)
    if named is not None and (
        keys is None or giver.granted_by != "operator" or keys.enterprise(named) != giver.subject
    ):
        raise NotYourEnterprise("You act for another enterprise than the one named.")
    requester = body["requester"]
    province = requester.get("province")
    errors = []
    if requester["client"] not in settings.clients:
        errors.append({"path": "/requester/client", "message": "not a registered client"})
    if province is not None and province not in PROVINCES:
        errors.append({"path": "/requester/province", "message": "not a GB/T 2260 province"})
    if errors:
        raise ValidationFailed("The requester is not known.", errors=errors)
    services, operations = body["services"], body.get("operations")
    _check_names(request, services, operations)
    grant = await book.give(
        giver,
        GrantRequest(
            kind="consent",
            services=tuple(dict.fromkeys(services)),
            operations=tuple(dict.fromkeys(operations)) if operations is not None else None,
            purpose=body["purpose"],
            requester_client=requester["client"],
            requester_province=province,
            expires_at=_expiry(body["expires_at"]),
            max_uses=body.get("max_uses"),
        ),
    )
    view = grant_view(grant, book.now(), request.app.get(SUBJECT_DIGEST))
    return _json(view, status=201)


async def _agent_giver(request: web.Request, principal: Principal, delegation_id: str) -> Giver:
    """An agent giving a grant for the holder: the delegation must name this person."""
    agent = requester_person(principal)
    if agent is None:
        raise Forbidden("Only the signed-in agent named by the delegation grants under it.")
    delegation, _ = await _book(request).store.find(delegation_id)
    if delegation is None or delegation.kind != "delegation" or delegation.agent != agent:
        raise GrantDelegationEnded("You are not, or no longer, this person's agent.")
    return Giver(
        delegation.subject,
        "agent",
        grantor=principal.subject,
        delegation=delegation_id,
        agent=agent,
        client=principal.client_id,
        request_id=request.get(REQUEST_ID),
    )


async def revoke_consent(request: web.Request) -> web.Response:
    return await _revoke(request, "consent")


async def _revoke(request: web.Request, kind: GrantKind) -> web.Response:
    holder = _holder(principal_of(request))
    book = _book(request)
    grant = await book.revoke(request.match_info["grant_id"], _giver(request, holder), (kind,))
    return _json(grant_view(grant, book.now(), request.app.get(SUBJECT_DIGEST)))


# --- delegations ------------------------------------------------------------------------------


async def list_delegations(request: web.Request) -> web.Response:
    principal = principal_of(request)
    book = _book(request)
    holder = me(principal)
    agent = requester_person(principal)
    if holder is None and agent is None:
        _holder(principal)  # raises the refusal
    given = await book.mine(holder.subject) if holder is not None else []
    received = await book.delegated_to(agent) if agent is not None else []
    return _json(
        {
            "given": _views(request, given, "delegation"),
            "received": _views(request, received, "delegation"),
        }
    )


async def create_delegation(request: web.Request) -> web.Response:
    holder = _holder(principal_of(request))
    if holder.person is None:
        raise Forbidden("An enterprise authorises operators at its identity platform instead.")
    body = await _body(request, "delegation")
    keys = request.app.get(SUBJECT_KEYS)
    if keys is None:
        raise Forbidden("Delegation needs the identity provider's link secret configured.")
    document = body["agent"]
    id_type, number = document["id_type"], document["id_number"].strip().upper()
    if id_type == RESIDENT_ID_CARD and not valid_resident_id(number):
        raise ValidationFailed(
            "The agent's ID number is not valid.",
            errors=[{"path": "/agent/id_number", "message": "fails the GB 11643 check"}],
        )
    agent = keys.person(number, id_type)
    if agent == holder.person:
        raise ValidationFailed(
            "A person cannot be their own agent.",
            errors=[{"path": "/agent", "message": "names the holder"}],
        )
    _check_names(request, body["services"], None)
    book = _book(request)
    grant = await book.give(
        _giver(request, holder),
        GrantRequest(
            kind="delegation",
            services=tuple(dict.fromkeys(body["services"])),
            expires_at=_expiry(body["expires_at"]),
            agent=agent,
        ),
    )
    view = grant_view(grant, book.now(), request.app.get(SUBJECT_DIGEST))
    return _json(view, status=201)


async def revoke_delegation(request: web.Request) -> web.Response:
    return await _revoke(request, "delegation")


# --- OpenAPI ----------------------------------------------------------------------------------

_REF: Final = {"$ref": "#/components/schemas/Grant"}


def consent_openapi_schemas() -> dict[str, Any]:
    text_or_null = {"type": ["string", "null"]}
    return {
        "Grant": {
            "type": "object",
            "required": ["id", "kind", "state", "services", "expires_at", "granted_by"],
            "properties": {
                "id": {"type": "string"},
                "kind": {"type": "string", "enum": ["consent", "delegation"]},
                "state": {"type": "string", "enum": ["active", "revoked", "expired", "used_up"]},
                "subject": {**text_or_null, "description": "Keyed digest, never an identifier"},
                "granted_by": {"type": "string", "enum": ["subject", "operator", "agent"]},
                "services": {"type": "array", "items": {"type": "string"}},
                "operations": {"type": ["array", "null"], "items": {"type": "string"}},
                "purpose": text_or_null,
                "created_at": text_or_null,
                "expires_at": text_or_null,
                "revoked_at": text_or_null,
                "max_uses": {"type": ["integer", "null"]},
                "uses": {"type": ["integer", "null"]},
                "requester": {
                    "type": "object",
                    "properties": {"client": text_or_null, "province": text_or_null},
                },
                "agent": text_or_null,
                "delegation": {"type": "string"},
            },
        },
        "ConsentRequest": CONSENT_REQUEST,
        "DelegationRequest": DELEGATION_REQUEST,
    }


def consent_openapi_paths(problems: Any, ok: Any) -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    grant_id = {"name": "grant_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def listing(name: str) -> dict[str, Any]:
        return {
            "type": "object",
            "required": [name],
            "properties": {name: {"type": "array", "items": _REF}},
        }

    def create(summary: str, schema: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": secured,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "201": ok(_REF, "Created"),
                **problems(400, 401, 403, 413, 415, 422, 503),
            },
        }

    def revoke(summary: str) -> dict[str, Any]:
        return {
            "summary": summary,
            "security": secured,
            "parameters": [grant_id],
            "responses": {"200": ok(_REF), **problems(401, 403, 404, 503)},
        }

    delegations = listing("given")
    delegations["required"] = ["given", "received"]
    delegations["properties"]["received"] = {"type": "array", "items": _REF}
    return {
        "/api/v1/me/consents": {
            "get": {
                "summary": "My consent grants (授权用证), newest first",
                "security": secured,
                "responses": {"200": ok(listing("consents")), **problems(401, 403, 503)},
            },
            "post": create("Give a consent grant to a client or a department", "ConsentRequest"),
        },
        "/api/v1/me/consents/{grant_id}": {"delete": revoke("Revoke one of my consent grants")},
        "/api/v1/me/delegations": {
            "get": {
                "summary": "Delegations (委托用证) I gave and those naming me as agent",
                "security": secured,
                "responses": {"200": ok(delegations), **problems(401, 403, 503)},
            },
            "post": create("Name an agent for some services until an expiry", "DelegationRequest"),
        },
        "/api/v1/me/delegations/{grant_id}": {"delete": revoke("Revoke one of my delegations")},
    }
