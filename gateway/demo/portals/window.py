"""窗口受理: a window clerk's console on the Shaanxi portal (S10 异地代收代办, S13 at a window).

The console is a client of its own (``demo-window-shaanxi``, clients.yaml ``window: true``).
The clerk signs in through the gateway, which offers only the staff directory (code flow + PKCE
like a person's sign-in); her name and staff id are the directory's. For each intake the console
asks the gateway for a Counter token for the applicant by token exchange (RFC 8693: the ID
number the clerk typed from the document as subject token, her own access token as actor token)
and takes the application in with it (原件核验 ticked, an Idempotency-Key per rendered form), so
the case's principal is the applicant and its actor the clerk. Her own token (refreshed like a
person's, tokens.py) reads the window queue and each queued case (``/window/cases/{id}``: a
linked case's parts by name, what each waits for, what was undone, the combined outcome, the
timeline with the clerks by name). A Shaanxi buyer of a home in Xining (S13) applies here too:
the console takes the linked case in for him the same way. The forms carry a CSRF token bound to
her session.

Must not: keep a password, or let a Counter token outlive the intake it was asked for.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy

from gateway.demo.cases import S13_CASE
from gateway.demo.portals.cases import part_titles, parts, timeline
from gateway.demo.portals.forms import csrf_ok, form_expired
from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import NavEntry, PortalPage
from gateway.demo.portals.signin import (
    SignInFailed,
    authorization_redirect,
    complete_sign_in,
)
from gateway.demo.portals.state import (
    SESSION_LIFETIME,
    STATE,
    ClerkSession,
    PortalState,
    Tokens,
    WindowDesk,
    forget_older,
)
from gateway.demo.portals.tokens import SessionEnded, access_token, call_api, token_request
from gateway.demo.portals.words import e, mode, problem, province, status, time_tag
from gateway.demo.property_transfer import BUYER, SEIZED_UNITS
from gateway.identity.clients import TOKEN_EXCHANGE
from gateway.identity.identifiers import RESIDENT_ID_CARD
from gateway.identity.token_exchange import ACCESS_TOKEN_TYPE, ID_DOCUMENT_TOKEN_TYPE

CONSOLE = NavEntry(
    "窗口受理", "Window console", 50, audience=frozenset({"clerk"}), window_only=True
)
DISABILITY_CATEGORIES = {
    "hearing": "听力残疾",
    "visual": "视力残疾",
    "speech": "言语残疾",
    "physical": "肢体残疾",
    "intellectual": "智力残疾",
    "mental": "精神残疾",
}
WINDOW_MATERIALS = {
    "disability-assessment": "残疾评定材料",
    "photo": "近期免冠照片",
}
SERVICE_NAMES = {
    "disability-card": "残疾人证办理",
    "second-hand-home-transfer": "二手房转移登记及水电气联动过户",
}
HOME_SERVICE = "second-hand-home-transfer"
HOMES = {
    "demo": S13_CASE[3]["data"]["property"]["unit"],
    "seized": next(iter(SEIZED_UNITS)),
}
"""The demo's homes in Xining: one that transfers, one under a court seizure (不予受理)."""
COUNTER_SCOPE = "services:call"
"""All a Counter token needs: taking the application in (never the clerk's profile)."""


def _desk(request: web.Request) -> WindowDesk:
    desk = request.app[STATE].window
    if desk is None:
        raise web.HTTPNotFound()
    return desk


def clerk_of(request: web.Request) -> tuple[str, ClerkSession] | None:
    state = request.app[STATE]
    key = request.cookies.get(state.clerk_cookie, "")
    session = state.clerk_sessions.get(key)
    return (key, session) if session is not None else None


def _options(items: Mapping[str, str]) -> str:
    return "".join(f"<option value='{e(k)}'>{e(v)}</option>" for k, v in items.items())


