"""我的授权 and 访问记录: a person (or an enterprise's operator) manages who may use their data,
and reads who did.

我的授权 lists the consent grants (授权用证) and, for a person, the delegations (委托用证) given
and received, each with its state in words and a 撤销 button; two forms give new ones. An agent
sees the delegations naming them and may grant consent under one for the person who gave it.
访问记录 is the gateway's access log: who touched my data, from which province, for which
service, for what purpose, under which grant, and how it ended, in Beijing time.

Everything goes through the gateway's API with the person's own token
(``/api/v1/me/consents``, ``/api/v1/me/delegations``, ``/api/v1/me/access-log``); the portal
keeps nothing. An agent's ID number typed into the form goes to the gateway, which keeps only a
keyed hash; the portal neither stores nor shows it again.

Must not: show a grant's raw state or a code where a word exists; keep an ID number.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from gateway.demo.portals.catalogue import guide, person_api, service_name
from gateway.demo.portals.forms import csrf_ok, form_csrf, form_expired
from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import NavEntry, PortalPage
from gateway.demo.portals.signin import signed_in
from gateway.demo.portals.state import STATE as PORTAL_STATE
from gateway.demo.portals.state import PortalSession, PortalState
from gateway.demo.portals.words import e, problem, province, time_tag

MY_GRANTS = NavEntry("我的授权", "My consents", 30)
ACCESS_LOG = NavEntry("访问记录", "Access log", 40)

REQUESTERS: Final = (
    ("demo-bank-shaanxi", "陕西示范银行（信贷审批）"),
    ("demo-portal-shaanxi", "陕西政务服务网"),
    ("demo-portal-qinghai", "青海政务服务网"),
    ("demo-window-shaanxi", "陕西跨省通办窗口"),
)
"""Whom the demo lets a person grant to: registered clients of the gateway, by name."""
_REQUESTER_NAMES: Final = dict(REQUESTERS)
GRANT_STATES: Final = {
    "active": "有效",
    "revoked": "已撤销",
    "expired": "已过期",
    "used_up": "次数已用完",
}
GIVERS: Final = {"subject": "本人", "operator": "经办人代企业", "agent": "代理人代本人"}
LOG_KINDS: Final = {
    "service_call": "查询核验",
    "case_step": "办件",
    "grant_used": "使用授权",
    "grant_refused": "授权被拒",
    "grant_returned": "退回使用次数",
}
OUTCOMES: Final = {"ok": "成功", "denied": "已拒绝", "error": "失败"}
DURATIONS: Final = ((7, "7 天"), (30, "30 天"), (90, "90 天"), (365, "一年"))
GRANT_PROBLEMS: Final = {
    "client.grant_delegation_ended": "您已不再是此人的代理人",
    "client.grant_other_service": "委托范围不包括所选事项",
    "client.not_your_enterprise": "只能为本企业授权",
    "client.not_found": "没有找到这项授权",
    "gateway.consent_store_unavailable": "授权服务暂时不可用，请稍后再试",
}


def _problem(answer: Any, got: int) -> str:
    code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
    return GRANT_PROBLEMS.get(code) or problem(code, got)


def _who(requester: Mapping[str, Any] | None) -> str:
    client = str((requester or {}).get("client") or "")
    where = (requester or {}).get("province")
    named = _REQUESTER_NAMES.get(client, client)
    return f"{named}（{province(where)}）" if where else named


async def _names(state: PortalState, session: PortalSession, codes: list[str]) -> str:
    return "、".join([service_name(await guide(state, session, c)) for c in codes])


def _state(grant: Mapping[str, Any]) -> str:
    value = str(grant.get("state", ""))
    words = GRANT_STATES.get(value, value)
    return f"<span class='grant-state' data-state='{e(value)}'>{e(words)}</span>"


def _revoke_form(path: str, grant: Mapping[str, Any], csrf: str) -> str:
    if grant.get("state") != "active":
        return ""
    gid = str(grant.get("id", ""))
    return (
        f"<form method='post' action='{e(path)}/{e(quote(gid, safe=''))}/revoke' class='inline'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
        f"<button type='submit' class='secondary revoke' data-grant='{e(gid)}'>撤销"
        "<span class='en'> Revoke</span></button></form>"
    )


async def _consent_rows(
    state: PortalState, session: PortalSession, grants: list[dict[str, Any]], csrf: str
) -> str:
    if not grants:
        return "<p id='no-consents'>暂无授权。<span class='en'>No consents given.</span></p>"
    rows = []
    for g in grants:
        uses = "不限" if g.get("max_uses") is None else f"{g.get('uses', 0)} / {g.get('max_uses')}"
        rows.append(
            f"<tr class='consent' data-grant='{e(g.get('id', ''))}'>"
            f"<td>{e(_who(g.get('requester')))}</td>"
            f"<td>{e(await _names(state, session, list(g.get('services') or [])))}</td>"
            f"<td>{e(g.get('purpose') or '')}</td>"
            f"<td>{time_tag(g.get('expires_at'))}</td><td>{e(uses)}</td>"
            f"<td>{e(GIVERS.get(str(g.get('granted_by')), ''))}</td>"
            f"<td>{_state(g)}</td><td>{_revoke_form('/consents', g, csrf)}</td></tr>"
        )
    return (
        "<div class='table-wrap'><table id='consents'><caption>已给出的授权（北京时间）</caption>"
        "<thead><tr><th scope='col'>授权对象</th><th scope='col'>事项</th>"
        "<th scope='col'>用途</th><th scope='col'>有效期至</th><th scope='col'>使用次数</th>"
        "<th scope='col'>授权人</th><th scope='col'>状态</th><th scope='col'>操作</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


async def _delegation_rows(
    state: PortalState,
    session: PortalSession,
    grants: list[dict[str, Any]],
    csrf: str,
    *,
    received: bool,
) -> str:
    table = "delegations-received" if received else "delegations-given"
    if not grants:
        text = "暂无他人委托您办理。" if received else "暂未委托他人。"
        return f"<p id='no-{table}'>{e(text)}</p>"
    rows = []
    for g in grants:
        action = (
            f"<code class='grant-id'>{e(g.get('id', ''))}</code>"
            if received
            else _revoke_form("/delegations", g, csrf)
        )
        rows.append(
            f"<tr class='delegation' data-grant='{e(g.get('id', ''))}'>"
            f"<td>{e(await _names(state, session, list(g.get('services') or [])))}</td>"
            f"<td>{time_tag(g.get('expires_at'))}</td><td>{_state(g)}</td><td>{action}</td></tr>"
        )
    last = "委托编号" if received else "操作"
    caption = "他人委托我办理" if received else "我委托他人办理"
    return (
        f"<div class='table-wrap'><table id='{table}'><caption>{e(caption)}（北京时间）</caption>"
        "<thead><tr><th scope='col'>事项</th><th scope='col'>有效期至</th>"
        f"<th scope='col'>状态</th><th scope='col'>{e(last)}</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _service_boxes(services: list[dict[str, Any]], name: str, prefix: str) -> str:
    return "".join(
        f"<label class='check'><input type='checkbox' name='{e(name)}' "
        f"id='{e(prefix)}-{e(s.get('code', ''))}' value='{e(s.get('code', ''))}'> "
        f"{e((s.get('name') or {}).get('zh', s.get('code', '')))}</label>"
        for s in services
    )


def _durations(field: str) -> str:
    options = "".join(
        f"<option value='{days}'{' selected' if days == 30 else ''}>{e(text)}</option>"
        for days, text in DURATIONS
    )
    return f"<label for='{field}'>有效期</label><select id='{field}' name='days'>{options}</select>"


def _consent_form(services: list[dict[str, Any]], csrf: str, session: PortalSession) -> str:
    requesters = "".join(
        f"<option value='{e(client)}'>{e(name)}</option>" for client, name in REQUESTERS
    )
    whose = "本企业" if session.acr == "LP" else "本人"
    return (
        "<form method='post' action='/consents' id='consent-form'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
        f"<fieldset><legend>授权对象与范围（以{e(whose)}名义）</legend>"
        "<label for='requester'>授权对象</label>"
        f"<select id='requester' name='requester'>{requesters}</select>"
        f"<fieldset class='services'><legend>可查询的事项</legend>"
        f"{_service_boxes(services, 'service', 'consent-service')}</fieldset>"
        "<label for='purpose'>用途</label>"
        "<input id='purpose' name='purpose' required maxlength='200' placeholder='如：贷款审批'>"
        f"{_durations('consent-days')}"
        "<label for='max-uses'>最多使用次数（留空为不限）</label>"
        "<input id='max-uses' name='max_uses' inputmode='numeric' pattern='[0-9]*'>"
        "</fieldset><button type='submit' id='give-consent'>授权</button></form>"
    )


def _delegation_form(services: list[dict[str, Any]], csrf: str) -> str:
    return (
        "<form method='post' action='/delegations' id='delegation-form'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
        "<fieldset><legend>委托代理人</legend>"
        "<label for='agent-id-type'>代理人证件类型</label>"
        "<select id='agent-id-type' name='id_type'><option value='111'>居民身份证</option>"
        "</select><label for='agent-id-number'>代理人证件号码</label>"
        "<input id='agent-id-number' name='id_number' required autocomplete='off'"
        " maxlength='18'>"
        "<fieldset class='services'><legend>委托办理的事项</legend>"
        f"{_service_boxes(services, 'service', 'delegation-service')}</fieldset>"
        f"{_durations('delegation-days')}</fieldset>"
        "<p class='en'>证件号码只用于核对代理人身份，不在门户保存。</p>"
        "<button type='submit' id='give-delegation'>委托</button></form>"
    )


def _agent_form(received: list[dict[str, Any]], csrf: str, services: list[dict[str, Any]]) -> str:
    """An agent grants consent for the person who delegated to them."""
    active = [d for d in received if d.get("state") == "active"]
    if not active:
        return ""
    options = "".join(
        f"<option value='{e(d.get('id', ''))}'>{e(d.get('id', ''))}</option>" for d in active
    )
    requesters = "".join(
        f"<option value='{e(client)}'>{e(name)}</option>" for client, name in REQUESTERS
    )
    return (
        "<h3>以代理人身份授权</h3>"
        "<form method='post' action='/consents' id='agent-consent-form'>"
        f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
        "<fieldset><legend>代被代理人授权</legend>"
        f"<label for='agent-delegation'>依据的委托</label>"
        f"<select id='agent-delegation' name='delegation'>{options}</select>"
        "<label for='agent-requester'>授权对象</label>"
        f"<select id='agent-requester' name='requester'>{requesters}</select>"
        "<label for='agent-service'>事项</label>"
        f"<select id='agent-service' name='service'>{_delegated_services(active, services)}"
        "</select>"
        "<label for='agent-purpose'>用途</label>"
        "<input id='agent-purpose' name='purpose' required maxlength='200'>"
        f"{_durations('agent-days')}</fieldset>"
        "<button type='submit' id='give-agent-consent'>代为授权</button></form>"
    )


def _delegated_services(active: list[dict[str, Any]], services: list[dict[str, Any]]) -> str:
    """The services the active delegations cover, by name, as options."""
    names = {
        str(s.get("code")): str((s.get("name") or {}).get("zh") or s.get("code")) for s in services
    }
    codes = dict.fromkeys(str(c) for d in active for c in d.get("services") or [])
    return "".join(f"<option value='{e(c)}'>{e(names.get(c, c))}</option>" for c in codes)


async def my_grants(request: web.Request) -> web.Response:
    state = request.app[PORTAL_STATE]
    key, session = signed_in(request)
    csrf = form_csrf(state, key, "grants")
    got, consents = await person_api(state, session, "GET", "/api/v1/me/consents")
    if got != 200 or not isinstance(consents, dict):
        return render(
            request,
            "我的授权",
            f"<p class='warning' id='grants-failed'>授权查询失败：{e(_problem(consents, got))}</p>",
            status=502 if got >= 500 else 200,
            heading_en="My consents",
        )
    _, catalogue = await person_api(state, session, "GET", "/api/v1/services")
    services = [
        s for s in (catalogue.get("services", []) if isinstance(catalogue, dict) else [])
        if isinstance(s, dict)
    ]  # fmt: skip
    body = [
        "<p>授权后，被授权方可在有效期内、为所写用途查询您的相关数据；您可随时撤销，"
        "撤销后立即失效。每次使用都记入访问记录。</p>",
        "<h2>授权用证</h2>",
        await _consent_rows(state, session, list(consents.get("consents") or []), csrf),
        "<h3>新的授权</h3>",
        _consent_form(services, csrf, session),
    ]
    if session.acr != "LP":
        got, delegations = await person_api(state, session, "GET", "/api/v1/me/delegations")
        given = list(delegations.get("given") or []) if isinstance(delegations, dict) else []
        received = list(delegations.get("received") or []) if isinstance(delegations, dict) else []
        body += [
            "<h2>委托用证</h2>",
            await _delegation_rows(state, session, given, csrf, received=False),
            await _delegation_rows(state, session, received, csrf, received=True),
            "<h3>新的委托</h3>",
            _delegation_form(services, csrf),
            _agent_form(received, csrf, services),
        ]
    return render(request, "我的授权", "".join(body), heading_en="My consents")


def _expiry(form: Mapping[str, Any]) -> str:
    days = str(form.get("days", "30"))
    count = int(days) if days.isdigit() and int(days) in dict(DURATIONS) else 30
    return (datetime.now(UTC) + timedelta(days=count)).isoformat(timespec="seconds")


def _not_done(request: web.Request, answer: Any, got: int) -> web.Response:
    code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
    return render(
        request,
        "授权未完成",
        f"<span id='status' data-http-status='{got}' hidden></span>"
        f"<p class='warning' id='answer' data-code='{e(code)}'>{e(_problem(answer, got))}</p>"
        "<p><a href='/consents'>返回我的授权</a></p>",
        status=400 if 400 <= got < 500 else 502,
        heading_en="Not done",
    )


async def give_consent(request: web.Request) -> web.Response:
    state = request.app[PORTAL_STATE]
    key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, key, "grants"), form):
        return form_expired(request)
    body: dict[str, Any] = {
        "requester": {"client": str(form.get("requester", ""))},
        "services": [str(s) for s in form.getall("service", [])],
        "purpose": str(form.get("purpose", "")).strip(),
        "expires_at": _expiry(form),
    }
    uses = str(form.get("max_uses", "")).strip()
    if uses.isdigit():
        body["max_uses"] = int(uses)
    if form.get("delegation"):
        body["delegation"] = str(form["delegation"])
    got, answer = await person_api(state, session, "POST", "/api/v1/me/consents", json=body)
    if got == 201:
        raise web.HTTPSeeOther("/consents")
    return _not_done(request, answer, got)


async def give_delegation(request: web.Request) -> web.Response:
    state = request.app[PORTAL_STATE]
    key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, key, "grants"), form):
        return form_expired(request)
    body = {
        "agent": {
            "id_type": str(form.get("id_type", "111")),
            "id_number": str(form.get("id_number", "")).strip(),
        },
        "services": [str(s) for s in form.getall("service", [])],
        "expires_at": _expiry(form),
    }
    got, answer = await person_api(state, session, "POST", "/api/v1/me/delegations", json=body)
    if got == 201:
        raise web.HTTPSeeOther("/consents")
    return _not_done(request, answer, got)


async def _revoke(request: web.Request, kind: str) -> web.Response:
    state = request.app[PORTAL_STATE]
    key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, key, "grants"), form):
        return form_expired(request)
    gid = quote(request.match_info["grant_id"], safe="")
    got, answer = await person_api(state, session, "DELETE", f"/api/v1/me/{kind}/{gid}")
    if got == 200:
        raise web.HTTPSeeOther("/consents")
    return _not_done(request, answer, got)


async def revoke_consent(request: web.Request) -> web.Response:
    return await _revoke(request, "consents")


async def revoke_delegation(request: web.Request) -> web.Response:
    return await _revoke(request, "delegations")


async def access_log(request: web.Request) -> web.Response:
    """GET /api/v1/me/access-log with the person's token: newest first, one page of 50."""
    state = request.app[PORTAL_STATE]
    _, session = signed_in(request)
    cursor = request.query.get("cursor", "")
    path = "/api/v1/me/access-log?limit=50" + (
        f"&cursor={quote(cursor, safe='')}" if cursor else ""
    )
    got, log = await person_api(state, session, "GET", path)
    if got != 200 or not isinstance(log, dict):
        return render(
            request,
            "访问记录",
            f"<p class='warning' id='log-failed'>访问记录查询失败：{e(_problem(log, got))}</p>",
            status=502 if got >= 500 else 200,
            heading_en="Access log",
        )
    rows = []
    for entry in log.get("entries") or []:
        if not isinstance(entry, dict):
            continue
        service = entry.get("service_name") or {}
        where = entry.get("receiving_province") or {}
        outcome = str(entry.get("outcome") or "")
        grant = entry.get("grant_id")
        rows.append(
            f"<tr class='access' data-kind='{e(entry.get('kind', ''))}'>"
            f"<td>{time_tag(entry.get('time'))}</td>"
            f"<td>{e(LOG_KINDS.get(str(entry.get('kind')), ''))}</td>"
            f"<td>{e(service.get('zh') or entry.get('service') or '')}</td>"
            f"<td>{e(_REQUESTER_NAMES.get(str(entry.get('client')), entry.get('client') or ''))}"
            f"</td><td>{e(where.get('name') or '')}</td>"
            f"<td>{e(entry.get('purpose') or '')}</td>"
            f"<td>{f'<code class=grant-id>{e(grant)}</code>' if grant else '本人办理'}</td>"
            f"<td data-outcome='{e(outcome)}'>{e(OUTCOMES.get(outcome, outcome))}</td></tr>"
        )
    table = (
        "<div class='table-wrap'><table id='access-log'><caption>谁在何时、为何使用了我的数据"
        "（北京时间）</caption><thead><tr><th scope='col'>时间</th><th scope='col'>类别</th>"
        "<th scope='col'>事项</th><th scope='col'>访问方</th><th scope='col'>地区</th>"
        "<th scope='col'>用途</th><th scope='col'>依据</th><th scope='col'>结果</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        if rows
        else "<p id='no-access'>暂无访问记录。<span class='en'>Nothing yet.</span></p>"
    )
    more = log.get("next_cursor")
    next_link = (
        f"<p><a id='older' href='/access-log?cursor={e(quote(str(more), safe=''))}'>"
        "更早的记录</a></p>"
        if more
        else ""
    )
    return render(
        request,
        "访问记录",
        "<p>记录中只以加密摘要标识您本人，不显示证件号码。</p>" + table + next_link,
        heading_en="Access log",
    )


PAGES = (
    PortalPage("GET", "/consents", my_grants, nav=MY_GRANTS),
    PortalPage("POST", "/consents", give_consent),
    PortalPage("POST", "/consents/{grant_id}/revoke", revoke_consent),
    PortalPage("POST", "/delegations", give_delegation),
    PortalPage("POST", "/delegations/{grant_id}/revoke", revoke_delegation),
    PortalPage("GET", "/access-log", access_log, nav=ACCESS_LOG),
)
