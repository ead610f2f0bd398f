"""Demo provincial e-licence systems (电子证照系统): they issue, seal and verify licences.

One app per issuing province, REST JSON with an API key, the interface an issuer exposes to the
gateway (docs/licences.md):

    POST /api/licences/search                 {licenceType, holder: {idType, idNumber} |
                                              {creditCode}} → {"licences": [{number, status}]}
    GET  /api/licences/{licenceType}/{number} {"licence": {...}, "seal": {kid, alg, value}}
    POST /api/licences/verify                 {licenceType, number, dataDigest} → {"status"}:
                                              valid, changed (the data digest is not the
                                              current one), expired, revoked, cancelled
    POST /api/disputes                        异议复核: a holder disputes a licence's data
                                              (Idempotency-Key; 201 new, 200 the same again)
    GET  /api/disputes/{disputeId}            its progress: RECEIVED → REVIEWING → DECIDED
                                              (one step per query: the demo's reviewers),
                                              with the decision and the deadline (15 days)
    POST /api/marriages                       S5 (Qinghai): register a marriage once both
                                              parties' marital status came back unmarried,
                                              issuing a sealed e-marriage certificate to each
                                              (Idempotency-Key; the same again, the same answer)

Shaanxi (61) issues birth medical certificates (出生医学证明, S12) and business licences (S8's
parent company); Qinghai (63) issues real-estate certificates. Each seals with its electronic
seal: ECDSA P-256 over the licence's canonical JSON (gateway/licences/seal.py). Shaanxi has
rotated its seal key: older licences carry the retired key's seal, which still verifies.

The demo keys are derived from fixed labels, so the gateway's configuration can carry the
matching public keys (config/licences.yaml); they seal nothing but this demo. ``tamper`` alters
a stored licence without resealing it (a record edited behind the seal's back). It never logs
payloads.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.demo.api_key import json_error, require_api_key
from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, ZHAO_YIMING, Resident
from gateway.licences.seal import SealedLicence, public_pem, seal_licence

STATUSES = ("valid", "changed", "expired", "revoked", "cancelled")

# S8's parent company (西安秦川示例电子有限公司), registered in Shaanxi.
PARENT_CREDIT_CODE = "91610113MA6TXXXX0Q"


def demo_seal_key(label: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key derived from a fixed label: the demo's issuers only (never a real seal)."""
    seed = int.from_bytes(hashlib.sha256(f"tongban demo seal {label}".encode()).digest(), "big")
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(seed % (order - 1) + 1, ec.SECP256R1())


DEMO_SEAL_KIDS = ("sx-seal-2025", "sx-seal-2026", "qh-seal-2026")


def demo_public_keys() -> dict[str, str]:
    """kid → the public key PEM the gateway is configured with (config/licences.yaml)."""
    return {kid: public_pem(demo_seal_key(kid)) for kid in DEMO_SEAL_KIDS}


@dataclass
class StoredLicence:
    sealed: SealedLicence
    status: str = "valid"

    @property
    def number(self) -> str:
        return str(self.sealed.data["number"])


@dataclass
class Dispute:
    """异议复核 of one licence's data: the reviewers decide on the issuer's records."""

    dispute_id: str
    key: str
    licence_type: str
    number: str
    field_name: str
    status: str
    received_at: str
    deadline: str
    steps: list[str]
    decision: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "disputeId": self.dispute_id,
            "status": self.status,
            "receivedAt": self.received_at,
            "deadline": self.deadline,
            "decision": self.decision,
        }


