"""我的办件: a signed-in person follows her cases, and supplies what a handling province asks for.

Each case shows its service by name, where it was taken in and where it is handled (province
names), its status in words and its timeline in Beijing time. A case of several parts lists
each part by name (a linked case's 联动办理 steps: what each waits for, what was undone or
never sent) and, once closed, its combined outcome. A part waiting for material (补齐补正)
lists what is missing with a form to supply it (an Idempotency-Key per rendered form, so a
double click sends it once).

Must not: show another person's case (the gateway answers only hers), or a raw status value.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.demo.portals.catalogue import guide, person_api, service_name
from gateway.demo.portals.forms import csrf_ok, form_csrf, form_expired
from gateway.demo.portals.layout import render
from gateway.demo.portals.pages import NavEntry, PortalPage
from gateway.demo.portals.signin import signed_in
from gateway.demo.portals.state import STATE, PortalSession, PortalState
from gateway.demo.portals.words import (
    e,
    mode,
    part_status,
    problem,
    province,
    reason,
    status,
    time_tag,
)

MY_CASES = NavEntry("我的办件", "My cases", 20)


def part_titles(case: Mapping[str, Any], guide_: Mapping[str, Any]) -> dict[int, str]:
    """Each part's name for people: a linked part's title from the service guide, else its
    operation's name, else its number."""
    linked = guide_.get("linked") or {}
    titled = {
        str(p.get("name")): str((p.get("title") or {}).get("zh") or p.get("name"))
        for p in linked.get("parts", ())
        if isinstance(p, dict)
    }
    operations = guide_.get("operations") or {}
    names: dict[int, str] = {}
    for p in case.get("parts", ()):
        if not isinstance(p, dict):
            continue
        number = int(p.get("part", 0))
        operation = (operations.get(str(p.get("operation"))) or {}).get("name") or {}
        names[number] = (
            titled.get(str(p.get("name")))
            or str(operation.get("zh") or "")
            or f"第 {number + 1} 部分"
        )
    return names


def timeline(
    case: Mapping[str, Any],
    actors: Mapping[str, str] | None = None,
    titles: Mapping[int, str] | None = None,
) -> str:
    """The case's timeline, oldest first, in Beijing time; a step someone did for the applicant
    names them when ``actors`` knows their pairwise id (the console knows its own clerks); a
    part's step names the part (``titles``)."""
    rows = []
    for t in case.get("timeline", ()):
        if not isinstance(t, dict):
            continue
        number = t.get("part")
        part = ""
        if isinstance(number, int):
            part = f"（{(titles or {}).get(number) or f'第 {number + 1} 部分'}：" + (
                f"{part_status(t.get('part_status'))}）"
            )
        actor = ""
        if t.get("actor"):
            named = (actors or {}).get(str(t["actor"]))
            actor = f"，办理人：{e(named)}" if named else "，窗口工作人员办理"
        said = reason(t.get("reason"))
        reason_ = f"：{e(said)}" if said else ""
        rows.append(
            f"<li>{time_tag(t.get('at'))} <span class='to' data-status='{e(t.get('to', ''))}'>"
            f"{e(status(t.get('to')))}</span>{e(part)}{actor}{reason_}</li>"
        )
    return f"<ol class='timeline'>{''.join(rows)}</ol>"


def parts(case: Mapping[str, Any], titles: Mapping[int, str] | None = None) -> str:
    """Each part by name: who handles it, how far it is, what it waits for, why it stopped;
    then, once a case of several parts closed, its combined outcome."""
    titles = titles or {}
    by_name = {
        str(p.get("name")): titles.get(int(p.get("part", 0)), str(p.get("name")))
        for p in case.get("parts", ())
        if isinstance(p, dict) and p.get("name")
    }
    items = []
    for p in case.get("parts", ()):
        if not isinstance(p, dict):
            continue
        number = int(p.get("part", 0))
        state = str(p.get("status", ""))
        waits = ""
        if state == "waiting" and p.get("after"):
            waits = "（等待：" + "、".join(by_name.get(str(a), str(a)) for a in p["after"]) + "）"
        why = ""
        if state in ("not_accepted", "returned", "dead_lettered") and p.get("error_code"):
            why = f"：{problem(str(p['error_code']), 0)}"
        optional = "" if p.get("required", True) else "（可选）"
        items.append(
            f"<li data-part='{number}' data-status='{e(state)}'>"
            f"<span class='part-title'>{e(titles.get(number, f'第 {number + 1} 部分'))}</span>"
            f"{e(optional)}，{e(province(p.get('handling_province')))}："
            f"<strong>{e(part_status(state))}</strong>{e(waits)}{e(why)}</li>"
        )
    if len(items) < 2:
        return ""
    return f"<ul class='parts'>{''.join(items)}</ul>{_outcome(case, by_name)}"


