"""The portal's front page, its service catalogue (事项目录) and guides, and its service calls.

Signed out, the front page offers two entries: 个人 (a person signs in at the portal's own
province's platform) and 法人 (an enterprise's operator at the legal-person platform), and on a
portal with a window desk the staff entry. Signed in, it lists the services this portal may
call (the gateway's catalogue answers only those), each with the level it needs in words, its
handling modes and provinces; a guide page per service lists its materials. The portal's
ready-made calls are buttons named after the service and operation; their answers come back as
labelled fields (results.py), and a refusal for the level offers a step-up.

Must not: show a service the portal may not call, or a code where the guide has a name.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.demo.examples import DemoCall
from gateway.demo.portals.forms import csrf_ok, form_csrf, form_expired
from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import NavEntry, PortalPage
from gateway.demo.portals.results import render_value
from gateway.demo.portals.signin import session_of, signed_in
from gateway.demo.portals.state import STATE, PortalSession, PortalState
from gateway.demo.portals.tokens import call_api
from gateway.demo.portals.words import MATERIAL_SOURCES, e, level_needed, mode, problem, province

CATALOGUE = NavEntry("事项目录", "Services", 10)


async def person_api(
    state: PortalState, session: PortalSession, method: str, path: str, **kw: Any
) -> tuple[int, Any]:
    return await call_api(state, session.tokens, state.auth, "person", method, path, **kw)


async def guide(state: PortalState, session: PortalSession, code: str) -> dict[str, Any]:
    """The gateway's guide of ``code`` (names, materials, result labels), read once."""
    if code not in state.guides:
        status, answer = await person_api(
            state, session, "GET", f"/api/v1/services/{quote(code, safe='')}"
        )
        if status != 200 or not isinstance(answer, dict):
            return {"code": code, "name": {"zh": code, "en": ""}}
        state.guides[code] = answer
    return state.guides[code]


def service_name(guide_: dict[str, Any]) -> str:
    name = guide_.get("name") or {}
    return str(name.get("zh") or guide_.get("code", ""))


def _entries(state: PortalState) -> str:
    staff = (
        "<div class='entry'><h2>窗口工作人员</h2><p class='en'>Window staff</p>"
        "<p>跨省通办窗口受理，使用工作人员账号登录。</p>"
        "<p><a class='button' id='window-console' href='/window'>进入窗口受理</a></p></div>"
        if state.window is not None
        else ""
    )
    return (
        "<p>登录后可查询、办理跨省通办事项，查看我的办件。</p>"
        "<div class='entries'>"
        "<div class='entry'><h2>个人办事</h2><p class='en'>For persons</p>"
        "<p>使用本人账号，通过统一身份认证登录。</p>"
        "<p><a class='button' id='sign-in' href='/login'>个人登录</a></p></div>"
        "<div class='entry'><h2>法人办事</h2><p class='en'>For enterprises</p>"
        "<p>企业经办人使用法人账号登录。</p>"
        "<p><a class='button' id='sign-in-enterprise' href='/login?as=enterprise'>法人登录</a>"
        "</p></div>"
        f"{staff}</div>"
    )


