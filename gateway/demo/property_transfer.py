"""Demo systems of S13, 二手房转移登记及水电气联动过户: a home in Xining changes hands.

Five systems, each its own real loopback server, the way a city's agencies run them:

    xining-housing    住建局 网签备案      POST /api/contract-filings              → filingNumber
    xining-tax        税务局 契税          POST /api/deed-taxes                    → taxVoucherNo
    xining-registry   不动产登记中心        POST /api/transfer-registrations       → titleNumber
    xining-utilities  水电气联动过户平台    POST /api/{electricity|water|gas}-transfers → transferNo
    shaanxi-civil     陕西 户籍与婚姻登记核验 POST /api/checks/household-marital    (a check)

Every submission is deduplicated on its Idempotency-Key (201 new, 200 the same again, 422 the
key with another body), can be looked up by key (``GET /api/{kind}/by-key/{key}``) and undone
(``POST /api/{kind}/{number}/cancellations``, deduplicated on its own key). The registry refuses
(不予受理, 422 ``property_seized``) a home under a court seizure (查封); the other systems check
what they are given: the tax office a filing number, the registry a tax voucher, the utilities a
title number. Personal data is checked, never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, RESIDENTS, is_valid_resident_id

API_KEY_HEADER: Final = "X-API-Key"
SEIZED_UNITS: Final = frozenset({"西宁市城中区南大街18号2-1-302"})
"""Homes under a court seizure (查封): their transfer is refused at registration."""
MARRIED: Final = frozenset({MA_WENHUA.id_number})
"""Who the Shaanxi marriage register holds as married (the rest: unmarried)."""

Answer = Callable[[str, dict[str, Any]], dict[str, Any] | web.Response]
"""(the new number, the body) → the answer's fields, or a refusal."""


def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


def _missing(body: Mapping[str, Any], *names: str) -> web.Response | None:
    absent = [n for n in names if not isinstance(body.get(n), str) or not body[n]]
    if absent:
        return _error(400, "invalid_request", f"required: {absent}")
    return None


REFERENCES: Final = ("filingNumber", "taxVoucherNo", "titleNumber", "buyerMaritalStatus")
"""What a record keeps of its request: the other agencies' numbers it rests on, no person."""


@dataclass
class Record:
    number: str
    fingerprint: str
    answer: dict[str, Any]
    refs: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False


@dataclass
class AgencyState:
    """One agency: its kinds of submission, each with its number prefix and its rule."""

    name: str
    api_key: str
    kinds: Mapping[str, tuple[str, Answer]]
    """kind (URL segment) → (number prefix, answer)."""
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    by_key: dict[str, Record] = field(default_factory=dict)
    by_number: dict[str, Record] = field(default_factory=dict)
    cancellations: dict[str, Record] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


STATE = web.AppKey("agency_state", AgencyState)


@web.middleware
async def _api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(API_KEY_HEADER, "").encode()
    if not hmac.compare_digest(given, request.app[STATE].api_key.encode()):
        return _error(401, "unauthorized", "missing or wrong API key")
    return await handler(request)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return _error(400, "invalid_json", "body is not JSON")
    return body if isinstance(body, dict) else _error(400, "invalid_json", "expected an object")


async def submit(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kind = request.match_info["kind"]
    if kind not in state.kinds:
        return _error(404, "not_found", f"no such service {kind!r}")
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return _error(400, "idempotency_key_required", "send an Idempotency-Key header")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    existing = state.by_key.get(key)
    if existing is not None:
        if existing.fingerprint != fingerprint:
            return _error(422, "idempotency_key_reused", "key used for another submission")
        return web.json_response(existing.answer, status=200)
    prefix, answer = state.kinds[kind]
    number = f"{prefix}{state.clock():%Y%m%d}{next(state._numbers):05d}"
    fields_ = answer(number, body)
    if isinstance(fields_, web.Response):
        return fields_
    refs: dict[str, Any] = {k: body[k] for k in REFERENCES if k in body}
    record = Record(number, fingerprint, {"status": "DONE", **fields_}, refs)
    state.by_key[key] = record
    state.by_number[number] = record
    return web.json_response(record.answer, status=201)


async def cancel(request: web.Request) -> web.Response:
    """Undo a submission (撤销), once per Idempotency-Key."""
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return _error(400, "idempotency_key_required", "send an Idempotency-Key header")
    record = state.by_number.get(request.match_info["number"])
    if record is None:
        return _error(404, "not_found", "no such submission")
    done = state.cancellations.get(key)
    if done is not None and done is not record:
        return _error(422, "idempotency_key_reused", "key used for another cancellation")
    record.cancelled = True
    record.answer = {**record.answer, "status": "CANCELLED"}
    state.cancellations[key] = record
    return web.json_response({"number": record.number, "status": "CANCELLED"})


async def find(request: web.Request) -> web.Response:
    record = request.app[STATE].by_key.get(request.match_info["key"])
    if record is None:
        return web.json_response({"found": False})
    return web.json_response({"found": True, **record.answer})


def build_agency_app(state: AgencyState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), _api_key])
    app[STATE] = state
    app.router.add_post("/api/{kind}", submit)
    app.router.add_get("/api/{kind}/by-key/{key}", find)
    app.router.add_post("/api/{kind}/{number}/cancellations", cancel)
    return app