@dataclass
class LicenceSystemState:
    province: str
    name: str
    api_key: str
    current_kid: str
    licences: dict[tuple[str, str], StoredLicence] = field(default_factory=dict)
    recorder: Recorder = field(default_factory=Recorder)
    garbled: bool = False
    """Answer verifications with a status no issuer uses (a malformed answer)."""
    disputes: dict[str, Dispute] = field(default_factory=dict)
    disputes_by_key: dict[str, Dispute] = field(default_factory=dict)
    marriages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Idempotency key → the answer of a marriage registration (S5)."""
    _dispute_numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def issue(
        self,
        licence_type: str,
        number: str,
        holder: Mapping[str, str],
        fields: Mapping[str, Any],
        *,
        issued_at: str,
        valid_until: str | None = None,
        kid: str | None = None,
        status: str = "valid",
    ) -> StoredLicence:
        data = {
            "type": licence_type,
            "number": number,
            "issuer": self.province,
            "issuerName": self.name,
            "holder": dict(holder),
            "fields": dict(fields),
            "issuedAt": issued_at,
            "validUntil": valid_until,
        }
        key_id = kid or self.current_kid
        stored = StoredLicence(seal_licence(data, demo_seal_key(key_id), key_id), status)
        self.licences[(licence_type, number)] = stored
        return stored

    def tamper(self, licence_type: str, number: str, **fields: Any) -> None:
        """Edit a stored licence's fields without resealing it."""
        stored = self.licences[(licence_type, number)]
        data = dict(stored.sealed.data)
        data["fields"] = {**data["fields"], **fields}
        stored.sealed = SealedLicence(
            data, stored.sealed.kid, stored.sealed.alg, stored.sealed.value
        )

    def set_status(self, licence_type: str, number: str, status: str) -> None:
        self.licences[(licence_type, number)].status = status


STATE = web.AppKey("licence_system_state", LicenceSystemState)


def signed_notice(
    secret: str, body: Mapping[str, Any], now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """A status-change notice as an issuer pushes it to the gateway: the body and the headers
    (``POST /api/v1/callbacks/licences/{province}``; signed like a case callback)."""
    raw = json.dumps(body, ensure_ascii=False).encode()
    timestamp = str(int(now if now is not None else time.time()))
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Tongban-Timestamp": timestamp,
        "X-Tongban-Signature": f"sha256={mac}",
    }
    return raw, headers


api_key_middleware = require_api_key(lambda app: app[STATE].api_key)