_OUTCOME_LISTS = (
    ("compensated", "已撤回"),
    ("cancelled", "未办理"),
    ("not_accepted", "不予受理"),
    ("returned", "已退件"),
)


def _outcome(case: Mapping[str, Any], by_name: Mapping[str, str]) -> str:
    """A closed linked case's combined outcome in one paragraph."""
    outcome = case.get("outcome")
    if not isinstance(outcome, dict):
        return ""
    listed = outcome.get("parts") or {}

    failed_label = str(outcome.get("failed_part") or "")

    def named(labels: Any) -> str:
        # The failed part is named in the first line already.
        return "、".join(
            by_name.get(str(label), str(label)) for label in labels or () if label != failed_label
        )

    if outcome.get("result") == "done":
        lines = ["全部环节已办结"]
    else:
        failed = by_name.get(str(outcome.get("failed_part")), str(outcome.get("failed_part")))
        lines = [f"{failed}{status(outcome.get('result'))}，申请未能办结"]
    lines += [
        f"{word}：{named(listed.get(key))}" for key, word in _OUTCOME_LISTS if listed.get(key)
    ]
    if outcome.get("not_undone"):
        lines.append(f"已办理、无法撤回：{named(outcome['not_undone'])}")
    return (
        f"<p class='outcome' data-result='{e(outcome.get('result', ''))}'>"
        f"<strong>办理结果</strong>：{e('；'.join(lines))}</p>"
    )


async def _service_names(
    state: PortalState, session: PortalSession, codes: set[str]
) -> dict[str, str]:
    return {code: service_name(await guide(state, session, code)) for code in sorted(codes)}


async def _material_names(
    state: PortalState, session: PortalSession, service: str
) -> dict[str, str]:
    info = await guide(state, session, service)
    return {
        str(m.get("code")): str((m.get("name") or {}).get("zh") or m.get("code"))
        for m in info.get("materials", ())
        if isinstance(m, dict)
    }


async def my_cases(request: web.Request) -> web.Response:
    """GET /api/v1/cases with the person's own access token, then each case's timeline."""
    state = request.app[STATE]
    key, session = signed_in(request)
    got, answer = await person_api(state, session, "GET", "/api/v1/cases?limit=20")
    if got != 200 or not isinstance(answer, dict):
        code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
        return render(
            request,
            "我的办件",
            f"<p class='warning'>办件查询失败：{e(problem(code, got))}</p>",
            status=502,
            heading_en="My cases",
        )
    summaries = [s for s in answer.get("cases", [])[:20] if isinstance(s, dict)]
    names = await _service_names(state, session, {str(s.get("service", "")) for s in summaries})
    sections = []
    for summary in summaries:
        case_id = str(summary.get("case_id", ""))
        got, case = await person_api(
            state, session, "GET", f"/api/v1/cases/{quote(case_id, safe='')}"
        )
        detail = case if got == 200 and isinstance(case, dict) else {}
        handled = "、".join(province(p) for p in summary.get("handling_provinces", ()))
        code = str(summary.get("service", ""))
        titles = part_titles(detail, await guide(state, session, code))
        sections.append(
            f"<section class='case' data-case='{e(case_id)}' aria-labelledby='c-{e(case_id)}'>"
            f"<h2 id='c-{e(case_id)}'><span class='case-service' "
            f"data-service='{e(code)}'>{e(names.get(code, code))}</span></h2>"
            f"<dl class='fields'><dt>办件编号</dt><dd>{e(case_id)}</dd>"
            f"<dt>办理方式</dt><dd>{e(mode(summary.get('mode')))}</dd>"
            f"<dt>收件地</dt><dd>{e(province(summary.get('receiving_province')))}</dd>"
            f"<dt>办理地</dt><dd>{e(handled)}</dd>"
            f"<dt>状态</dt><dd><strong class='case-status' "
            f"data-status='{e(summary.get('status', ''))}'>{e(status(summary.get('status')))}"
            f"</strong></dd><dt>更新时间</dt><dd>{time_tag(summary.get('updated_at'))}（北京时间）</dd>"
            f"</dl>{parts(detail, titles)}"
            f"{_supplement_form(state, key, detail, await _material_names(state, session, code))}"
            f"<h3>办理进度</h3>{timeline(detail, titles=titles)}</section>"
        )
    listing = (
        "".join(sections) or "<p id='no-cases'>暂无办件。<span class='en'>No cases yet.</span></p>"
    )
    return render(
        request,
        "我的办件",
        f"<div id='cases'>{listing}</div>"
        "<p><a class='button secondary' id='refresh' href='/cases'>刷新</a></p>",
        heading_en="My cases",
    )


