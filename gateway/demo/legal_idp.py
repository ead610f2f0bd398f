"""Demo Shaanxi (61) legal-person identity platform (法人统一身份认证, scenario S8).

Enterprises sign in through their agent (经办人); the platform POSTs a signed assertion (JWS,
ES256, its JWKS at ``/legal/jwks``) back to the gateway with an auto-submitting form: credit
code, organisation type (1 企业法人, 2 非企业法人, 3 非法人), company name, legal
representative, the agent, the login type and ``realLevel`` on the Zhejiang legal scale, which
runs backwards (1 = digital certificate, strongest … 4 = not checked). One enterprise was
registered before 2015 and still carries its 15-digit registration number (工商注册号) in
``uniscid`` instead of a credit code, as such accounts do. Every enterprise and person is
invented; identifiers carry valid check characters except the one account meant to be refused.
The password of all accounts is ``demo``.

Must not: log anything (it logs nothing at all).
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.demo.credit import SALT_LAKE
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, SU_LANXIN, ZHAO_YIMING, Resident
from gateway.identity.identifiers import make_credit_code, make_registration_number

PASSWORD = "demo"
APP_CODE = "tongban-gateway"
AUDIENCE = "tongban-gateway"


@dataclass(frozen=True, slots=True)
class Enterprise:
    credit_code: str
    name: str
    org_type: str
    legal_representative: str


QINLING_TECH = Enterprise(
    make_credit_code("91610131MA6W8Q2X1"), "西安秦岭数智科技有限公司", "1", "赵一鸣"
)
TESTING_CENTRE = Enterprise(
    make_credit_code("12610000435201130"), "陕西省示范检测中心", "2", "马文华"
)
# S14: a Qinghai enterprise whose credit record Qinghai's platform keeps (gateway/demo/credit.py).
SALT_LAKE_CHEMICALS = Enterprise(SALT_LAKE.credit_code, SALT_LAKE.name, "1", "韩雪梅")
# Registered in 2009, before the unified credit code: a registration number only.
OLD_WORKSHOP = Enterprise(
    make_registration_number("61010320090001"), "西安老城区机械修配厂", "1", "赵一鸣"
)
_valid = make_credit_code("91610113MA6X5K3P2")
BROKEN_CODE = Enterprise(
    _valid[:17] + ("0" if _valid[17] != "0" else "1"), "校验位错误示范公司", "1", "苏兰心"
)


@dataclass(frozen=True, slots=True)
class AgentAccount:
    user_id: str
    enterprise: Enterprise
    agent: Resident
    phone: str
    real_level: str
    login_type: str


ACCOUNTS: tuple[AgentAccount, ...] = (
    AgentAccount("lp-500101", QINLING_TECH, MA_WENHUA, "13891005678", "1", "certificate"),
    AgentAccount("lp-500102", QINLING_TECH, SU_LANXIN, "13709115678", "3", "password"),
    AgentAccount("lp-500103", TESTING_CENTRE, ZHAO_YIMING, "13991005678", "2", "password"),
    AgentAccount("lp-500104", OLD_WORKSHOP, ZHAO_YIMING, "13991005679", "1", "certificate"),
    AgentAccount("lp-500105", SALT_LAKE_CHEMICALS, HAN_XUEMEI, "13997001122", "1", "certificate"),
    AgentAccount("lp-500199", BROKEN_CODE, SU_LANXIN, "13709115679", "1", "certificate"),
)


@dataclass
class LegalIdpState:
    return_prefixes: tuple[str, ...] = ()
    issuer: str = ""
    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", auto_kid=True))
    clock: Callable[[], float] = time.time
    down: bool = False
    assertions: list[str] = field(default_factory=list)
    """Every assertion issued (tests replay them)."""

    def sign(self, claims: dict[str, Any], key: ECKey | None = None) -> str:
        signer = key or self.key
        header = {"alg": "ES256", "kid": signer.kid, "typ": "JWT"}
        return jwt.encode(header, claims, signer, algorithms=["ES256"])

    def claims_for(self, account: AgentAccount, state: str) -> dict[str, Any]:
        now = int(self.clock())
        company = account.enterprise
        return {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 120,
            "jti": secrets.token_urlsafe(16),
            "state": state,
            "usertype": "2",
            "uniscid": company.credit_code,
            "orgtype": company.org_type,
            "companyName": company.name,
            "legalPerson": company.legal_representative,
            "realLevel": account.real_level,
            "loginType": account.login_type,
            "agent": {
                "userId": account.user_id,
                "name": account.agent.name,
                "idType": "1",
                "idNumber": account.agent.id_number,
                "phone": account.phone,
            },
        }


STATE = web.AppKey("legal_idp_state", LegalIdpState)


@web.middleware
async def _down_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    if request.app[STATE].down:
        return web.Response(status=503, text="maintenance")
    response: web.StreamResponse = await handler(request)
    return response


def build_legal_idp_app(state: LegalIdpState) -> web.Application:
    app = web.Application(middlewares=[_down_middleware])
    app[STATE] = state
    app.router.add_get("/legal/jwks", jwks)
    app.router.add_get("/legal/login", login_form)
    app.router.add_post("/legal/login", login)
    return app


def _page(body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<title>陕西法人统一身份认证</title><style>body{font-family:'WenQuanYi Zen Hei',"
        "sans-serif;max-width:36em;margin:2em auto;background:#f3f6f1}</style></head><body>"
        f"<h1>陕西法人统一身份认证</h1>{body}</body></html>"
    )
    return web.Response(
        status=status, text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


async def jwks(request: web.Request) -> web.Response:
    public = dict(request.app[STATE].key.as_dict(private=False))
    public.update(alg="ES256", use="sig")
    return web.json_response({"keys": [public]})


async def login_form(request: web.Request) -> web.Response:
    state = request.app[STATE]
    back = request.query.get("return", "")
    if request.query.get("appcode") != APP_CODE or not back.startswith(state.return_prefixes):
        return _page("<p>未登记的应用 / unknown app</p>", 400)
    options = "".join(
        f"<option value='{a.user_id}'>{html.escape(a.enterprise.name)} · "
        f"{html.escape(a.agent.name)} ({a.user_id}, realLevel {a.real_level})</option>"
        for a in ACCOUNTS
    )
    body = (
        "<form method='post' action='/legal/login'>"
        f"<input type='hidden' name='back' value='{html.escape(back)}'>"
        f"<input type='hidden' name='state' value='{html.escape(request.query.get('state', ''))}'>"
        f"<p><label>经办人账号 / Agent <select name='user' id='user'>{options}</select></label></p>"
        "<p><label>密码 / Password <input type='password' name='password' id='password'>"
        "</label> (demo)</p><p><button type='submit' id='sign-in'>登录 / Sign in</button></p>"
        "</form>"
    )
    return _page(body)


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    back = str(form.get("back", ""))
    account = next((a for a in ACCOUNTS if a.user_id == form.get("user")), None)
    password = str(form.get("password", ""))
    if not back.startswith(state.return_prefixes):
        return _page("<p>unknown return address</p>", 400)
    if account is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _page("<p>账号或密码错误 / wrong account or password</p>", 400)
    assertion = state.sign(state.claims_for(account, str(form.get("state", ""))))
    state.assertions.append(assertion)
    # The browser carries the assertion back by POST (an auto-submitting form).
    body = (
        f"<form method='post' action='{html.escape(back)}' id='assertion-form'>"
        f"<input type='hidden' name='assertion' value='{html.escape(assertion)}'>"
        f"<input type='hidden' name='state' value='{html.escape(str(form.get('state', '')))}'>"
        "<noscript><button type='submit'>继续 / Continue</button></noscript></form>"
        "<script>document.getElementById('assertion-form').submit()</script>"
    )
    return _page(body)