def _holds(stored: StoredLicence, holder: Mapping[str, Any]) -> bool:
    mine = stored.sealed.data["holder"]
    if "creditCode" in holder:
        return bool(mine.get("creditCode") == holder["creditCode"])
    return bool(
        mine.get("idType") == holder.get("idType")
        and mine.get("idNumber") == holder.get("idNumber")
    )


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def search(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _body(request)
    if body is None or not isinstance(body.get("holder"), dict):
        return json_error(400, "invalid_request", "licenceType and holder are required")
    found = [
        {"number": stored.number, "status": stored.status}
        for (kind, _n), stored in sorted(state.licences.items())
        if kind == body.get("licenceType") and _holds(stored, body["holder"])
    ]
    return web.json_response({"licences": found})


async def fetch(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = (request.match_info["licenceType"], request.match_info["number"])
    stored = state.licences.get(key)
    if stored is None:
        return json_error(404, "not_found", "no such licence")
    return web.json_response(stored.sealed.as_answer())


async def verify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _body(request)
    if body is None:
        return json_error(400, "invalid_request", "licenceType, number and dataDigest are required")
    stored = state.licences.get((str(body.get("licenceType")), str(body.get("number"))))
    if stored is None:
        return json_error(404, "not_found", "no such licence")
    status = stored.status
    if state.garbled:
        return web.json_response({"status": "perhaps", "number": stored.number})
    if status == "valid" and body.get("dataDigest") != _issued_digest(stored):
        status = "changed"
    return web.json_response({"status": status, "number": stored.number})


async def file_dispute(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    body = await _body(request)
    if not key or body is None:
        return json_error(400, "invalid_request", "an Idempotency-Key and a JSON body are required")
    existing = state.disputes_by_key.get(key)
    if existing is not None:
        return web.json_response(existing.as_json(), status=200)
    stored = state.licences.get((str(body.get("licenceType")), str(body.get("number"))))
    if stored is None:
        return json_error(404, "not_found", "no such licence")
    field_name = str(body.get("field") or "")
    if field_name not in stored.sealed.data["fields"]:
        return json_error(422, "invalid_request", "field is not a field of the licence")
    now = datetime.now(UTC)
    dispute = Dispute(
        dispute_id=f"{state.province}YY{now:%Y%m%d}{next(state._dispute_numbers):06d}",
        key=key,
        licence_type=stored.sealed.data["type"],
        number=stored.number,
        field_name=field_name,
        status="RECEIVED",
        received_at=now.isoformat(timespec="seconds"),
        deadline=(now + timedelta(days=15)).date().isoformat(),
        steps=["REVIEWING", "DECIDED"],
    )
    state.disputes[dispute.dispute_id] = dispute
    state.disputes_by_key[key] = dispute
    return web.json_response(dispute.as_json(), status=201)


async def get_dispute(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dispute = state.disputes.get(request.match_info["disputeId"])
    if dispute is None:
        return json_error(404, "not_found", "no such dispute")
    if dispute.steps:
        dispute.status = dispute.steps.pop(0)
        if dispute.status == "DECIDED":
            # The demo's reviewers find the record right and keep it (维持).
            dispute.decision = {
                "outcome": "upheld",
                "answer": f"经复核，{dispute.field_name} 与签发记录一致，维持原证照信息。",
            }
    return web.json_response(dispute.as_json())


async def register_marriage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    body = await _body(request)
    if not key or body is None:
        return json_error(400, "invalid_request", "an Idempotency-Key and a JSON body are required")
    done = state.marriages.get(key)
    if done is not None:
        return web.json_response(done)
    parties = [body.get("partyA"), body.get("partyB")]
    if not all(isinstance(p, dict) and p.get("idNumber") and p.get("name") for p in parties):
        return json_error(400, "invalid_request", "partyA and partyB with idNumber and name")
    a, b = (dict(p) for p in parties if isinstance(p, dict))
    if any(p.get("maritalStatus") != "unmarried" for p in (a, b)):
        # 不予登记: a party the household register holds as married (or unknown).
        answer: dict[str, Any] = {"status": "REFUSED", "reason": "当事人婚姻状况不符合登记条件"}
    else:
        today = datetime.now(UTC).date().isoformat()
        numbers = []
        for holder, spouse in ((a, b), (b, a)):
            number = f"J{state.province}{today.replace('-', '')}{next(state._dispute_numbers):05d}"
            state.issue(
                "marriage-certificate",
                number,
                {"idType": "111", "idNumber": holder["idNumber"], "name": holder["name"]},
                {
                    "spouse_name": spouse["name"],
                    "registered_on": today,
                    "registry": str(body.get("registry") or state.name),
                },
                issued_at=today,
            )
            numbers.append(number)
        answer = {"status": "DONE", "certificates": numbers}
    state.marriages[key] = answer
    return web.json_response(answer, status=201)


def _issued_digest(stored: StoredLicence) -> str:
    # What the issuer holds as current: the data as stored (a tampered record included).
    return stored.sealed.data_digest


def build_licence_system_app(state: LicenceSystemState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), api_key_middleware])
    app[STATE] = state
    app.router.add_post("/api/licences/search", search, name="search_licences")
    app.router.add_get("/api/licences/{licenceType}/{number}", fetch, name="get_licence")
    app.router.add_post("/api/licences/verify", verify, name="verify_licence")
    app.router.add_post("/api/disputes", file_dispute, name="file_dispute")
    app.router.add_get("/api/disputes/{disputeId}", get_dispute, name="get_dispute")
    app.router.add_post("/api/marriages", register_marriage, name="register_marriage")
    return app


def _person(resident: Resident) -> dict[str, str]:
    return {"idType": "111", "idNumber": resident.id_number, "name": resident.name}


# Birth medical certificates of the demo (出生医学证明): numbers are a letter and nine digits.
BIRTH_CERTIFICATE = "S610000102"
"""马文华's newborn (S12), valid."""
BIRTH_CERTIFICATE_REVOKED = "S610000101"
"""The same birth's first certificate, revoked when it was reissued (换发)."""
BIRTH_CERTIFICATE_OTHER = "S610000150"
"""Another family's (赵一鸣's) newborn."""
BIRTH_CERTIFICATE_ALTERED = "S610000199"
"""A record edited after it was sealed: its seal no longer holds."""
BUSINESS_LICENCE = PARENT_CREDIT_CODE
"""S8's parent company's business licence (numbered by its credit code)."""
PROPERTY_CERTIFICATE = "青(2026)西宁市不动产权第0020001号"
DRIVING_LICENCE = "610300112233"
"""马文华's e-driving licence (S7), numbered by its file number (档案编号)."""


def _birth(
    newborn: str, gender: str, date: str, mother: Resident, father: Resident
) -> dict[str, Any]:
    return {
        "newborn_name": newborn,
        "newborn_gender": gender,
        "birth_date": date,
        "birth_place": "陕西省西安市",
        "institution": "西安市示范妇幼保健院",
        "mother_name": mother.name,
        "father_name": father.name,
    }


def shaanxi_licence_system(api_key: str) -> LicenceSystemState:
    state = LicenceSystemState(
        "61", "陕西省电子证照系统（演示）", api_key, current_kid="sx-seal-2026"
    )
    family = _birth("马小禾", "female", "2026-11-20", HAN_XUEMEI, MA_WENHUA)
    state.issue(
        "birth-medical-certificate",
        BIRTH_CERTIFICATE_REVOKED,
        _person(MA_WENHUA),
        family,
        issued_at="2026-11-21",
        status="revoked",
    )
    state.issue(
        "birth-medical-certificate",
        BIRTH_CERTIFICATE,
        _person(MA_WENHUA),
        family,
        issued_at="2026-11-28",
    )
    state.issue(
        "birth-medical-certificate",
        BIRTH_CERTIFICATE_OTHER,
        _person(ZHAO_YIMING),
        _birth("赵安然", "male", "2026-10-03", HAN_XUEMEI, ZHAO_YIMING),
        issued_at="2026-10-05",
    )
    state.issue(
        "birth-medical-certificate",
        BIRTH_CERTIFICATE_ALTERED,
        _person(ZHAO_YIMING),
        _birth("赵安宁", "female", "2026-09-12", HAN_XUEMEI, ZHAO_YIMING),
        issued_at="2026-09-14",
    )
    state.tamper("birth-medical-certificate", BIRTH_CERTIFICATE_ALTERED, birth_date="2026-08-12")
    # S7: an e-driving licence, shown by its holder (from Qinghai) and checked in Shaanxi.
    state.issue(
        "driving-licence",
        DRIVING_LICENCE,
        _person(MA_WENHUA),
        {
            "driving_class": "A2",
            "valid_until": "2028-04-18",
            "file_number": "610300112233",
            "address": "陕西省宝鸡市渭滨区示范路2号",
        },
        issued_at="2022-04-18",
        valid_until="2028-04-18",
    )
    state.issue(
        "business-licence",
        BUSINESS_LICENCE,
        {"creditCode": PARENT_CREDIT_CODE, "name": "西安秦川示例电子有限公司"},
        {
            "enterprise_name": "西安秦川示例电子有限公司",
            "legal_representative": MA_WENHUA.name,
            "registered_capital_yuan": 5_000_000,
            "address": "陕西省西安市雁塔区示范路8号",
            "established": "2019-04-16",
        },
        issued_at="2025-06-30",
        kid="sx-seal-2025",  # sealed before the key was rotated
    )
    return state


def qinghai_licence_system(api_key: str) -> LicenceSystemState:
    state = LicenceSystemState(
        "63", "青海省电子证照系统（演示）", api_key, current_kid="qh-seal-2026"
    )
    state.issue(
        "real-estate-certificate",
        PROPERTY_CERTIFICATE,
        _person(HAN_XUEMEI),
        {
            "location": "西宁市城西区五四大街9号1-2-601",
            "area_m2": 96,
            "use": "住宅",
            "right_type": "国有建设用地使用权/房屋所有权",
        },
        issued_at="2026-03-02",
    )
    return state