async def _queue(state: PortalState, desk: WindowDesk, session: ClerkSession) -> str:
    got, answer = await call_api(
        state, session.tokens, desk.auth, "clerk", "GET", "/api/v1/cases?queue=window&limit=50"
    )
    if got != 200 or not isinstance(answer, dict):
        code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
        return f"<p class='warning' id='queue-error'>窗口队列暂不可用：{e(problem(code, got))}</p>"
    rows = "".join(
        f"<tr data-case='{e(c.get('case_id', ''))}'><td><a class='case-link' "
        f"href='/window/cases/{e(quote(str(c.get('case_id', '')), safe=''))}'>"
        f"{e(c.get('case_id', ''))}</a></td>"
        f"<td>{e(SERVICE_NAMES.get(str(c.get('service')), c.get('service', '')))}</td>"
        f"<td class='queue-status' data-status='{e(c.get('status', ''))}'>"
        f"{e(status(c.get('status')))}</td>"
        f"<td>{e(state.clerk_roster.get(str(c.get('actor')), '—'))}</td>"
        f"<td>{time_tag(c.get('updated_at'))}</td></tr>"
        for c in answer.get("cases", [])
        if isinstance(c, dict)
    )
    if not rows:
        return "<p id='queue-empty'>队列中暂无办件。</p>"
    return (
        "<div class='table-wrap'><table id='queue'><caption>本窗口受理的办件（北京时间）</caption>"
        "<thead><tr><th scope='col'>办件编号</th><th scope='col'>事项</th><th scope='col'>状态</th>"
        f"<th scope='col'>受理人</th><th scope='col'>更新时间</th></tr></thead><tbody>{rows}"
        "</tbody></table></div>"
    )