async def home(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found = session_of(request)
    if found is None:
        return render(request, "欢迎", _entries(state), heading_en="Welcome")
    session_key, session = found
    status, catalogue = await person_api(state, session, "GET", "/api/v1/services")
    services = catalogue.get("services", []) if status == 200 else []
    cards = "".join(_card(s) for s in services)
    listing = (
        f"<ul class='cards' id='catalogue'>{cards}</ul>"
        if services
        else f"<p class='warning'>事项目录暂不可用（{status}）。</p>"
    )
    allowed = {s.get("code") for s in services}
    csrf = form_csrf(state, session_key, "call")
    buttons = []
    for i, call in enumerate(state.calls):
        if call.service not in allowed:
            continue
        info = await guide(state, session, call.service)
        operation = (info.get("operations") or {}).get(call.body["operation"], {})
        op_name = (operation.get("name") or {}).get("zh", call.body["operation"])
        buttons.append(
            "<form method='post' action='/call' class='inline'>"
            f"<input type='hidden' name='call' value='{i}'>"
            f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
            f"<button type='submit' id='call-{i}'>{e(service_name(info))} · {e(op_name)}</button>"
            "</form>"
        )
    calls = (
        "<h2>在线办理</h2><p>以下查询使用示范数据，向办理地系统实时发起。</p>" + "".join(buttons)
        if buttons
        else ""
    )
    return render(
        request,
        "事项目录",
        f"{listing}{calls}",
        heading_en="Services",
    )


def _card(service: dict[str, Any]) -> str:
    code = str(service.get("code", ""))
    name = service.get("name") or {}
    provinces = "、".join(province(p) for p in service.get("handling_provinces", ()))
    modes = "".join(f"<span class='tag'>{e(mode(m))}</span>" for m in service.get("modes", ()))
    return (
        f"<li class='card' data-service='{e(code)}'><h3>{e(name.get('zh', code))}</h3>"
        f"<p class='en'>{e(name.get('en', ''))}</p><p>{modes}</p>"
        f"<p class='level'>{e(level_needed(service.get('min_level')))}</p>"
        f"<p>办理地：{e(provinces)}</p>"
        f"<p><a href='/services/{e(quote(code, safe=''))}'>办事指南<span class='en'> Guide</span>"
        "</a></p></li>"
    )


async def service_guide(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session_key, session = signed_in(request)
    info = await guide(state, session, request.match_info["code"])
    if "operations" not in info:
        raise web.HTTPNotFound()
    description = (info.get("description") or {}).get("zh", "")
    materials = "".join(
        f"<li>{e(m['name']['zh'])}<span class='en'> {e(m['name'].get('en', ''))}</span>"
        f"（{e(_source(m.get('source')))}{'' if m.get('required', True) else '，可选'}）</li>"
        for m in info.get("materials", ())
    )
    pairs = dict.fromkeys(  # one line per province pair, whatever the operations
        (
            a.get("receiving_name") if a.get("receiving") != "*" else "各省",
            a.get("handling_name", ""),
        )
        for a in info.get("agreements", ())
    )
    agreements = "".join(f"<li>{e(rec)} → {e(hand)}</li>" for rec, hand in pairs)
    body = (
        f"<p>{e(description)}</p>"
        "<dl class='fields'><dt>认证要求</dt>"
        f"<dd class='level'>{e(level_needed(info.get('min_level')))}</dd>"
        f"<dt>办理方式</dt><dd>{'、'.join(e(mode(m)) for m in info.get('modes', ()))}</dd>"
        + (
            f"<dt>承诺时限</dt><dd>{int(info['time_limit_days'])} 个工作日</dd>"
            if info.get("time_limit_days")
            else ""
        )
        + ("<dt>授权</dt><dd>需持证人授权（授权用证）</dd>" if info.get("consent_required") else "")
        + "</dl>"
        + (f"<h2>申请材料</h2><ul id='materials'>{materials}</ul>" if materials else "")
        + _linked_steps(info)
        + (f"<h2>通办范围</h2><ul>{agreements}</ul>" if agreements else "")
        + _applications(state, session_key, info)
        + "<p><a href='/'>返回事项目录</a></p>"
    )
    return render(
        request, service_name(info), body, heading_en=(info.get("name") or {}).get("en", "")
    )


def _linked_steps(info: dict[str, Any]) -> str:
    """联动办理: the steps one application goes through, in order, and what waits for what."""
    linked = info.get("linked")
    if not isinstance(linked, dict):
        return ""
    titles = {
        str(p.get("name")): str((p.get("title") or {}).get("zh") or p.get("name"))
        for p in linked.get("parts", ())
        if isinstance(p, dict)
    }
    steps = []
    for p in linked.get("parts", ()):
        if not isinstance(p, dict):
            continue
        where = province(p["handling_province"]) if p.get("handling_province") else "申请人户籍地"
        after = "、".join(titles.get(str(a), str(a)) for a in p.get("after", ()))
        notes = [f"{where}办理"]
        if after:
            notes.append(f"在{after}办结后办理")
        if not p.get("required", True):
            notes.append("可选：未办成不影响其他环节")
        if p.get("undone_if_the_case_fails"):
            notes.append("申请未能办结时自动撤回")
        steps.append(
            f"<li data-part='{e(p.get('name', ''))}'><strong>{e(titles[str(p.get('name'))])}"
            f"</strong>（{e('；'.join(notes))}）</li>"
        )
    return (
        "<h2>办理环节（联动办理）</h2>"
        "<p>一次申请，各环节按顺序自动办理，前一环节的结果自动带入下一环节；"
        "必办环节未能办结时，已办环节自动撤回。</p>"
        f"<ol id='linked-steps'>{''.join(steps)}</ol>"
    )


def _applications(state: PortalState, session_key: str, info: dict[str, Any]) -> str:
    """Buttons that file the demo's applications of this service as cases."""
    code = str(info.get("code", ""))
    offered = [(i, a) for i, a in enumerate(state.applications) if a.service == code]
    if not offered:
        return ""
    csrf = form_csrf(state, session_key, "apply")
    forms = "".join(
        "<form method='post' action='/apply' class='inline'>"
        f"<input type='hidden' name='application' value='{i}'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
        # One key per rendered form: a double click files one case.
        f"<input type='hidden' name='key' value='portal-{secrets.token_hex(12)}'>"
        f"<button type='submit' id='apply-{i}'>{e(a.title)}</button></form>"
        for i, a in offered
    )
    return f"<h2>在线申请</h2><p>以下申请使用示范数据，提交后在「我的办件」查看进度。</p>{forms}"


async def apply(request: web.Request) -> web.Response:
    """File a demo application as a case with the person's own token; then 我的办件."""
    state = request.app[STATE]
    session_key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, session_key, "apply"), form):
        return form_expired(request)
    try:
        application = state.applications[int(str(form.get("application", "")))]
    except (ValueError, IndexError):
        raise web.HTTPBadRequest() from None
    key = str(form.get("key", ""))
    status, answer = await person_api(
        state,
        session,
        "POST",
        "/api/v1/cases",
        json=state.with_consent(application.body, state.client_id),
        headers={"Idempotency-Key": key},
    )
    info = await guide(state, session, application.service)
    if status == 202 and isinstance(answer, dict):
        raise web.HTTPSeeOther(f"/cases#c-{quote(str(answer.get('case_id', '')), safe='')}")
    code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
    return render(
        request,
        service_name(info),
        f"<p class='bad' id='answer' data-code='{e(code)}'>未能受理：{e(problem(code, status))}</p>"
        "<p><a href='/'>返回事项目录</a></p>",
        status=422 if status < 500 else 502,
    )