def _supplement_form(
    state: PortalState, session_key: str, case: Mapping[str, Any], names: Mapping[str, str]
) -> str:
    """What is missing (by the material's name in the service guide), and (while the part
    waits) a form to supply it."""
    blocks = []
    case_id = e(case.get("case_id", ""))
    csrf = form_csrf(state, session_key, "supplement")
    for part in case.get("parts", ()):
        if not isinstance(part, dict) or part.get("status") != "supplement_requested":
            continue
        asked = part.get("supplement_request")
        if not isinstance(asked, dict):
            continue
        codes = [str(c) for c in asked.get("materials", ())]
        listed = "".join(
            f"<li class='missing' data-code='{e(c)}'>{e(names.get(c, c))}</li>" for c in codes
        )
        number = int(part.get("part", 0))
        boxes = "".join(
            f"<label class='check'><input type='checkbox' name='material' value='{e(c)}' checked>"
            f" {e(names.get(c, c))}</label>"
            for c in codes
        )
        deadline = (
            "（请于 <span class='supplement-deadline'>"
            f"{time_tag(asked['deadline'])}</span> 前补正）"
            if asked.get("deadline")
            else ""
        )
        form = (
            f"<form method='post' action='/cases/{case_id}/supplements'>"
            f"<input type='hidden' name='csrf' value='{e(csrf)}'>"
            f"<input type='hidden' name='idempotency_key' value='portal-{secrets.token_hex(12)}'>"
            f"<input type='hidden' name='part' value='{number}'>"
            f"<fieldset><legend>补正材料</legend>{boxes}"
            f"<label for='note-{case_id}-{number}'>说明</label>"
            f"<input id='note-{case_id}-{number}' name='note'></fieldset>"
            "<button type='submit' class='supply'>提交补正材料</button></form>"
            if codes
            else ""
        )
        blocks.append(
            f"<div class='supplement warning' data-part='{number}'>"
            f"<p>{e(province(part.get('handling_province')))}要求补齐补正："
            f"<span class='supplement-message'>{e(asked.get('message') or '')}</span>{deadline}</p>"
            f"<ul>{listed}</ul>{form}</div>"
        )
    return "".join(blocks)


def _upload_ref(state: PortalState, case_id: str, code: str) -> dict[str, str]:
    """An uploaded material by reference and digest (the demo has no upload: a stand-in)."""
    ref = f"urn:upload:{state.client_id}:{case_id}:{code}"
    return {
        "code": code,
        "ref": ref,
        "digest": "sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
    }


async def supply_material(request: web.Request) -> web.Response:
    """POST /api/v1/cases/{id}/supplements with the person's token and the form's key."""
    state = request.app[STATE]
    key, session = signed_in(request)
    form = await request.post()
    if not csrf_ok(form_csrf(state, key, "supplement"), form):
        return form_expired(request)
    case_id = request.match_info["case_id"]
    body: dict[str, Any] = {
        "materials": [_upload_ref(state, case_id, str(c)) for c in form.getall("material", [])],
    }
    if str(form.get("part", "")).isdigit():
        body["part"] = int(str(form["part"]))
    if form.get("note"):
        body["note"] = str(form["note"])[:500]
    got, answer = await person_api(
        state,
        session,
        "POST",
        f"/api/v1/cases/{quote(case_id, safe='')}/supplements",
        json=body,
        headers={"Idempotency-Key": str(form.get("idempotency_key", ""))},
    )
    if got == 202:
        raise web.HTTPSeeOther("/cases")
    code = str(answer.get("code", "")) if isinstance(answer, dict) else ""
    return render(
        request,
        "补正未提交",
        f"<span id='status' data-http-status='{got}' hidden></span>"
        f"<p class='warning' id='answer' data-code='{e(code)}'>{e(problem(code, got))}</p>"
        "<p><a href='/cases'>返回我的办件</a></p>",
        status=400 if 400 <= got < 500 else 502,
        heading_en="Not supplied",
    )


PAGES = (
    PortalPage("GET", "/cases", my_cases, nav=MY_CASES),
    PortalPage("POST", "/cases/{case_id}/supplements", supply_material),
)
