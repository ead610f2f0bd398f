"""Demo Shaanxi (61) window staff directory (陕西政务服务窗口工作人员认证), an OpenID Connect OP.

The platform config/idps.yaml declares a staff directory (``shaanxi-staff``, ``staff:``): the
only kind whose logins the gateway lets carry staff roles, and the only one a window client
offers (gateway/identity/staff.py). It reuses the Qinghai demo OP's machinery (discovery, keys,
request checks, one-time codes, PKCE and client authentication: qinghai_idp.py) with its own
accounts, login form and claims.

Claims, in the directory's own terms: ``sub`` the staff number (工号), ``name``, ``roles`` in its
own role names (``窗口受理`` → the gateway's ``clerk`` by idps.yaml's ``role_map``) and ``authn``
``pwd`` or ``cert`` (password, or password with the simulated government certificate UKey;
idps.yaml maps them to L2 / L3). Every account is invented; every password is ``demo``.

Must not: log credentials, codes or personal data (it logs nothing at all).
"""

from __future__ import annotations

import hmac
import html
from dataclasses import dataclass

from aiohttp import web

from gateway.demo.qinghai_idp import (
    CLIENT_ID,
    PASSWORD,
    STATE,
    QinghaiIdpState,
    accept_authorization_request,
    discovery,
    issue_code,
    jwks,
    redeem_code,
    token_response,
)

STAFF_IDP = "shaanxi-staff"
"""Its id in config/idps.yaml."""


@dataclass(frozen=True, slots=True)
class StaffAccount:
    staff_id: str
    """工号, the directory's ``sub``."""
    name: str
    roles: tuple[str, ...]
    """Role names in the directory's own terms."""
    desk: str


WINDOW_CLERK = StaffAccount(
    "clerk-61-0007",
    "王静",
    ("窗口受理",),
    "西安市雁塔区政务服务中心 7号窗口 / Xi'an Yanta window 7",
)
STAFF: tuple[StaffAccount, ...] = (
    WINDOW_CLERK,
    StaffAccount(
        "clerk-61-0012",
        "张磊",
        ("窗口受理", "综合咨询"),
        "西安市雁塔区政务服务中心 12号窗口 / Xi'an Yanta window 12",
    ),
    # A trainee: signs in at the directory, but no role the gateway lets work a window.
    StaffAccount(
        "trainee-61-0031", "李晨", ("见习",), "西安市雁塔区政务服务中心 / Xi'an Yanta (trainee)"
    ),
)


@dataclass
class StaffDirectoryState(QinghaiIdpState):
    """The Qinghai demo OP's state with the directory's accounts instead of citizens."""

    accounts: tuple[StaffAccount, ...] = STAFF

    def account(self, staff_id: str) -> StaffAccount | None:
        return next((a for a in self.accounts if a.staff_id == staff_id), None)


def _page(body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<title>陕西政务服务窗口工作人员认证</title><style>body{font-family:'WenQuanYi Zen Hei',"
        "sans-serif;max-width:36em;margin:2em auto;background:#f7f4ee}h1{color:#8a2a0a}"
        "</style></head><body>" + body + "</body></html>"
    )
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _directory(request: web.Request) -> StaffDirectoryState:
    state = request.app[STATE]
    assert isinstance(state, StaffDirectoryState)
    return state


def build_staff_directory_app(state: StaffDirectoryState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/authorize", login)
    app.router.add_post("/token", token)
    return app


async def authorize(request: web.Request) -> web.Response:
    state = _directory(request)
    accepted = accept_authorization_request(request, state)
    if isinstance(accepted, web.Response):
        return accepted
    request_id, _ = accepted
    options = "".join(
        f"<option value='{html.escape(a.staff_id)}'>{html.escape(a.staff_id)} "
        f"{html.escape(a.name)}</option>"
        for a in state.accounts
    )
    return _page(
        "<h1>陕西政务服务窗口工作人员认证</h1><p>Shaanxi window staff directory (demo)</p>"
        "<form method='post' action='/authorize'>"
        f"<input type='hidden' name='request_id' value='{request_id}'>"
        f"<p><label>工号 / Staff id <select name='staff' id='staff'>{options}</select></label></p>"
        "<p><label>密码 / Password <input type='password' name='password' "
        "id='staff-password'></label> (demo)</p>"
        "<p><label><input type='checkbox' name='ukey' value='1' id='ukey'> "
        "数字证书 UKey（模拟）/ Government certificate (simulated)</label></p>"
        "<p><button type='submit' id='staff-sign-in'>登录 / Sign in</button></p></form>"
    )


async def login(request: web.Request) -> web.Response:
    state = _directory(request)
    form = await request.post()
    pending = state.pending.pop(str(form.get("request_id", "")), None)
    if pending is None:
        return _page("<h1>登录请求已失效 / The sign-in expired</h1>", status=400)
    account = state.account(str(form.get("staff", "")))
    password = str(form.get("password", ""))
    if account is None or not hmac.compare_digest(password.encode(), PASSWORD.encode()):
        return _page("<h1>工号或密码错误 / Wrong staff id or password</h1>", status=400)
    raise issue_code(state, pending, account.staff_id, "cert" if form.get("ukey") else "pwd")


async def token(request: web.Request) -> web.Response:
    state = _directory(request)
    record = await redeem_code(request, state)
    if isinstance(record, web.Response):
        return record
    account = state.account(record["user_id"])
    assert account is not None
    now = int(state.clock())
    return token_response(
        state,
        {
            "iss": state.issuer,
            "sub": account.staff_id,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "auth_time": record["auth_time"],
            "nonce": record["nonce"],
            "authn": str(record["level"]),
            "name": account.name,
            "roles": list(account.roles),
            "desk": account.desk,
        },
    )
