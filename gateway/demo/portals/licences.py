"""亮证: a citizen shows a licence with a time-limited code; a window clerk checks it.

``/licences`` (a signed-in person): the holder picks a licence type and gives the ID number the
issuer searches by (kept nowhere: sent once to the gateway, which checks it is the signed-in
person's); the gateway answers with a single-use code and its QR code, valid three minutes.
``/window/licences`` (a clerk at the console): the clerk scans or types the code, picks the
service she checks it for, and sees the licence's status at its issuer and only the fields that
service needs (the others masked).

Must not: keep an ID number or a code.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.demo.portals.catalogue import person_api
from gateway.demo.portals.forms import csrf_ok, form_csrf, form_expired
from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import NavEntry, PortalPage
from gateway.demo.portals.signin import signed_in
from gateway.demo.portals.state import STATE
from gateway.demo.portals.tokens import call_api
from gateway.demo.portals.window import clerk_of
from gateway.demo.portals.words import e, problem, province

MY_LICENCES = NavEntry("我的证照", "My licences", 30, audience=frozenset({"person"}))
LICENCE_CHECK = NavEntry(
    "亮证核验", "Licence check", 55, audience=frozenset({"clerk"}), window_only=True
)
LICENCE_TYPES = {
    "birth-medical-certificate": "出生医学证明",
    "real-estate-certificate": "不动产权证书",
}
CHECK_SERVICES = {"newborn-bundle": "出生一件事"}


def _refused(request: web.Request, heading: str, got: int, answer: Any, back: str) -> web.Response:
    code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
    return render(
        request,
        heading,
        f"<span id='status' data-http-status='{got}' hidden></span>"
        f"<p class='warning' id='answer' data-code='{e(code)}' role='alert'>"
        f"{e(problem(code, got))}</p><p><a href='{back}'>返回</a></p>",
        status=400 if 400 <= got < 500 else 502,
        heading_en="Refused",
    )


async def my_licences(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key, _session = signed_in(request)
    options = "".join(f"<option value='{e(k)}'>{e(v)}</option>" for k, v in LICENCE_TYPES.items())
    body = (
        "<p>向签发地核验后生成亮证码，三分钟内有效，只能使用一次。"
        "工作人员扫码或输入亮证码即可核验，无需出示纸质证照。</p>"
        "<p class='en'>A code valid three minutes, once, after the issuer has verified the "
        "licence.</p>"
        "<form method='post' action='/licences/present'>"
        f"<input type='hidden' name='csrf' value='{e(form_csrf(state, key, 'present'))}'>"
        f"<label for='licence-type'>证照</label><select id='licence-type' name='type'>{options}"
        "</select><label for='holder-id'>本人居民身份证号码"
        "（仅用于在签发地查找证照，不保存）</label>"
        "<input id='holder-id' name='holder_id' maxlength='18' autocomplete='off' required>"
        "<p><button id='present' type='submit'>亮证</button></p></form>"
    )
    return render(request, "我的证照", body, heading_en="My licences")


async def present(request: web.Request) -> web.Response:
    """POST /api/v1/licences/presentations with the person's token: the code and its QR."""
    state = request.app[STATE]
    key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, key, "present"), form):
        return form_expired(request)
    body = {
        "type": str(form.get("type", ""))[:64],
        "holder_id": str(form.get("holder_id", "")).strip().upper()[:32],
    }
    got, answer = await person_api(
        state, session, "POST", "/api/v1/licences/presentations", json=body
    )
    if got != 201 or not isinstance(answer, dict):
        return _refused(request, "未能亮证", got, answer, "/licences")
    licence = answer.get("licence") or {}
    name = LICENCE_TYPES.get(str(licence.get("type")), str(licence.get("type")))
    page = (
        f"<p id='presented'>{e(name)} {e(licence.get('number', ''))}"
        f"（{e(province(licence.get('issuing_province')))}签发，已向签发地核验）</p>"
        "<p><img id='qr' alt='亮证二维码' width='240' height='240' "
        f"src='{e(answer['qr_svg'])}'></p>"
        f"<p>亮证码：<code id='presentation-code'>{e(answer['code'])}</code></p>"
        f"<p id='expires' data-expires='{e(answer['expires_at'])}'>"
        f"{int(answer.get('expires_in', 0)) // 60} 分钟内有效，仅可使用一次。</p>"
        "<p><a href='/licences'>返回</a></p>"
    )
    return render(request, "亮证", page, heading_en="Show a licence")


async def licence_check(request: web.Request) -> web.Response:
    found = clerk_of(request)
    if found is None:
        raise web.HTTPSeeOther("/window")
    _key, session = found
    options = "".join(f"<option value='{e(k)}'>{e(v)}</option>" for k, v in CHECK_SERVICES.items())
    body = (
        "<form method='post' action='/window/licences/check'>"
        f"<input type='hidden' name='csrf' value='{e(session.csrf)}'>"
        "<label for='code'>亮证码（扫码或输入）</label>"
        "<textarea id='code' name='code' rows='3' required></textarea>"
        f"<label for='check-service'>核验用于事项</label><select id='check-service' name='service'>"
        f"{options}</select><p><button id='check' type='submit'>核验</button></p></form>"
    )
    return render(request, "亮证核验", body, heading_en="Licence check")


async def check(request: web.Request) -> web.Response:
    """POST /api/v1/licences/presentations/check with the clerk's own token."""
    state = request.app[STATE]
    found = clerk_of(request)
    form = await request.post()
    if found is None or not csrf_ok(found[1].csrf, form):
        return form_expired(request)
    desk = state.window
    if desk is None:
        raise web.HTTPNotFound()
    _key, session = found
    got, answer = await call_api(
        state,
        session.tokens,
        desk.auth,
        "clerk",
        "POST",
        "/api/v1/licences/presentations/check",
        json={
            "code": str(form.get("code", "")).strip()[:1024],
            "service": str(form.get("service")),
        },
    )
    if got != 200 or not isinstance(answer, dict):
        return _refused(request, "核验未通过", got, answer, "/window/licences")
    licence = answer.get("licence") or {}
    fields = answer.get("fields") or {}
    labels = answer.get("labels") or {}
    rows = "".join(
        f"<tr data-field='{e(k)}'><th scope='row'>{e((labels.get(k) or {}).get('zh') or k)}</th>"
        f"<td>{e(v)}</td></tr>"
        for k, v in fields.items()
    )
    page = (
        f"<p id='licence-status' data-status='{e(licence.get('status', ''))}'>"
        f"{e(licence.get('name', ''))} {e(licence.get('number', ''))}：签发地"
        f"（{e(licence.get('issuer', ''))}）核验有效，电子印章验证通过。</p>"
        "<div class='table-wrap'><table id='licence-fields'>"
        "<caption>证照信息（与本事项无关的已隐去）"
        f"</caption><tbody>{rows}</tbody></table></div>"
        "<p><a class='button secondary' id='check-another' href='/window/licences'>继续核验</a></p>"
    )
    return render(request, "亮证核验", page, heading_en="Licence check")


PAGES = (
    PortalPage("GET", "/licences", my_licences, nav=MY_LICENCES),
    PortalPage("POST", "/licences/present", present),
    PortalPage("GET", "/window/licences", licence_check, nav=LICENCE_CHECK),
    PortalPage("POST", "/window/licences/check", check),
)
