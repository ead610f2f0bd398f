"""Identity assertions for provincial back-ends: who, for whom, at what level, why, for which case.

A compact JWS (RFC 7515) signed with the provider's active key, verifiable by any back-end
against /oauth2/jwks (RFC 7517). Claims follow JWT conventions (RFC 7519): ``iss`` the gateway,
``aud`` the handling system, ``sub`` the principal's pairwise id, ``act`` the actor (RFC 8693
§4.1) when someone acts for the principal, ``acr`` the level, plus ``purpose``, ``case_id``,
``service``, ``client_id``, ``source_province`` (the receiving province the request came from),
``grant`` (the consent or delegation grant that covered it) and ``data_subjects``: each verified
data subject as ``{"type": "person"|"enterprise", "hash": ...}``, the hash keyed with the
handling province's own subject key (gateway/identity/subject_keys.py), so the province
compares it with the hash of the ID number or credit code it is asked about. Short-lived (a
minute by default) and with a ``jti`` so a back-end can refuse a replay. Header
``typ: tongban-assertion+jwt`` keeps it from being taken for an access or ID token (RFC 8725
§3.11).

Must not: carry an ID number or a name (用而不存: the back-end gets those in the payload, if at
all); import aiohttp.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.identity.keys import SigningKeys

ASSERTION_TYPE = "tongban-assertion+jwt"


def issue_assertion(
    keys: SigningKeys,
    *,
    issuer: str,
    algorithm: str,
    audience: str,
    subject: str,
    actor: str | None,
    actor_role: str | None,
    level: str,
    purpose: str,
    service: str,
    case_id: str | None,
    grant: str | None,
    client_id: str,
    now: float,
    ttl: int,
    source_province: str | None = None,
    data_subjects: Sequence[Mapping[str, str]] = (),
) -> str:
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "acr": level,
        "purpose": purpose,
        "service": service,
        "client_id": client_id,
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": uuid.uuid4().hex,
    }
    if actor and actor != subject:
        claims["act"] = {"sub": actor, "role": actor_role or "agent"}
    if case_id:
        claims["case_id"] = case_id
    if grant:
        claims["grant"] = grant
    if source_province:
        claims["source_province"] = source_province
    if data_subjects:
        claims["data_subjects"] = [dict(s) for s in data_subjects]
    return keys.sign(claims, algorithm=algorithm, typ=ASSERTION_TYPE)


def verify_assertion(
    token: str,
    jwks: dict[str, Any],
    *,
    issuer: str,
    audience: str,
    algorithms: Collection[str] = ("ES256", "RS256"),
    now: float,
    leeway: int = 30,
) -> dict[str, Any]:
    """What a back-end does with the assertion (used by the demo back-ends' tests)."""
    key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    decoded = jwt.decode(token, key_set, algorithms=list(algorithms))
    if decoded.header.get("typ") != ASSERTION_TYPE:
        raise JoseError("not an identity assertion")
    jwt.JWTClaimsRegistry(
        now=int(now),
        leeway=leeway,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
        acr={"essential": True},
        purpose={"essential": True},
    ).validate(decoded.claims)
    return dict(decoded.claims)
