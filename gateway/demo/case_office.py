"""Demo provincial government-service platform (一体化政务服务平台): takes applications as cases.

One app per province (Qinghai 63, Gansu 62), REST JSON with an API key:

    POST /api/applications                    take an application in; deduplicated on the
                                              Idempotency-Key header (201 new, 200 the same)
    GET  /api/applications/{applicationId}    its status; each query moves it along the
                                              office's ``progress`` (the demo's officers)
    GET  /api/applications/by-key/{key}       {"found": bool, ...}: did a send with this key
                                              arrive? (how the gateway settles an unknown outcome)
    POST /api/applications/{applicationId}/supplements
                                              补齐补正: the material asked for (status SUPPLEMENT,
                                              ``supplementRequest``); deduplicated on the
                                              Idempotency-Key (201 taken, 200 the same again)

It serves S2 (异地就医备案), S3 (户口迁移, 多地联办: Gansu confirms the move-out, Qinghai issues
the permit), S8 (跨省设立分支机构: the 企业开办 bundle fans out to four agencies) and S10 (残疾人证,
异地代收代办: a Shaanxi window collects, Qinghai decides) and S9 (申请公共租赁住房: Qinghai's
housing-security office checks the e-seal of the Jiangsu contribution proof named in the
application, with Jiangsu's seal verification key, and refuses a proof whose seal does not hold,
422 ``seal_invalid``). It never logs payloads.

补齐补正 in S10: Qinghai's disability federation asks for the guardianship certificate
(``guardian-certificate``) when the category is intellectual or mental (a guardian applies for
the person), and goes on with the application once it is supplied.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.demo.api_key import json_error, require_api_key
from gateway.demo.contribution_proof import check_seal
from gateway.demo.recording import Recorder, recording_middleware

STATUS_TEXT = {
    "ACCEPTED": "已受理 accepted",
    "PROCESSING": "办理中 being processed",
    "DONE": "已办结 decided, result sent",
    "REJECTED": "不予受理 not accepted",
    "RETURNED": "退件 returned",
    "SUPPLEMENT": "请补齐补正材料 supply missing material",
}
DOCUMENTS = {
    "hukou-move-out": ("QCZ", "迁出确认 move-out confirmation"),
    "hukou-move-in": ("ZQZ", "准予迁入证明 moving-in permit"),
    "disability-card": ("CJZ", "残疾人证 disability card (mailed)"),
    "medical-filing": ("YDJY", "异地就医备案凭证 filing record for treatment elsewhere"),
    "branch-registration": ("FZJG", "分支机构营业执照 branch business licence"),
    "seal-filing": ("YZBA", "印章备案回执 seal filing receipt"),
    "invoice-application": ("FPSL", "发票领用核定 invoice allowance"),
    "si-registration": ("SBDJ", "社会保险登记证明 social-insurance registration"),
    "public-rental-housing": ("GZF", "公共租赁住房资格确认书 rental-housing eligibility"),
    "newborn-registration": ("CSDJ", "出生登记 birth registered in the household register"),
    "newborn-medical-insurance": ("YBCB", "城乡居民医保参保凭证 medical-insurance enrolment"),
    "newborn-social-security-card": ("SBK", "社会保障卡申领回执 social-security card ordered"),
}
# Kinds that rest on another province's e-sealed proof: kind → the proof's issuing province.
SEALED_PROOF_KINDS = {"public-rental-housing": "32"}
# Kinds decided on an electronic licence the gateway verified at its issuer (免证办, S12): kind →
# the licence type that must come with the application, verified valid.
LICENCE_KINDS = {
    "newborn-registration": "birth-medical-certificate",
    "newborn-medical-insurance": "birth-medical-certificate",
    "newborn-social-security-card": "birth-medical-certificate",
}
KINDS = frozenset(DOCUMENTS)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Application:
    application_id: str
    idempotency_key: str
    fingerprint: str
    kind: str
    status: str
    steps: list[str]
    received_at: str
    result: dict[str, str] = field(default_factory=dict)
    supplement_request: dict[str, Any] | None = None
    """补齐补正: what the officers asked for, while the status is SUPPLEMENT."""
    supplements: list[str] = field(default_factory=list)
    """Idempotency keys of the supplements taken, in order (each taken once)."""

    def as_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "applicationId": self.application_id,
            "kind": self.kind,
            "status": self.status,
            "statusText": STATUS_TEXT[self.status],
            "receivedAt": self.received_at,
            "result": self.result,
        }
        if self.status == "SUPPLEMENT" and self.supplement_request is not None:
            answer["supplementRequest"] = self.supplement_request
        return answer


SupplementRule = Callable[[dict[str, Any], datetime], dict[str, Any] | None]
"""(application body, now) → what a supplement request asks for, or None when nothing is
missing."""


def guardian_needed(body: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """S10: for an intellectual or mental disability a guardian applies for the person, so the
    guardianship certificate (监护关系证明) is needed; the officers give 15 days."""
    if body.get("category") not in ("intellectual", "mental"):
        return None
    return {
        "materialCodes": ["guardian-certificate"],
        "message": "请补充监护关系证明 / Supply the guardianship certificate",
        "deadline": (now + timedelta(days=15)).date().isoformat(),
    }


@dataclass
class CaseOfficeState:
    province: str
    office_name: str
    api_key: str
    progress: dict[str, list[str]] = field(default_factory=dict)
    """kind → the statuses an application walks through, one per status query; the first
    is answered at once on submission."""
    proof_seal_keys: dict[str, bytes] = field(default_factory=dict)
    """province → the key its proof seals are checked with (demo HMAC, standing in for the
    issuing province's seal certificate)."""
    supplement_rules: dict[str, SupplementRule] = field(default_factory=dict)
    """kind → when an application of that kind is answered SUPPLEMENT (补齐补正) at once."""
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = _now
    applications: dict[str, Application] = field(default_factory=dict)
    by_key: dict[str, Application] = field(default_factory=dict)
    supplements_by_key: dict[str, Application] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def decide(self, application_id: str, status: str, **result: str) -> None:
        """The officers' decision, overriding the scripted progress."""
        if status not in STATUS_TEXT:
            raise ValueError(f"unknown status {status!r}")
        application = self.applications[application_id]
        application.status = status
        application.steps.clear()
        application.result.update(result)


STATE = web.AppKey("case_office_state", CaseOfficeState)


api_key_middleware = require_api_key(lambda app: app[STATE].api_key)


def _result_for(state: CaseOfficeState, application: Application) -> dict[str, str]:
    prefix, document = DOCUMENTS[application.kind]
    return {
        "documentNo": f"{prefix}{state.province}{application.application_id[-6:]}",
        "document": document,
    }


def _check_licence(body: dict[str, Any]) -> web.Response | None:
    """S12: no upload; the birth medical certificate arrives as the gateway's verification at
    its issuer (type, number, status, data and seal digests), and must say valid."""
    needed = LICENCE_KINDS.get(body["kind"])
    if needed is None:
        return None
    licences = body.get("licences")
    ok = isinstance(licences, list) and any(
        isinstance(item, dict)
        and item.get("type") == needed
        and item.get("status") == "valid"
        and str(item.get("data_digest", "")).startswith("sha256:")
        and str(item.get("seal_digest", "")).startswith("sha256:")
        for item in licences
    )
    if not ok:
        return json_error(
            422, "licence_missing", f"a verified {needed} must come with the application"
        )
    return None


def _check_proof(state: CaseOfficeState, body: dict[str, Any]) -> web.Response | None:
    """S9: the application names a proof (number, digest, seal); the seal must be the issuing
    province's over that number and digest."""
    issuer = SEALED_PROOF_KINDS.get(body["kind"])
    if issuer is None:
        return None
    fields = [body.get(k) for k in ("proofNo", "proofSealDigest", "proofSealValue")]
    if not all(isinstance(f, str) and f for f in fields):
        return json_error(
            400, "invalid_request", "proofNo, proofSealDigest, proofSealValue required"
        )
    key = state.proof_seal_keys.get(issuer)
    if key is None or not check_seal(key, *(str(f) for f in fields)):
        return json_error(422, "seal_invalid", "the proof's e-seal does not verify")
    return None


async def submit_application(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return json_error(400, "idempotency_key_required", "send an Idempotency-Key header")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "invalid_json", "body is not JSON")
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        return json_error(400, "invalid_request", f"kind must be one of {sorted(KINDS)}")
    if not body.get("idNumber") or not body.get("name"):
        return json_error(400, "invalid_request", "idNumber and name are required")
    refused = _check_proof(state, body) or _check_licence(body)
    if refused is not None:
        return refused
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    existing = state.by_key.get(key)
    if existing is not None:
        if existing.fingerprint != fingerprint:
            return json_error(422, "idempotency_key_reused", "key used for another application")
        return web.json_response(existing.as_json(), status=200)
    now = state.clock()
    steps = list(state.progress.get(body["kind"], ["ACCEPTED", "PROCESSING", "DONE"]))
    application = Application(
        application_id=f"{state.province}ZW{now:%Y%m%d}{next(state._numbers):06d}",
        idempotency_key=key,
        fingerprint=fingerprint,
        kind=body["kind"],
        status=steps.pop(0),
        steps=steps,
        received_at=now.isoformat(timespec="seconds"),
    )
    rule = state.supplement_rules.get(application.kind)
    missing = rule(body, now) if rule is not None else None
    if missing is not None:
        # 补齐补正 before anything else: the scripted steps go on once it is supplied.
        application.steps.insert(0, application.status)
        application.status = "SUPPLEMENT"
        application.supplement_request = missing
    if application.status == "DONE":
        application.result = _result_for(state, application)
    state.applications[application.application_id] = application
    state.by_key[key] = application
    return web.json_response(application.as_json(), status=201)


async def supplement_application(request: web.Request) -> web.Response:
    """补齐补正: take the material asked for, once per Idempotency-Key."""
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return json_error(400, "idempotency_key_required", "send an Idempotency-Key header")
    application = state.applications.get(request.match_info["applicationId"])
    if application is None:
        return json_error(404, "not_found", "no such application")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "invalid_json", "body is not JSON")
    materials = body.get("materials") if isinstance(body, dict) else None
    if not isinstance(materials, list) or not all(isinstance(m, dict) for m in materials):
        return json_error(400, "invalid_request", "materials must be a list of objects")
    taken = state.supplements_by_key.get(key)
    if taken is not None:
        if taken is not application:
            return json_error(422, "idempotency_key_reused", "key used for another application")
        return web.json_response(application.as_json(), status=200)
    if application.status != "SUPPLEMENT" or application.supplement_request is None:
        return json_error(409, "not_awaiting_supplement", "no supplement was asked for")
    given = {m.get("code") for m in materials}
    absent = [c for c in application.supplement_request["materialCodes"] if c not in given]
    if absent:
        return json_error(422, "materials_missing", f"still missing: {absent}")
    application.supplements.append(key)
    application.supplement_request = None
    application.status = application.steps.pop(0) if application.steps else "ACCEPTED"
    if application.status == "DONE":
        application.result = _result_for(state, application)
    state.supplements_by_key[key] = application
    return web.json_response(application.as_json(), status=201)