async def window(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    found = clerk_of(request)
    if found is None:
        return render(
            request,
            "窗口受理",
            "<p>跨省通办窗口工作人员通过统一身份认证登录，仅限工作人员账号。</p>"
            "<p class='en'>Clerks sign in through the gateway, with a staff account only.</p>"
            "<p><a class='button' id='clerk-sign-in' href='/window/login'>工作人员登录</a></p>",
            heading_en="Window console",
        )
    _key, session = found
    queue = await _queue(state, desk, session)
    materials = "".join(
        f"<label class='check'><input type='checkbox' name='material' value='{e(code)}' "
        f"id='material-{e(code)}' checked> {e(label)}</label>"
        for code, label in WINDOW_MATERIALS.items()
    )
    body = (
        f"{session.last_receipt}"
        f"<h2>残疾人证异地代收代办</h2><p>{e(province(desk.receiving_province))}窗口收件，"
        f"{e(province(desk.handling_province))}办理，结果邮寄送达。</p>"
        "<form method='post' action='/window/intake'>"
        f"<input type='hidden' name='csrf' value='{e(session.csrf)}'>"
        # One key per rendered form: a double click or a retried post makes no second case.
        f"<input type='hidden' name='idempotency_key' value='window-{secrets.token_hex(12)}'>"
        "<fieldset><legend>申请人身份证件（读卡）</legend>"
        "<label for='id-number'>居民身份证号码</label>"
        "<input id='id-number' name='id_number' maxlength='18' autocomplete='off' "
        "inputmode='text' required>"
        "<label for='applicant-name'>姓名</label>"
        "<input id='applicant-name' name='applicant_name' required></fieldset>"
        "<label for='category'>残疾类别</label>"
        f"<select id='category' name='category'>{_options(DISABILITY_CATEGORIES)}</select>"
        "<label for='address'>邮寄地址</label>"
        "<input id='address' name='address' value='西安市雁塔区示范路1号'>"
        f"<fieldset><legend>收取材料</legend>{materials}</fieldset>"
        "<label class='check'><input type='checkbox' id='originals' name='originals' value='yes'>"
        " 原件已核验</label>"
        "<label for='note'>核验说明</label>"
        "<input id='note' name='note' value='身份证原件已核验'>"
        "<p><button id='intake' type='submit'>受理并转办</button></p></form>"
        f"{_home_form(session)}"
        f"<h2>窗口队列</h2>{queue}"
        "<p><a class='button secondary' id='window-refresh' href='/window'>刷新</a></p>"
        "<form method='post' action='/window/logout'>"
        f"<input type='hidden' name='csrf' value='{e(session.csrf)}'>"
        "<button id='clerk-sign-out' type='submit' class='secondary'>退出</button></form>"
    )
    return render(request, "窗口受理", body, heading_en="Window console")


def _home_form(session: ClerkSession) -> str:
    """S13 at the window: the buyer's document, and which of the demo's homes he buys."""
    homes = _options({key: f"{unit}{'（被查封，示范不予受理）' if key == 'seized' else ''}"
                      for key, unit in HOMES.items()})  # fmt: skip
    return (
        "<h2>二手房转移登记及水电气联动过户（异地代收）</h2>"
        "<p>陕西户籍买方在本窗口申请购买西宁市房屋的联动过户：网签备案、缴纳契税、"
        "买方户籍婚姻核验、转移登记、水电气过户。</p>"
        "<form method='post' action='/window/intake-home' id='home-form'>"
        f"<input type='hidden' name='csrf' value='{e(session.csrf)}'>"
        f"<input type='hidden' name='idempotency_key' value='window-{secrets.token_hex(12)}'>"
        "<fieldset><legend>买方身份证件（读卡）</legend>"
        "<label for='buyer-id-number'>居民身份证号码</label>"
        "<input id='buyer-id-number' name='id_number' maxlength='18' autocomplete='off' "
        f"value='{e(BUYER.id_number)}' required>"
        "<label for='buyer-name'>姓名</label>"
        f"<input id='buyer-name' name='applicant_name' value='{e(BUYER.name)}' required>"
        "</fieldset>"
        f"<label for='home'>房屋坐落</label><select id='home' name='home'>{homes}</select>"
        "<p><button id='intake-home' type='submit'>受理联动过户</button></p></form>"
    )


async def _clerk_guide(
    state: PortalState, desk: WindowDesk, session: ClerkSession, code: str
) -> dict[str, Any]:
    """The service's guide (part titles) with the clerk's own token, read once."""
    if code not in state.guides:
        got, answer = await call_api(
            state, session.tokens, desk.auth, "clerk", "GET",
            f"/api/v1/services/{quote(code, safe='')}",
        )  # fmt: skip
        if got != 200 or not isinstance(answer, dict):
            return {"code": code}
        state.guides[code] = answer
    return state.guides[code]


async def window_case(request: web.Request) -> web.Response:
    """One case of the window's queue, read with the clerk's own token: its parts by name,
    what each waits for or why it stopped, the combined outcome, the timeline."""
    state = request.app[STATE]
    desk = _desk(request)
    found = clerk_of(request)
    if found is None:
        raise web.HTTPSeeOther("/window")
    _, session = found
    case_id = request.match_info["case_id"]
    try:
        got, case = await call_api(
            state, session.tokens, desk.auth, "clerk", "GET",
            f"/api/v1/cases/{quote(case_id, safe='')}",
        )  # fmt: skip
    except SessionEnded:
        raise web.HTTPSeeOther("/window") from None
    if got != 200 or not isinstance(case, dict):
        return _refused(request, got, case, "办件查询失败")
    code = str(case.get("service", ""))
    titles = part_titles(case, await _clerk_guide(state, desk, session, code))
    handled = "、".join(province(p) for p in case.get("handling_provinces", ()))
    body = (
        f"<section class='case' data-case='{e(case_id)}'>"
        f"<dl class='fields'><dt>办件编号</dt><dd id='case-id'>{e(case_id)}</dd>"
        f"<dt>事项</dt><dd>{e(SERVICE_NAMES.get(code, code))}</dd>"
        f"<dt>办理方式</dt><dd>{e(mode(case.get('mode')))}</dd>"
        f"<dt>收件地</dt><dd>{e(province(case.get('receiving_province')))}</dd>"
        f"<dt>办理地</dt><dd>{e(handled)}</dd>"
        f"<dt>状态</dt><dd><strong class='case-status' data-status='{e(case.get('status', ''))}'>"
        f"{e(status(case.get('status')))}</strong></dd></dl>"
        f"{parts(case, titles)}"
        f"<h2>办理进度</h2>{timeline(case, state.clerk_roster, titles)}</section>"
        f"<p><a class='button secondary' id='case-refresh' href='/window/cases/"
        f"{e(quote(case_id, safe=''))}'>刷新</a> <a href='/window'>返回窗口受理</a></p>"
    )
    return render(request, "办件详情", body, heading_en="Case")


async def window_login(request: web.Request) -> web.Response:
    """Start the clerk's sign-in at the gateway as the window client (code flow + PKCE)."""
    state = request.app[STATE]
    desk = _desk(request)
    raise authorization_redirect(
        state,
        state.clerk_pending,
        client_id=desk.client_id,
        redirect_uri=f"{state.base_url}/window/callback",
        scope=desk.scope,
        login_cookie=state.clerk_login_cookie,
    )


def _failed(request: web.Request, message: str, detail: str, status_: int) -> web.Response:
    return render(
        request,
        "登录未完成",
        f"<p class='warning' id='clerk-error'>{e(message)}</p><p class='en'>{e(detail)}</p>"
        "<p><a class='button' href='/window/login'>重新登录</a></p>",
        status=status_,
        heading_en="Sign-in failed",
    )


async def window_callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    desk = _desk(request)
    try:
        done = await complete_sign_in(
            request,
            state.clerk_pending,
            client_id=desk.client_id,
            auth=desk.auth,
            redirect_uri=f"{state.base_url}/window/callback",
            login_cookie=state.clerk_login_cookie,
        )
    except SignInFailed as failed:
        return _failed(request, failed.message, failed.detail, failed.status)
    state.clerk_sessions.pop(request.cookies.get(state.clerk_cookie, ""), None)
    now = state.clock()
    forget_older(state.clerk_sessions, now - SESSION_LIFETIME, lambda kept: kept.signed_in_at)
    key = secrets.token_urlsafe(24)
    session = ClerkSession(
        subject=str(done.claims["sub"]),
        staff_id=str(done.profile.get("preferred_username", "")),
        name=str(done.profile.get("name", "")),
        acr=str(done.claims.get("acr", "")),
        tokens=done.tokens,
        csrf=secrets.token_urlsafe(24),
        signed_in_at=now,
    )
    state.clerk_sessions[key] = session
    state.clerk_roster[session.subject] = session.name
    console = web.HTTPSeeOther("/window")
    console.set_cookie(state.clerk_cookie, key, httponly=True, samesite="Strict")
    console.del_cookie(state.clerk_login_cookie)
    raise console


async def window_logout(request: web.Request) -> web.Response:
    """End the console session, then the clerk's SSO session at the gateway (RP-initiated
    logout), which revokes the clerk's tokens and every Counter token taken with them."""
    state = request.app[STATE]
    form = await request.post()
    found = clerk_of(request)
    target = f"{state.base_url}/window"
    if found is None or not csrf_ok(found[1].csrf, form):
        raise web.HTTPSeeOther("/window")
    key, session = found
    del state.clerk_sessions[key]
    params = urlencode(
        {"id_token_hint": session.tokens.id_token, "post_logout_redirect_uri": target}
    )
    done = web.HTTPSeeOther(f"{state.gateway}/oauth2/logout?{params}")
    done.del_cookie(state.clerk_cookie)
    raise done


def _scan_ref(form_key: str, code: str) -> dict[str, str]:
    """A scanned material by reference and digest (the demo has no scanner: a stand-in, the
    same for a re-posted form so its retry is the same application)."""
    ref = f"urn:scan:61:{form_key}:{code}"
    return {
        "code": code,
        "ref": ref,
        "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
    }


async def _counter_token(
    state: PortalState, desk: WindowDesk, clerk_token: str, id_number: str
) -> tuple[int, dict[str, Any]]:
    """RFC 8693 token exchange: the applicant's document (subject) and the clerk (actor) → a
    short-lived Counter token for the applicant with the clerk as ``act``."""
    return await token_request(
        state,
        desk.auth,
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": f"{RESIDENT_ID_CARD}:{id_number}",
            "subject_token_type": ID_DOCUMENT_TOKEN_TYPE,
            "actor_token": clerk_token,
            "actor_token_type": ACCESS_TOKEN_TYPE,
            "scope": COUNTER_SCOPE,
        },
    )


