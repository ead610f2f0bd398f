"""Demo Jiangsu (32) contribution-proof system (社保公积金缴存证明): REST JSON with an API key.

``POST /api/proofs`` with ``{"idNumber", "name"}`` issues an e-sealed proof of the holder's
social-insurance and housing-fund contributions (months paid, latest month paid). It is only
issued to the holder or with the holder's authorisation (授权用证): the gateway names the
verified holder in ``X-Tongban-Subjects`` (checked against Jiangsu's subject key,
gateway/demo/subject_check.py) and the grant that covered someone else's call in
``X-Tongban-Authorisation``; a request with neither is refused (403). The seal is a
demo e-seal: HMAC-SHA256 over the proof number and the SHA-256 digest of the proof document,
standing in for an SM2 seal; ``seal_value`` is what a relying office checks with Jiangsu's seal
verification key (see ``check_seal``). It never logs payloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.demo.api_key import json_error, require_api_key
from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import MA_WENHUA, SU_LANXIN, Resident, mask_id, mask_name
from gateway.demo.subject_check import SUBJECTS_HEADER, person_named

CENTRE_NAME = "江苏省示范社会保险和住房公积金缴存证明系统"
AUTHORISATION_HEADER = "X-Tongban-Authorisation"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Contributor:
    """Someone who paid social insurance and housing fund in Jiangsu."""

    resident: Resident
    si_months: int
    hf_months: int
    latest_month: str
    """YYYY-MM of the latest month paid (both schemes, in the demo)."""


def jiangsu_contributors() -> dict[str, Contributor]:
    people = (
        Contributor(SU_LANXIN, si_months=38, hf_months=36, latest_month="2026-10"),
        Contributor(MA_WENHUA, si_months=14, hf_months=14, latest_month="2026-09"),
    )
    return {p.resident.id_number: p for p in people}


@dataclass
class ContributionProofState:
    api_key: str
    seal_key: bytes
    subject_key: bytes | None = None
    """Jiangsu's subject key (gateway/demo/subject_check.py); None: not checked."""
    contributors: dict[str, Contributor] = field(default_factory=jiangsu_contributors)
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = _now
    issued: dict[str, str] = field(default_factory=dict)
    """proof number → the authorisation reference it was issued under."""
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


STATE = web.AppKey("contribution_proof_state", ContributionProofState)


def seal(key: bytes, proof_no: str, seal_digest: str) -> str:
    """The demo e-seal over a proof number and its document digest (base64)."""
    mac = hmac.new(key, f"{proof_no}\n{seal_digest}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def check_seal(key: bytes, proof_no: str, seal_digest: str, seal_value: str) -> bool:
    """Whether ``seal_value`` is Jiangsu's seal over this proof number and digest."""
    return hmac.compare_digest(seal(key, proof_no, seal_digest).encode(), seal_value.encode())


api_key_middleware = require_api_key(lambda app: app[STATE].api_key)


def _proof(
    state: ContributionProofState, person: Contributor, authorisation: str
) -> dict[str, Any]:
    now = state.clock()
    proof_no = f"32JFZM{now:%Y%m%d}{next(state._numbers):06d}"
    issued_at = now.isoformat(timespec="seconds")
    document: Mapping[str, Any] = {
        "type": "社会保险和住房公积金缴存证明 contribution proof",
        "proofNo": proof_no,
        "issuer": CENTRE_NAME,
        "holder": mask_name(person.resident.name),
        "idNumber": mask_id(person.resident.id_number),
        "socialInsuranceMonths": person.si_months,
        "housingFundMonths": person.hf_months,
        "latestMonth": person.latest_month,
        "authorisationRef": authorisation,
        "issuedAt": issued_at,
    }
    content = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    state.issued[proof_no] = authorisation
    return {
        "proofNo": proof_no,
        "holderName": mask_name(person.resident.name),
        "socialInsuranceMonths": person.si_months,
        "housingFundMonths": person.hf_months,
        "latestMonth": person.latest_month,
        "mediaType": "application/json",
        "content": base64.b64encode(content).decode(),
        "sealDigest": digest,
        "sealValue": seal(state.seal_key, proof_no, digest),
        "sealedBy": f"{CENTRE_NAME} 电子印章",
        "issuedAt": issued_at,
    }


async def issue_proof(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # 授权用证: the holder asks (the gateway verified them as the subject) or someone holding
    # their grant does (the gateway used it, and names it).
    authorisation = request.headers.get(AUTHORISATION_HEADER, "").strip()
    subjects = request.headers.get(SUBJECTS_HEADER, "").strip()
    if not authorisation and not subjects:
        return json_error(
            403, "authorisation_required", "a proof is issued only with the holder's authorisation"
        )
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "invalid_json", "body is not JSON")
    if not isinstance(body, dict) or not body.get("idNumber") or not body.get("name"):
        return json_error(400, "invalid_request", "idNumber and name are required")
    if not person_named(state.subject_key, subjects, str(body["idNumber"])):
        return json_error(403, "not_the_verified_subject", "the ID number is not the holder's")
    person = state.contributors.get(body["idNumber"])
    if person is None or person.resident.name != body["name"]:
        return json_error(404, "person_not_found", "no contributor matches idNumber and name")
    return web.json_response(_proof(state, person, authorisation or "holder"))


def build_contribution_proof_app(state: ContributionProofState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), api_key_middleware])
    app[STATE] = state
    app.router.add_post("/api/proofs", issue_proof, name="issue_proof")
    return app
