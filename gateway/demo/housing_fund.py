"""Demo Shaanxi (61) housing-fund centre (住房公积金): REST JSON with an API key.

``GET /api/accounts/{accountNo}?idCardNo=...`` answers the balance and status with the holder's
name masked; ``POST /api/transfers`` confirms a transfer out (异地转移接续) and deduplicates on
the ``Idempotency-Key`` header (same key → same transfer: 201 the first time, 200 after);
``GET /api/transfers/{transferId}`` answers its state. It never logs payloads.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.demo.api_key import json_error, require_api_key
from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, ZHAO_YIMING, Resident, mask_name
from gateway.demo.subject_check import SUBJECTS_HEADER, person_named

CENTRE_NAME = "陕西省示范住房公积金管理中心"
_CENTRE_CODE = re.compile(r"^[0-9]{6}$")

ACCOUNT_STATUS = {"01": "正常 active", "02": "封存 sealed", "03": "转出中 transferring out"}


@dataclass
class FundAccount:
    """One housing-fund account; only sealed (封存) accounts can be transferred out."""

    account_no: str
    holder: Resident
    balance: str
    status: str
    opened: str
    last_deposit_month: str


@dataclass
class FundTransfer:
    transfer_id: str
    idempotency_key: str
    fingerprint: str
    account_no: str
    in_centre_code: str
    amount: str
    status: str
    confirmed_at: str

    def as_json(self) -> dict[str, str]:
        return {
            "transferId": self.transfer_id,
            "accountNo": self.account_no,
            "inCentreCode": self.in_centre_code,
            "amount": self.amount,
            "status": self.status,
            "statusText": "已确认，待划转 confirmed, funds to be moved",
            "confirmedAt": self.confirmed_at,
        }


def _now() -> datetime:
    return datetime.now(UTC)


def shaanxi_accounts() -> dict[str, FundAccount]:
    accounts = (
        FundAccount("610100201300789012", HAN_XUEMEI, "48210.35", "02", "2013-07-01", "2019-12"),
        FundAccount("610100201000123456", MA_WENHUA, "96533.80", "02", "2010-03-01", "2023-03"),
        FundAccount("610400201500456789", ZHAO_YIMING, "71402.16", "01", "2015-09-01", "2025-05"),
    )
    return {a.account_no: a for a in accounts}


@dataclass
class HousingFundState:
    api_key: str
    subject_key: bytes | None = None
    """Shaanxi's subject key: an account is answered only for the person the gateway verified
    (gateway/demo/subject_check.py); None: not checked."""
    accounts: dict[str, FundAccount] = field(default_factory=shaanxi_accounts)
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = _now
    transfers: dict[str, FundTransfer] = field(default_factory=dict)
    transfers_by_key: dict[str, FundTransfer] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


STATE = web.AppKey("housing_fund_state", HousingFundState)


api_key_middleware = require_api_key(lambda app: app[STATE].api_key)


async def get_account(request: web.Request) -> web.Response:
    state = request.app[STATE]
    account = state.accounts.get(request.match_info["accountNo"])
    id_card = request.query.get("idCardNo", "")
    if not person_named(state.subject_key, request.headers.get(SUBJECTS_HEADER), id_card):
        return json_error(403, "not_the_verified_subject", "the ID number is not the caller's")
    # An account number alone does not reveal an account: the holder's ID must match too.
    if account is None or not hmac.compare_digest(
        id_card.encode(), account.holder.id_number.encode()
    ):
        return json_error(404, "account_not_found", "no account matches accountNo and idCardNo")
    return web.json_response(
        {
            "accountNo": account.account_no,
            "holderName": mask_name(account.holder.name),
            "balance": account.balance,
            "status": account.status,
            "statusText": ACCOUNT_STATUS[account.status],
            "openDate": account.opened,
            "lastDepositMonth": account.last_deposit_month,
            "centreName": CENTRE_NAME,
        }
    )


async def _json_object(request: web.Request) -> Mapping[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid_json", "message": "body is not JSON"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid_json", "message": "expected a JSON object"}),
            content_type="application/json",
        )
    return body


async def create_transfer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return json_error(400, "idempotency_key_required", "send an Idempotency-Key header")
    body = await _json_object(request)
    fields = ("accountNo", "idCardNo", "holderName", "inCentreCode")
    missing = [f for f in fields if not isinstance(body.get(f), str) or not body[f]]
    if missing:
        return json_error(400, "invalid_request", f"missing fields: {', '.join(missing)}")
    if not person_named(state.subject_key, request.headers.get(SUBJECTS_HEADER), body["idCardNo"]):
        return json_error(403, "not_the_verified_subject", "the ID number is not the caller's")
    if not _CENTRE_CODE.match(body["inCentreCode"]):
        return json_error(400, "invalid_request", "inCentreCode must be six digits")
    fingerprint = hashlib.sha256(
        json.dumps([body.get(f) for f in (*fields, "inAccountNo")]).encode()
    ).hexdigest()
    existing = state.transfers_by_key.get(key)
    if existing is not None:
        if existing.fingerprint != fingerprint:
            return json_error(
                422, "idempotency_key_reused", "this Idempotency-Key was used for another request"
            )
        return web.json_response(existing.as_json(), status=200)
    account = state.accounts.get(body["accountNo"])
    if (
        account is None
        or account.holder.id_number != body["idCardNo"]
        or account.holder.name != body["holderName"]
    ):
        return json_error(404, "account_not_found", "no account matches the holder")
    if account.status == "03":
        pending = next(t for t in state.transfers.values() if t.account_no == account.account_no)
        return json_error(
            409,
            "transfer_exists",
            "a transfer is already under way",
            transferId=pending.transfer_id,
        )
    if account.status != "02":
        return json_error(409, "account_not_sealed", "the account must be sealed (封存) first")
    now = state.clock()
    transfer = FundTransfer(
        transfer_id=f"SXGJJ{now:%Y%m%d}{next(state._numbers):06d}",
        idempotency_key=key,
        fingerprint=fingerprint,
        account_no=account.account_no,
        in_centre_code=body["inCentreCode"],
        amount=account.balance,
        status="CONFIRMED",
        confirmed_at=now.isoformat(timespec="seconds"),
    )
    account.status = "03"
    state.transfers[transfer.transfer_id] = transfer
    state.transfers_by_key[key] = transfer
    return web.json_response(transfer.as_json(), status=201)


async def get_transfer(request: web.Request) -> web.Response:
    transfer = request.app[STATE].transfers.get(request.match_info["transferId"])
    if transfer is None:
        return json_error(404, "transfer_not_found", "no such transfer")
    return web.json_response(transfer.as_json())


def build_housing_fund_app(state: HousingFundState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), api_key_middleware])
    app[STATE] = state
    app.router.add_get("/api/accounts/{accountNo}", get_account, name="get_account")
    app.router.add_post("/api/transfers", create_transfer, name="create_transfer")
    app.router.add_get("/api/transfers/{transferId}", get_transfer, name="get_transfer")
    return app