def _refused(request: web.Request, got: int, answer: Any, what: str) -> web.Response:
    refusal = answer if isinstance(answer, dict) else {}
    code = str(refusal.get("code") or refusal.get("error") or "")
    return render(
        request,
        what,
        f"<span id='status' data-http-status='{got}' hidden></span>"
        f"<p class='warning' id='answer' data-code='{e(code)}'>{e(problem(code, got))}</p>"
        f"<details><summary>详细信息 <span class='en'>Details</span></summary>"
        f"<pre class='long'>{e(json.dumps(refusal, ensure_ascii=False, indent=1))}</pre></details>"
        "<p><a href='/window'>返回窗口受理</a></p>",
        status=400 if 400 <= got < 500 else 502,
    )


Form = MultiDictProxy[str | bytes | bytearray | FileField]
Application = Callable[[Form, str, str], dict[str, Any]]
"""The case body from the posted form, the applicant's ID number and the form's key."""


async def _take_in(
    request: web.Request, application: Application
) -> tuple[ClerkSession, dict[str, Any]] | web.Response:
    """The intake both forms share: the clerk's session and form (CSRF), a Counter token for
    the applicant by token exchange, then POST /api/v1/cases with it under the form's key.
    The receipt, or the page saying why it was not taken in."""
    state = request.app[STATE]
    desk = _desk(request)
    found = clerk_of(request)
    if found is None:
        raise web.HTTPSeeOther("/window")
    _, session = found
    form = await request.post()
    if not csrf_ok(session.csrf, form):
        return form_expired(request)
    clerk_token = await access_token(state, session.tokens, desk.auth, "clerk")
    id_number = str(form.get("id_number", "")).strip().upper()[:32]
    got, counter = await _counter_token(state, desk, clerk_token, id_number)
    if got != 200:
        return _refused(request, got, counter, "申请人身份识别失败")
    key = str(form.get("idempotency_key", ""))
    body = application(form, id_number, key)
    counter_tokens = Tokens.from_answer(counter, state.clock())
    try:
        got, answer = await call_api(
            state, counter_tokens, desk.auth, "clerk", "POST", "/api/v1/cases",
            json=body, headers={"Idempotency-Key": key},
        )  # fmt: skip
    except SessionEnded:
        return _refused(request, 401, {}, "受理失败")
    if got == 202 and isinstance(answer, dict):
        return session, answer
    return _refused(request, got, answer, "受理失败")