# --- the agencies' rules -----------------------------------------------------------------------


def _contract_filing(number: str, body: dict[str, Any]) -> dict[str, Any] | web.Response:
    refused = _missing(
        body, "sellerIdNo", "sellerName", "buyerIdNo", "buyerName", "unit", "certificateNo"
    )
    if refused is not None:
        return refused
    if not all(is_valid_resident_id(body[k]) for k in ("sellerIdNo", "buyerIdNo")):
        return _error(400, "invalid_request", "an ID number fails its check character")
    return {"filingNumber": number, "unit": body["unit"]}


def _deed_tax(number: str, body: dict[str, Any]) -> dict[str, Any] | web.Response:
    refused = _missing(body, "filingNumber", "buyerIdNo")
    if refused is not None:
        return refused
    if not body["filingNumber"].startswith("XNWQ"):
        return _error(422, "filing_unknown", "no such contract filing")
    price = body.get("price")
    if not isinstance(price, int | float) or price <= 0:
        return _error(400, "invalid_request", "price must be a positive number")
    return {"taxVoucherNo": number, "amount": round(float(price) * 0.015, 2)}


def _registration(number: str, body: dict[str, Any]) -> dict[str, Any] | web.Response:
    refused = _missing(body, "filingNumber", "taxVoucherNo", "buyerIdNo", "unit")
    if refused is not None:
        return refused
    if body["unit"] in SEIZED_UNITS:
        return _error(422, "property_seized", "不予受理: the home is under a court seizure (查封)")
    if not body["taxVoucherNo"].startswith("XNQS"):
        return _error(422, "tax_unpaid", "no deed-tax voucher")
    sequence = number[-5:]
    return {"titleNumber": f"青(2026)西宁市不动产权第00{sequence}号", "registeredAt": number[4:12]}


def _utility(kind: str) -> Answer:
    def transfer(number: str, body: dict[str, Any]) -> dict[str, Any] | web.Response:
        refused = _missing(body, "titleNumber", "accountNo", "newHolderName")
        if refused is not None:
            return refused
        if not body["titleNumber"].startswith("青("):
            return _error(422, "title_unknown", "no such property title")
        return {"transferNo": number, "accountNo": body["accountNo"], "utility": kind}

    return transfer


def xining_housing(api_key: str) -> AgencyState:
    return AgencyState(
        "西宁市住房和城乡建设局 网签备案", api_key, {"contract-filings": ("XNWQ", _contract_filing)}
    )


def xining_tax(api_key: str) -> AgencyState:
    return AgencyState(
        "国家税务总局西宁市税务局 契税", api_key, {"deed-taxes": ("XNQS", _deed_tax)}
    )


def xining_registry(api_key: str) -> AgencyState:
    return AgencyState(
        "西宁市不动产登记中心", api_key, {"transfer-registrations": ("XNDJ", _registration)}
    )


def xining_utilities(api_key: str) -> AgencyState:
    kinds = {
        f"{kind}-transfers": (prefix, _utility(kind))
        for kind, prefix in (("electricity", "XNDL"), ("water", "XNSW"), ("gas", "XNRQ"))
    }
    return AgencyState("西宁市水电气联动过户平台", api_key, kinds)


# --- Shaanxi's household and marriage check ----------------------------------------------------


@dataclass
class CivilState:
    api_key: str
    recorder: Recorder = field(default_factory=Recorder)


CIVIL = web.AppKey("civil_state", CivilState)


async def household_marital(request: web.Request) -> web.Response:
    """户籍与婚姻状况核验: whether a person's household is in Shaanxi, and their marital status."""
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    refused = _missing(body, "idNumber", "name")
    if refused is not None:
        return refused
    person = next((r for r in RESIDENTS if r.id_number == body["idNumber"]), None)
    if person is None or person.name != body["name"] or not person.id_number.startswith("61"):
        return _error(404, "not_found", "no household registration in Shaanxi for this person")
    return web.json_response(
        {
            "householdProvince": "61",
            "householdRegion": person.id_number[:6],
            "maritalStatus": "married" if person.id_number in MARRIED else "unmarried",
        }
    )


@web.middleware
async def _civil_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(API_KEY_HEADER, "").encode()
    if not hmac.compare_digest(given, request.app[CIVIL].api_key.encode()):
        return _error(401, "unauthorized", "missing or wrong API key")
    return await handler(request)


def build_civil_app(state: CivilState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), _civil_key])
    app[CIVIL] = state
    app.router.add_post("/api/checks/household-marital", household_marital)
    return app


SELLER = HAN_XUEMEI
"""S13's seller: a Qinghai resident selling her home in Xining."""
BUYER = MA_WENHUA
"""S13's buyer: a Shaanxi resident (household and marriage registered in Shaanxi)."""