def _source(source: object) -> str:
    return MATERIAL_SOURCES.get(str(source), str(source))


async def call(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session_key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, session_key, "call"), form):
        # Another site's form posting here with the citizen's cookie: no call on her behalf.
        return form_expired(request)
    try:
        demo = state.calls[int(str(form.get("call", "0")))]
    except (ValueError, IndexError):
        demo = state.calls[0]
    headers = {"Idempotency-Key": demo.idempotency_key} if demo.idempotency_key else {}
    status, answer = await person_api(
        state,
        session,
        "POST",
        f"/api/v1/services/{demo.service}/calls",
        json=demo.body,
        headers=headers,
    )
    info = await guide(state, session, demo.service)
    return render(request, service_name(info), _answer(demo, info, status, answer))


def _answer(demo: DemoCall, info: dict[str, Any], status: int, answer: Any) -> str:
    operation = (info.get("operations") or {}).get(demo.body["operation"], {})
    labels = operation.get("result_fields") or {}
    op_name = (operation.get("name") or {}).get("zh", demo.body["operation"])
    marker = f"<span id='status' data-http-status='{status}' hidden></span>"
    where = (
        f"<p>{e(op_name)}：{e(province(demo.body.get('receiving_province')))}受理，"
        f"{e(province(demo.body.get('handling_province')))}办理。</p>"
    )
    if status == 200 and isinstance(answer, dict):
        return (
            f"{marker}{where}<p class='ok'>查询成功 <span class='en'>Answered</span></p>"
            f"<div id='answer'>{render_value(answer.get('data'), labels)}</div>"
            f"<p class='en'>请求编号 Request {e(answer.get('request_id', ''))}</p>"
            "<p><a href='/'>返回事项目录</a></p>"
        )
    refusal = answer if isinstance(answer, dict) else {}
    code = str(refusal.get("code", ""))
    step_up = ""
    if status == 403 and code == "client.insufficient_level":
        need = str(refusal.get("required", "L3"))
        step_up = (
            f"<p id='step-up'>本事项{e(level_needed(need))}，请提升认证等级后再办理。</p>"
            f"<p><a class='button' id='step-up-link' href='/login?acr={e(need)}'>"
            "提升认证等级<span class='en'> Step up</span></a></p>"
        )
    return (
        f"{marker}{where}<p class='bad' id='answer' data-code='{e(code)}'>未能办理："
        f"{e(problem(code, status))}</p>"
        + (f"<p class='en'>{e(refusal['detail'])}</p>" if refusal.get("detail") else "")
        + f"{step_up}<p><a href='/'>返回事项目录</a></p>"
    )


PAGES = (
    PortalPage("GET", "/", home, nav=CATALOGUE),
    PortalPage("GET", "/services/{code}", service_guide),
    PortalPage("POST", "/call", call),
    PortalPage("POST", "/apply", apply),
)
