"""Demo Qinghai (63) public credit information platform (公共信用信息平台): REST JSON, API key.

S14 (企业信用信息授权查询): a financial institution in Shaanxi checks a Qinghai enterprise before
a loan. Two kinds of answer, as Shaanxi's and Qinghai's credit rules separate them:

- ``GET /api/public/enterprises?name=...``: the public record (公示信息) of an enterprise found
  by its registered name: credit code, status, licences, administrative penalties, honours.
  Anyone may read it; it names no person.
- ``GET /api/nonpublic/summary?creditCode=...``: a *summary* of the non-public record (非公示
  信息) that only the enterprise's authorisation opens: the tax credit grade, whether social
  insurance, housing-fund or utility payments are in arrears, how many enforcement cases are
  open. Never the raw detail: no amounts, no dates of single arrears, no names.

The platform keeps the raw detail it summarises (``raw_detail``) and has no route that returns
it. It never logs payloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.demo.api_key import json_error, require_api_key
from gateway.demo.recording import Recorder, recording_middleware
from gateway.identity.identifiers import make_credit_code

PLATFORM_NAME = "青海省公共信用信息平台（示范）"


@dataclass(frozen=True, slots=True)
class CreditRecord:
    credit_code: str
    name: str
    status: str
    registered_on: str
    licences: int
    penalties: tuple[dict[str, str], ...]
    honours: tuple[str, ...]
    tax_grade: str
    arrears: dict[str, bool]
    open_enforcements: int
    raw_detail: dict[str, Any] = field(default_factory=dict)
    """What the summary is made from; never sent anywhere."""


SALT_LAKE = CreditRecord(
    credit_code=make_credit_code("91630100MA752Q8L3"),
    name="青海盐湖示范化工有限公司",
    status="存续",
    registered_on="2016-04-18",
    licences=6,
    penalties=(
        {
            "decided_on": "2023-08-02",
            "authority": "西宁市生态环境局",
            "kind": "警告",
            "reason": "环境影响评价文件未按期备案",
        },
    ),
    honours=("纳税信用A级纳税人（2024年度）",),
    tax_grade="A",
    arrears={"social_insurance": False, "housing_fund": False, "utilities": True},
    open_enforcements=0,
    raw_detail={"utilities": [{"month": "2025-09", "amount": "18342.50", "supplier": "西宁供电"}]},
)
PLATEAU_LOGISTICS = CreditRecord(
    credit_code=make_credit_code("91630105MA7C3R6N1"),
    name="青海高原示范物流有限公司",
    status="存续",
    registered_on="2019-11-05",
    licences=3,
    penalties=(),
    honours=(),
    tax_grade="B",
    arrears={"social_insurance": True, "housing_fund": False, "utilities": False},
    open_enforcements=2,
    raw_detail={"social_insurance": [{"month": "2025-10", "amount": "52011.00"}]},
)
ENTERPRISES: tuple[CreditRecord, ...] = (SALT_LAKE, PLATEAU_LOGISTICS)


@dataclass
class CreditState:
    api_key: str
    records: dict[str, CreditRecord] = field(
        default_factory=lambda: {r.credit_code: r for r in ENTERPRISES}
    )
    recorder: Recorder = field(default_factory=Recorder)


STATE = web.AppKey("credit_state", CreditState)


api_key_middleware = require_api_key(lambda app: app[STATE].api_key)


async def public_record(request: web.Request) -> web.Response:
    name = request.query.get("name", "").strip()
    found = next((r for r in request.app[STATE].records.values() if r.name == name), None)
    if found is None:
        return json_error(
            404, "enterprise_not_found", "no enterprise is registered under this name"
        )
    return web.json_response(
        {
            "creditCode": found.credit_code,
            "name": found.name,
            "status": found.status,
            "registeredOn": found.registered_on,
            "licenceCount": found.licences,
            "penalties": list(found.penalties),
            "honours": list(found.honours),
            "platform": PLATFORM_NAME,
        }
    )


async def nonpublic_summary(request: web.Request) -> web.Response:
    code = request.query.get("creditCode", "").strip().upper()
    found = request.app[STATE].records.get(code)
    if found is None:
        return json_error(404, "enterprise_not_found", "no enterprise has this credit code")
    return web.json_response(
        {
            "creditCode": found.credit_code,
            "taxGrade": found.tax_grade,
            "socialInsuranceArrears": found.arrears["social_insurance"],
            "housingFundArrears": found.arrears["housing_fund"],
            "utilityArrears": found.arrears["utilities"],
            "openEnforcements": found.open_enforcements,
            "platform": PLATFORM_NAME,
        }
    )


def build_credit_app(state: CreditState) -> web.Application:
    app = web.Application(middlewares=[recording_middleware(state.recorder), api_key_middleware])
    app[STATE] = state
    app.router.add_get("/api/public/enterprises", public_record, name="public_record")
    app.router.add_get("/api/nonpublic/summary", nonpublic_summary, name="nonpublic_summary")
    return app