async def get_application(request: web.Request) -> web.Response:
    state = request.app[STATE]
    application = state.applications.get(request.match_info["applicationId"])
    if application is None:
        return json_error(404, "not_found", "no such application")
    if application.steps and application.status != "SUPPLEMENT":  # waits for the material
        application.status = application.steps.pop(0)
        if application.status == "DONE":
            application.result = _result_for(state, application)
    return web.json_response(application.as_json())


async def find_application(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.match_info["key"]
    application = state.by_key.get(key) or state.supplements_by_key.get(key)
    if application is None:
        return web.json_response({"found": False})
    return web.json_response({"found": True, **application.as_json()})


def build_case_office_app(state: CaseOfficeState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), api_key_middleware])
    app[STATE] = state
    app.router.add_post("/api/applications", submit_application, name="submit_application")
    app.router.add_get("/api/applications/by-key/{key}", find_application, name="find_application")
    app.router.add_get("/api/applications/{applicationId}", get_application, name="get_application")
    app.router.add_post(
        "/api/applications/{applicationId}/supplements",
        supplement_application,
        name="supplement_application",
    )
    return app


def qinghai_office(
    api_key: str, proof_seal_keys: dict[str, bytes] | None = None
) -> CaseOfficeState:
    return CaseOfficeState(
        province="63",
        office_name="青海省示范一体化政务服务平台",
        api_key=api_key,
        proof_seal_keys=dict(proof_seal_keys or {}),
        supplement_rules={"disability-card": guardian_needed},
        progress={
            "hukou-move-in": ["ACCEPTED", "PROCESSING", "DONE"],
            "disability-card": ["ACCEPTED", "PROCESSING", "DONE"],
            # S2: the filing record is issued on submission (备案即时办结).
            "medical-filing": ["DONE"],
            # S8: each agency of the 企业开办 bundle decides on its next status query.
            "branch-registration": ["ACCEPTED", "DONE"],
            "seal-filing": ["ACCEPTED", "DONE"],
            "invoice-application": ["ACCEPTED", "DONE"],
            "si-registration": ["ACCEPTED", "DONE"],
            # S9: the housing-security office checks the proof's seal on submission, then decides.
            "public-rental-housing": ["ACCEPTED", "PROCESSING", "DONE"],
            # S12 出生一件事: each agency decides on its next status query.
            "newborn-registration": ["ACCEPTED", "DONE"],
            "newborn-medical-insurance": ["ACCEPTED", "DONE"],
            "newborn-social-security-card": ["ACCEPTED", "DONE"],
        },
    )


def gansu_office(api_key: str) -> CaseOfficeState:
    # Gansu confirms a move-out at once (its records are checked on submission).
    return CaseOfficeState(
        province="62",
        office_name="甘肃省示范一体化政务服务平台",
        api_key=api_key,
        progress={"hukou-move-out": ["DONE"]},
    )
