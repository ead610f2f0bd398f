"""Demo Shaanxi (61) e-driving-licence check (电子驾驶证核验): REST, OAuth2 client credentials.

The back-end is its own authorisation server: ``POST /oauth/token`` (RFC 6749 §4.4, client
authentication by HTTP Basic or form fields, errors as §5.2) issues short-lived bearer tokens,
and ``POST /api/licences/verify`` checks one (RFC 6750) before answering whether a licence is
valid. A time-limited QR code (as shown in the holder's app) can be checked too. It never logs
payloads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import MA_WENHUA, SU_LANXIN, ZHAO_YIMING, Resident, mask_name

SCOPE = "licence:verify"
TOKEN_LIFETIME = 600
ISSUER = "陕西省公安厅交通管理局（演示）"


@dataclass(frozen=True, slots=True)
class DrivingLicence:
    file_no: str  # 档案编号, 12 digits
    holder: Resident
    driving_class: str
    valid_from: str
    valid_until: str
    status: str  # A 正常, D 逾期未换证, E 注销 ...
    authority: str


LICENCE_STATUS = {"A": "正常 valid", "D": "逾期未换证 overdue for renewal", "E": "注销 cancelled"}


def shaanxi_licences() -> dict[str, DrivingLicence]:
    licences = (
        DrivingLicence(
            "610100345678",
            ZHAO_YIMING,
            "C1",
            "2021-11-05",
            "2031-11-05",
            "A",
            "西安市公安局交通警察支队（演示）",
        ),
        DrivingLicence(
            "610300112233",
            MA_WENHUA,
            "A2",
            "2012-04-18",
            "2028-04-18",
            "A",
            "宝鸡市公安局交通警察支队（演示）",
        ),
        DrivingLicence(
            "610100998877",
            SU_LANXIN,
            "C2",
            "2018-08-20",
            "2024-08-20",
            "D",
            "西安市公安局交通警察支队（演示）",
        ),
    )
    return {lic.file_no: lic for lic in licences}


@dataclass(frozen=True, slots=True)
class IssuedToken:
    client_id: str
    scope: frozenset[str]
    expires_at: float


@dataclass
class DrivingLicenceState:
    client_id: str
    client_secret: str
    licences: Mapping[str, DrivingLicence] = field(default_factory=shaanxi_licences)
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], float] = time.time
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    tokens_issued: int = 0
    qr_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def issue_qr(self, file_no: str, ttl: int = 300) -> str:
        """The QR payload the holder's app would show: ``DL61.<claims>.<mac>``, valid ``ttl`` s."""
        if file_no not in self.licences:
            raise KeyError(file_no)
        claims = json.dumps({"f": file_no, "exp": int(self.clock()) + ttl}, separators=(",", ":"))
        encoded = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
        return f"DL61.{encoded}.{self._qr_mac(encoded)}"

    def _qr_mac(self, encoded: str) -> str:
        mac = hmac.new(self.qr_key, encoded.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_qr(self, code: str, file_no: str) -> str | None:
        """None when the QR code is genuine, current and for this licence, else the reason."""
        try:
            prefix, encoded, mac = code.split(".")
            if prefix != "DL61" or not hmac.compare_digest(mac, self._qr_mac(encoded)):
                return "qr_invalid"
            claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        except (ValueError, binascii.Error):
            return "qr_invalid"
        if claims.get("f") != file_no:
            return "qr_invalid"
        if int(claims.get("exp", 0)) < self.clock():
            return "qr_expired"
        return None


STATE = web.AppKey("driving_licence_state", DrivingLicenceState)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="oauth"'
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, client_secret = decoded.partition(":")
    if not sep:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(client_secret)


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    header = request.headers.get("Authorization")
    if header is not None:
        credentials = _basic_credentials(header)
        if credentials is None or "client_secret" in form:
            return _oauth_error(401, "invalid_client", "bad client authentication")
    else:
        credentials = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
    client_id, client_secret = credentials
    if not (
        hmac.compare_digest(client_id.encode(), state.client_id.encode())
        and hmac.compare_digest(client_secret.encode(), state.client_secret.encode())
    ):
        return _oauth_error(401, "invalid_client", "client authentication failed")
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials")
    requested = frozenset(str(form.get("scope", SCOPE)).split())
    if not requested or not requested <= {SCOPE}:
        return _oauth_error(400, "invalid_scope", f"allowed scope: {SCOPE}")
    value = secrets.token_urlsafe(32)
    state.tokens[value] = IssuedToken(client_id, requested, state.clock() + TOKEN_LIFETIME)
    state.tokens_issued += 1
    return web.json_response(
        {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": " ".join(sorted(requested)),
        },
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _bearer_error(status: int, error: str) -> web.Response:
    challenge = f'Bearer realm="licences", error="{error}"'
    if error == "insufficient_scope":
        challenge += f', scope="{SCOPE}"'
    return web.json_response(
        {"error": error}, status=status, headers={"WWW-Authenticate": challenge}
    )


async def verify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    issued = state.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
    if issued is None or issued.expires_at <= state.clock():
        return _bearer_error(401, "invalid_token")
    if SCOPE not in issued.scope:
        return _bearer_error(403, "insufficient_scope")
    try:
        body: Any = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    fields = ("idNumber", "name", "fileNo")
    if not isinstance(body, dict) or not all(isinstance(body.get(f), str) for f in fields):
        return web.json_response(
            {"error": "invalid_request", "message": "idNumber, name and fileNo are required"},
            status=400,
        )
    checked_at = datetime.fromtimestamp(state.clock(), UTC).isoformat(timespec="seconds")
    licence = state.licences.get(body["fileNo"])
    # A mismatch and an unknown licence look the same: verification must not reveal existence.
    if (
        licence is None
        or licence.holder.id_number != body["idNumber"]
        or licence.holder.name != body["name"]
    ):
        return web.json_response({"valid": False, "reason": "no_match", "checkedAt": checked_at})
    qr_code = body.get("qrCode")
    reason = None if qr_code is None else state.check_qr(str(qr_code), licence.file_no)
    if reason is None and licence.status != "A":
        reason = "licence_not_valid"
    return web.json_response(
        {
            "valid": reason is None,
            "reason": reason or "ok",
            "holderName": mask_name(licence.holder.name),
            "status": licence.status,
            "statusText": LICENCE_STATUS[licence.status],
            "drivingClass": licence.driving_class,
            "validFrom": licence.valid_from,
            "validUntil": licence.valid_until,
            "issuingAuthority": licence.authority,
            "qrChecked": qr_code is not None,
            "checkedAt": checked_at,
        },
        dumps=lambda v: json.dumps(v, ensure_ascii=False),
    )


def build_driving_licence_app(state: DrivingLicenceState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder)])
    app[STATE] = state
    app.router.add_post("/oauth/token", token, name="token")
    app.router.add_post("/api/licences/verify", verify, name="verify")
    return app
