"""Demo social-insurance (社保) back-end: a hand-written SOAP 1.1 doc/literal server on aiohttp.

One WSDL (``config/wsdl/social-insurance.wsdl``) serves every province; each deployment is its
own application with its own data, credentials and address. It checks the WS-Security
UsernameToken, reads the ``CallContext`` header, deduplicates ``SubmitTransfer`` on its
``IdempotencyKey`` and answers errors as SOAP 1.1 Faults (``soap:Client`` / ``soap:Server``).
It never logs payloads.
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
from decimal import Decimal

from aiohttp import web
from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from gateway.demo.recording import (
    CONTEXT,
    OPERATION,
    SOAP_CONTEXT_ELEMENTS,
    Recorder,
    recording_middleware,
)
from gateway.demo.residents import (
    DUAN_HAORAN,
    HAN_XUEMEI,
    MA_WENHUA,
    ZHAO_YIMING,
    Resident,
    is_valid_resident_id,
    mask_id,
    mask_name,
)

NS = "urn:tongban:demo:si:v1"
CONTEXT_NS = "urn:tongban:context:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
ENDPOINT_PATH = "/ws/social-insurance"

TRANSFER_STATUS = {
    "01": "已受理 accepted",
    "02": "待转出地确认 awaiting the outflow province",
    "03": "已转入 completed",
}


class SoapFault(Exception):
    """Answered as a SOAP 1.1 Fault: ``soap:Client`` for the caller's mistakes, else Server."""

    def __init__(self, side: str, code: str, message: str) -> None:
        super().__init__(message)
        self.side = side
        self.code = code
        self.message = message


def _client_fault(code: str, message: str) -> SoapFault:
    return SoapFault("Client", code, message)


@dataclass(frozen=True, slots=True)
class ContributionYear:
    """One year of contributions (金额 in yuan)."""

    year: int
    months: int
    base: Decimal
    employer_name: str

    @property
    def employer_amount(self) -> Decimal:
        # Employer pension contribution rate 16 %, personal 8 % of the base, per month.
        return (self.base * Decimal("0.16") * self.months).quantize(Decimal("0.01"))

    @property
    def personal_amount(self) -> Decimal:
        return (self.base * Decimal("0.08") * self.months).quantize(Decimal("0.01"))


@dataclass(frozen=True, slots=True)
class Insured:
    """A person insured at this deployment, under the deployment's own insurance number."""

    resident: Resident
    insurance_number: str
    years: tuple[ContributionYear, ...]


@dataclass
class PensionTransfer:
    """A transfer application (转移接续申请) accepted by the inflow province."""

    accept_no: str
    idempotency_key: str
    fingerprint: str
    insurance_number: str
    status: str
    accepted_at: str
    updated_at: str


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SocialInsuranceState:
    """One provincial deployment: its data, its gateway credentials, what it received."""

    province: str
    centre_name: str
    username: str
    password: str
    seal_key: bytes
    insured: Mapping[str, Insured]
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = _now
    transfers: dict[str, PensionTransfer] = field(default_factory=dict)
    transfers_by_key: dict[str, PensionTransfer] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def advance_transfer(self, accept_no: str, status: str) -> None:
        """Move a transfer on (the demo's stand-in for the case officers' work)."""
        if status not in TRANSFER_STATUS:
            raise ValueError(f"unknown status {status!r}")
        transfer = self.transfers[accept_no]
        transfer.status = status
        transfer.updated_at = self.clock().isoformat(timespec="seconds")


# --- demo data ---------------------------------------------------------------------------------

_XIAN_EMPLOYER = "西安秦川示例电子有限公司"
_BAOJI_EMPLOYER = "宝鸡渭水示例机械厂"
_XINING_EMPLOYER = "西宁湟水示例物流有限公司"


def _years(
    first: int, last: int, base: int, step: int, employer: str
) -> tuple[ContributionYear, ...]:
    return tuple(
        ContributionYear(year, 12, Decimal(base + step * (year - first)), employer)
        for year in range(first, last + 1)
    )