async def window_intake(request: web.Request) -> web.Response:
    """S10: identify the applicant by token exchange, take the disability-card application in
    with that token; the receipt on the console."""
    desk = _desk(request)

    def application(form: Form, id_number: str, key: str) -> dict[str, Any]:
        codes = [str(c) for c in form.getall("material", []) if str(c) in WINDOW_MATERIALS]
        return {
            "service": "disability-card",
            "mode": "proxy",
            "receiving_province": desk.receiving_province,
            "handling_province": desk.handling_province,
            "purpose": "残疾人证异地代收代办",
            "data": {
                "id_number": id_number,
                "name": str(form.get("applicant_name", "")).strip()[:50],
                "disability_category": str(form.get("category", "")),
                "mailing_address": str(form.get("address", ""))[:200],
            },
            "materials": [_scan_ref(key, code) for code in codes],
            "originals_check": {
                "checked": form.get("originals") == "yes",
                "note": str(form.get("note", ""))[:200],
            },
        }

    taken = await _take_in(request, application)
    if isinstance(taken, web.Response):
        return taken
    session, answer = taken
    session.last_receipt = (
        "<div id='receipt' class='notice' role='status'><h2>受理回执</h2>"
        "<dl class='fields'><dt>办件编号</dt>"
        f"<dd><strong id='receipt-case'>{e(answer.get('case_id', ''))}</strong></dd>"
        f"<dt>状态</dt><dd>{e(status(answer.get('status')))}</dd>"
        f"<dt>收件时间</dt><dd>{time_tag(answer.get('received_at'))}（北京时间）</dd></dl></div>"
    )
    raise web.HTTPSeeOther("/window")


async def window_intake_home(request: web.Request) -> web.Response:
    """S13 for a Shaanxi buyer at this window: a Counter token for the buyer, then the linked
    case (receiving province: this window's) with the demo's seller, home and accounts, under
    the seller's grant to this window; then the case's page."""
    state = request.app[STATE]
    desk = _desk(request)

    def application(form: Form, id_number: str, key: str) -> dict[str, Any]:
        template = S13_CASE[3]
        data = template["data"]
        unit = HOMES.get(str(form.get("home", "")), HOMES["demo"])
        body = {
            **template,
            "receiving_province": desk.receiving_province,
            "data": {
                **data,
                "buyer": {
                    **data["buyer"],
                    "id_number": id_number,
                    "name": str(form.get("applicant_name", "")).strip()[:30],
                },
                "property": {**data["property"], "unit": unit},
            },
        }
        return state.with_consent(body, desk.client_id)  # the seller's grant to this window

    taken = await _take_in(request, application)
    if isinstance(taken, web.Response):
        return taken
    _, answer = taken
    raise web.HTTPSeeOther(f"/window/cases/{quote(str(answer.get('case_id', '')), safe='')}")


PAGES = (
    PortalPage("GET", "/window", window, nav=CONSOLE),
    PortalPage("GET", "/window/cases/{case_id}", window_case),
    PortalPage("POST", "/window/intake-home", window_intake_home),
    PortalPage("GET", "/window/login", window_login),
    PortalPage("GET", "/window/callback", window_callback),
    PortalPage("POST", "/window/intake", window_intake),
    PortalPage("POST", "/window/logout", window_logout),
)
