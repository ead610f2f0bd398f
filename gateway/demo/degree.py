"""Demo Shaanxi (61) degree-verification system (学历学位证书核验): quirky REST with HMAC auth.

``POST /api/verify`` takes ``{"xm", "sfzh", "zsbh"}`` (name, ID number, certificate number) and,
like many provincial systems, always answers HTTP 200 with ``{"code", "msg", "result"}`` where
``result`` is a JSON *string*: code ``0000`` success, ``1001`` holder not found, ``1002`` bad
parameters. Requests are signed (X-Tb-Key, X-Tb-Date, X-Tb-Signature); a bad signature is HTTP
401. The answer carries only the minimal fields. It never logs payloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo.recording import Recorder, recording_middleware
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, SU_LANXIN, Resident, mask_name

MAX_CLOCK_SKEW = 300.0


@dataclass(frozen=True, slots=True)
class DegreeCertificate:
    """A degree certificate (学位证书) issued in Shaanxi."""

    number: str
    holder: Resident
    level: str
    degree: str
    institution: str
    conferred: str
    revoked: bool = False


def shaanxi_certificates() -> dict[str, DegreeCertificate]:
    # Institutions are invented; certificate numbers follow the 16/18-digit shape only.
    certificates = (
        DegreeCertificate(
            "106971202005123456", SU_LANXIN, "本科", "工学学士", "秦岭理工大学", "2020-06-30"
        ),
        DegreeCertificate(
            "106972201505654321",
            HAN_XUEMEI,
            "硕士研究生",
            "管理学硕士",
            "长安示范大学",
            "2015-06-28",
        ),
        DegreeCertificate(
            "106971200705000777",
            MA_WENHUA,
            "本科",
            "理学学士",
            "秦岭理工大学",
            "2007-07-01",
            revoked=True,
        ),
    )
    return {c.number: c for c in certificates}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class DegreeState:
    key_id: str
    secret: str
    certificates: Mapping[str, DegreeCertificate] = field(default_factory=shaanxi_certificates)
    recorder: Recorder = field(default_factory=Recorder)
    clock: Callable[[], datetime] = _now


STATE = web.AppKey("degree_state", DegreeState)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Query pairs sorted, each part percent-encoded (RFC 3986), joined with '&'."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(pairs))


def signature(secret: str, method: str, path: str, query: str, date: str, body: bytes) -> str:
    """base64(HMAC-SHA256(secret, method \\n path \\n query \\n date \\n sha256-hex(body)))."""
    text = "\n".join((method.upper(), path, query, date, hashlib.sha256(body).hexdigest()))
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def _refuse(message: str) -> web.Response:
    return web.json_response({"code": "4010", "msg": message, "result": ""}, status=401)


@web.middleware
async def hmac_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    key_id = request.headers.get("X-Tb-Key", "")
    date = request.headers.get("X-Tb-Date", "")
    given = request.headers.get("X-Tb-Signature", "")
    if not (key_id and date and given):
        return _refuse("签名缺失 signature headers missing")
    if not hmac.compare_digest(key_id.encode(), state.key_id.encode()):
        return _refuse("密钥无效 unknown key")
    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return _refuse("日期无效 bad X-Tb-Date")
    if sent.tzinfo is None or abs((state.clock() - sent).total_seconds()) > MAX_CLOCK_SKEW:
        return _refuse("请求过期 X-Tb-Date outside the allowed window")
    body = await request.read()
    expected = signature(
        state.secret,
        request.method,
        request.rel_url.raw_path,
        canonical_query(request.query.items()),
        date,
        body,
    )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return _refuse("签名无效 bad signature")
    return await handler(request)


def _answer(code: str, msg: str, result: Mapping[str, Any] | None = None) -> web.Response:
    text = "" if result is None else json.dumps(result, ensure_ascii=False)
    return web.json_response(
        {"code": code, "msg": msg, "result": text},
        dumps=lambda v: json.dumps(v, ensure_ascii=False),
    )


async def verify(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _answer("1002", "参数错误")
    if not isinstance(body, dict) or not all(
        isinstance(body.get(f), str) and body[f] for f in ("xm", "sfzh", "zsbh")
    ):
        return _answer("1002", "参数错误")
    if not any(c.holder.id_number == body["sfzh"] for c in state.certificates.values()):
        return _answer("1001", "持证人不存在")
    certificate = state.certificates.get(body["zsbh"])
    if (
        certificate is None
        or certificate.holder.id_number != body["sfzh"]
        or certificate.holder.name != body["xm"]
    ):
        return _answer("0000", "成功", {"sfyx": "0", "hyjg": "证书信息不一致"})
    return _answer(
        "0000",
        "成功",
        {
            "xm": mask_name(certificate.holder.name),
            "xlcc": certificate.level,
            "xwmc": certificate.degree,
            "yxmc": certificate.institution,
            "byrq": certificate.conferred,
            "sfyx": "0" if certificate.revoked else "1",
            "hyjg": "证书已撤销" if certificate.revoked else "一致",
        },
    )


def build_degree_app(state: DegreeState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), hmac_middleware])
    app[STATE] = state
    app.router.add_post("/api/verify", verify, name="verify")
    return app