def shaanxi_insured() -> dict[str, Insured]:
    """Shaanxi (61) deployment: people who worked in Shaanxi (the outflow side of S1)."""
    people = (
        Insured(
            MA_WENHUA,
            "6101002010000123",
            _years(2010, 2016, 3200, 250, _BAOJI_EMPLOYER)
            + _years(2017, 2022, 5100, 300, _XIAN_EMPLOYER)
            + (ContributionYear(2023, 3, Decimal(6900), _XIAN_EMPLOYER),),
        ),
        Insured(ZHAO_YIMING, "6104002015000456", _years(2015, 2024, 4100, 220, _XIAN_EMPLOYER)),
        Insured(HAN_XUEMEI, "6101002013000789", _years(2013, 2019, 4500, 260, _XIAN_EMPLOYER)),
    )
    return {p.resident.id_number: p for p in people}


def qinghai_insured() -> dict[str, Insured]:
    """Qinghai (63) deployment: people insured in Qinghai now (the inflow side of S1)."""
    people = (
        Insured(
            MA_WENHUA,
            "6301002023004567",
            (
                ContributionYear(2023, 9, Decimal(6200), _XINING_EMPLOYER),
                ContributionYear(2024, 12, Decimal(6500), _XINING_EMPLOYER),
            ),
        ),
        Insured(HAN_XUEMEI, "6301002020001122", _years(2020, 2024, 5200, 200, _XINING_EMPLOYER)),
        Insured(DUAN_HAORAN, "6321001999000777", _years(1999, 2024, 1800, 180, _XINING_EMPLOYER)),
    )
    return {p.resident.id_number: p for p in people}


# --- SOAP plumbing -----------------------------------------------------------------------------

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
)


def _q(name: str, ns: str = NS) -> str:
    return f"{{{ns}}}{name}"


def _localname(element: etree._Element) -> str:
    return str(etree.QName(element).localname)


def _fields(element: etree._Element) -> dict[str, str]:
    """Children of an operation element by local name (text stripped)."""
    return {
        _localname(child): (child.text or "").strip()
        for child in element
        if isinstance(child.tag, str)
    }


def _required(fields: Mapping[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise _client_fault("INVALID_REQUEST", f"missing elements: {', '.join(missing)}")
    return [fields[n] for n in names]


def _envelope(body_child: etree._Element) -> bytes:
    env = etree.Element(_q("Envelope", SOAP_ENV), nsmap={"soap": SOAP_ENV, "si": NS})
    body = etree.SubElement(env, _q("Body", SOAP_ENV))
    body.append(body_child)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def _element(name: str, values: Mapping[str, object]) -> etree._Element:
    element = etree.Element(_q(name), nsmap={"si": NS})
    _fill(element, values)
    return element


def _fill(parent: etree._Element, values: Mapping[str, object]) -> None:
    for name, value in values.items():
        if isinstance(value, Mapping):
            _fill(etree.SubElement(parent, _q(name)), value)
        elif isinstance(value, list):
            for item in value:
                _fill(etree.SubElement(parent, _q(name)), item)
        else:
            etree.SubElement(parent, _q(name)).text = str(value)


def fault_response(fault: SoapFault) -> web.Response:
    """SOAP 1.1 Fault, HTTP 500 as the SOAP 1.1 HTTP binding asks."""
    element = etree.Element(_q("Fault", SOAP_ENV))
    etree.SubElement(element, "faultcode").text = f"soap:{fault.side}"
    etree.SubElement(element, "faultstring").text = fault.message
    detail = etree.SubElement(element, "detail")
    detail.append(_element("ServiceFault", {"code": fault.code, "message": fault.message}))
    return web.Response(
        status=500, body=_envelope(element), content_type="text/xml", charset="utf-8"
    )


def _check_username_token(header: etree._Element | None, state: SocialInsuranceState) -> None:
    path = f"{_q('Security', WSSE)}/{_q('UsernameToken', WSSE)}"
    token = None if header is None else header.find(path)
    if token is None:
        raise _client_fault("AUTHENTICATION_FAILED", "WS-Security UsernameToken required")
    username = (token.findtext(_q("Username", WSSE)) or "").strip()
    password_el = token.find(_q("Password", WSSE))
    password = "" if password_el is None else (password_el.text or "")
    password_type = "" if password_el is None else password_el.get("Type", PASSWORD_TEXT)
    ok_user = hmac.compare_digest(username.encode(), state.username.encode())
    ok_password = hmac.compare_digest(password.encode(), state.password.encode())
    if password_type != PASSWORD_TEXT or not (ok_user and ok_password):
        raise _client_fault("AUTHENTICATION_FAILED", "authentication failed")


def _call_context(header: etree._Element | None) -> dict[str, str]:
    element = None if header is None else header.find(_q("CallContext", CONTEXT_NS))
    if element is None:
        return {}
    found = _fields(element)
    return {
        SOAP_CONTEXT_ELEMENTS[name]: value
        for name, value in found.items()
        if name in SOAP_CONTEXT_ELEMENTS and value
    }


# --- operations --------------------------------------------------------------------------------


def _find_insured(state: SocialInsuranceState, fields: Mapping[str, str]) -> Insured:
    id_number, name, insurance_number = _required(fields, "aac002", "aac003", "aac001")
    if not is_valid_resident_id(id_number):
        raise _client_fault("INVALID_REQUEST", "aac002 is not a valid resident ID number")
    insured = state.insured.get(id_number)
    if (
        insured is None
        or insured.resident.name != name
        or insured.insurance_number != insurance_number
    ):
        raise _client_fault("PERSON_NOT_FOUND", "no insured person matches aac002/aac003/aac001")
    return insured


def _certificate(state: SocialInsuranceState, insured: Insured, issued_at: str) -> dict[str, str]:
    """A 参保缴费凭证 document with a demo e-seal (HMAC-SHA256 standing in for an SM2 seal)."""
    serial = hashlib.sha256((insured.insurance_number + issued_at).encode()).hexdigest()
    number = f"{state.province}SIC{serial[:12].upper()}"
    document = {
        "type": "参保缴费凭证 pension contribution certificate",
        "certificateNo": number,
        "centre": state.centre_name,
        "insuranceNumber": insured.insurance_number,
        "holder": mask_name(insured.resident.name),
        "idNumber": mask_id(insured.resident.id_number),
        "periods": [
            {"year": y.year, "months": y.months, "base": str(y.base)} for y in insured.years
        ],
        "totalMonths": sum(y.months for y in insured.years),
        "issuedAt": issued_at,
    }
    content = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
    digest = hashlib.sha256(content).hexdigest()
    seal = hmac.new(state.seal_key, digest.encode(), hashlib.sha256).digest()
    return {
        "certificateNo": number,
        "mediaType": "application/json",
        "content": base64.b64encode(content).decode(),
        "sealDigest": f"sha256:{digest}",
        "sealValue": base64.b64encode(seal).decode(),
        "sealedBy": f"{state.centre_name} 电子印章",
        "issuedAt": issued_at,
    }


def get_contribution_history(
    state: SocialInsuranceState, fields: Mapping[str, str], context: Mapping[str, str]
) -> etree._Element:
    insured = _find_insured(state, fields)
    issued_at = state.clock().isoformat(timespec="seconds")
    return _element(
        "GetContributionHistoryResponse",
        {
            "aac001": insured.insurance_number,
            "aac003": mask_name(insured.resident.name),
            "centreName": state.centre_name,
            "totalMonths": sum(y.months for y in insured.years),
            "record": [
                {
                    "year": y.year,
                    "months": y.months,
                    "base": f"{y.base:.2f}",
                    "employer_amount": f"{y.employer_amount:.2f}",
                    "personal_amount": f"{y.personal_amount:.2f}",
                    "employer_name": y.employer_name,
                }
                for y in insured.years
            ],
            "certificate": _certificate(state, insured, issued_at),
        },
    )


def _transfer_answer(name: str, transfer: PensionTransfer, *, updated: bool) -> etree._Element:
    values = {
        "acceptNo": transfer.accept_no,
        "status": transfer.status,
        "statusText": TRANSFER_STATUS[transfer.status],
        "acceptedAt": transfer.accepted_at,
    }
    if updated:
        values["updatedAt"] = transfer.updated_at
    return _element(name, values)


def submit_transfer(
    state: SocialInsuranceState, fields: Mapping[str, str], context: Mapping[str, str]
) -> etree._Element:
    key = context.get("idempotency_key")
    if not key:
        raise _client_fault("IDEMPOTENCY_KEY_REQUIRED", "CallContext/IdempotencyKey is required")
    insured = _find_insured(state, fields)
    out_province, certificate_no = _required(fields, "outProvince", "certificateNo")
    if out_province == state.province:
        raise _client_fault("INVALID_REQUEST", "outProvince must differ from this province")
    fingerprint = hashlib.sha256(
        json.dumps(
            [insured.insurance_number, out_province, certificate_no, fields.get("contactPhone")]
        ).encode()
    ).hexdigest()
    existing = state.transfers_by_key.get(key)
    if existing is not None:
        if existing.fingerprint != fingerprint:
            raise _client_fault(
                "IDEMPOTENCY_KEY_REUSED", "this IdempotencyKey was used for another application"
            )
        return _transfer_answer("SubmitTransferResponse", existing, updated=False)
    now = state.clock()
    stamp = now.isoformat(timespec="seconds")
    accept_no = f"{state.province}SI{now:%Y%m%d}{next(state._numbers):06d}"
    transfer = PensionTransfer(
        accept_no, key, fingerprint, insured.insurance_number, "01", stamp, stamp
    )
    state.transfers[accept_no] = transfer
    state.transfers_by_key[key] = transfer
    return _transfer_answer("SubmitTransferResponse", transfer, updated=False)


def get_transfer_status(
    state: SocialInsuranceState, fields: Mapping[str, str], context: Mapping[str, str]
) -> etree._Element:
    (accept_no,) = _required(fields, "acceptNo")
    transfer = state.transfers.get(accept_no)
    if transfer is None:
        raise _client_fault("TRANSFER_NOT_FOUND", "no transfer with this acceptNo")
    return _transfer_answer("GetTransferStatusResponse", transfer, updated=True)


_Operation = Callable[[SocialInsuranceState, Mapping[str, str], Mapping[str, str]], etree._Element]
OPERATIONS: Mapping[str, _Operation] = {
    "GetContributionHistory": get_contribution_history,
    "SubmitTransfer": submit_transfer,
    "GetTransferStatus": get_transfer_status,
}


# --- the application ---------------------------------------------------------------------------

STATE = web.AppKey("social_insurance_state", SocialInsuranceState)
WSDL = web.AppKey("social_insurance_wsdl", bytes)


def _wsdl_for(template: bytes, address: str) -> bytes:
    root = etree.fromstring(template, _PARSER)
    for element in root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address"):
        element.set("location", address)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


async def wsdl_handler(request: web.Request) -> web.Response:
    if not any(k.lower() == "wsdl" for k in request.query):
        raise web.HTTPMethodNotAllowed("GET", ["POST"])
    request[OPERATION] = "wsdl"
    address = str(request.url.with_query(None))
    body = _wsdl_for(request.app[WSDL], address)
    return web.Response(body=body, content_type="text/xml", charset="utf-8")


async def soap_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        return await _dispatch(request, state)
    except SoapFault as fault:
        return fault_response(fault)
    except Exception:
        return fault_response(SoapFault("Server", "INTERNAL_ERROR", "internal error"))


async def _dispatch(request: web.Request, state: SocialInsuranceState) -> web.Response:
    raw = await request.read()
    try:
        envelope = etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError:
        raise _client_fault("MALFORMED_REQUEST", "the request is not well-formed XML") from None
    if envelope.tag != _q("Envelope", SOAP_ENV):
        raise _client_fault("MALFORMED_REQUEST", "not a SOAP 1.1 envelope")
    header = envelope.find(_q("Header", SOAP_ENV))
    body = envelope.find(_q("Body", SOAP_ENV))
    operation_element = None
    if body is not None:
        operation_element = next((c for c in body if isinstance(c.tag, str)), None)
    if operation_element is None:
        raise _client_fault("MALFORMED_REQUEST", "empty SOAP body")
    name = _localname(operation_element)
    request[OPERATION] = name
    context = _call_context(header)
    request[CONTEXT] = context
    _check_username_token(header, state)
    operation = OPERATIONS.get(name)
    if operation is None or etree.QName(operation_element).namespace != NS:
        raise _client_fault("UNKNOWN_OPERATION", "unknown operation")
    answer = operation(state, _fields(operation_element), context)
    return web.Response(body=_envelope(answer), content_type="text/xml", charset="utf-8")


def build_social_insurance_app(state: SocialInsuranceState, wsdl: bytes) -> web.Application:
    """The SOAP endpoint (POST) and its WSDL (GET ?wsdl) at ``ENDPOINT_PATH``."""
    app = web.Application(middlewares=[recording_middleware(state.recorder)])
    app[STATE] = state
    app[WSDL] = wsdl
    app.router.add_post(ENDPOINT_PATH, soap_handler)
    app.router.add_get(ENDPOINT_PATH, wsdl_handler)
    return app
