"""The page around every portal page: header, navigation, main, footer; one stylesheet.

Accessible by construction: ``lang='zh-CN'``, a skip link, landmarks (header, nav, main,
footer), one ``h1`` per page, a visible focus ring, text and controls at 4.5:1 contrast or more,
and nothing wider than the screen at 390 px (long values wrap or fold, tables scroll inside
their own box). Chinese comes first; English follows where it helps.

Must not: know any page's content (handlers hand in the body), or call the gateway.
"""

from __future__ import annotations

from aiohttp import web

from gateway.demo.portals.pages import Audience, NavEntry
from gateway.demo.portals.state import STATE
from gateway.demo.portals.words import e, level_reached

NavItems = tuple[tuple[str, NavEntry], ...]
NAV = web.AppKey("portal_nav", NavItems)
"""(path, NavEntry) pairs of the portal's pages, in order (app.py builds it)."""


def audience(request: web.Request) -> Audience:
    """Who is looking: a clerk on the console's pages, else the portal's signed-in person."""
    state = request.app[STATE]
    if request.path.startswith("/window"):
        return (
            "clerk"
            if request.cookies.get(state.clerk_cookie, "") in state.clerk_sessions
            else "anonymous"
        )
    session = state.sessions.get(request.cookies.get(state.cookie, ""))
    if session is None:
        return "anonymous"
    return "enterprise" if session.acr == "LP" else "person"


def _nav(request: web.Request, who: Audience) -> str:
    state = request.app[STATE]
    entries = request.app[NAV]
    items = [
        (path, entry)
        for path, entry in entries
        if who in entry.audience and (state.window is not None or not entry.window_only)
    ]
    if not items:
        return ""
    links = "".join(
        f"<li><a href='{e(path)}'"
        + (" aria-current='page'" if request.path == path else "")
        + f">{e(entry.zh)}<span class='en'> {e(entry.en)}</span></a></li>"
        for path, entry in items
    )
    return f"<nav aria-label='主导航 Main'><ul>{links}</ul></nav>"


def _who(request: web.Request, who: Audience) -> str:
    state = request.app[STATE]
    if who == "clerk":
        clerk = state.clerk_sessions[request.cookies.get(state.clerk_cookie, "")]
        return (
            f"<p class='who' id='clerk-who'>窗口工作人员 <strong>{e(clerk.name)}</strong>"
            f"（工号 {e(clerk.staff_id)}）</p>"
        )
    session = state.sessions.get(request.cookies.get(state.cookie, ""))
    if session is None:
        return ""
    return (
        f"<p class='who' id='who'>已登录：<strong>{e(session.name or '')}</strong>"
        f" · <span id='acr' data-acr='{e(session.acr)}'>{e(level_reached(session.acr))}</span>"
        " · <a id='sign-out' href='/logout'>退出<span class='en'> Sign out</span></a></p>"
    )


def render(
    request: web.Request,
    heading: str,
    body: str,
    *,
    status: int = 200,
    heading_en: str = "",
) -> web.Response:
    """The whole document: ``heading`` is the page's ``h1`` (Chinese), ``body`` its content."""
    state = request.app[STATE]
    who = audience(request)
    en = f" <span class='en'>{e(heading_en)}</span>" if heading_en else ""
    text = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(heading)} - {e(state.title)}</title>"
        "<link rel='stylesheet' href='/static/portal.css'>"
        "<script src='/static/portal.js' defer></script></head><body>"
        "<a class='skip' href='#main'>跳到正文 Skip to content</a>"
        f"<header><p class='site'><a href='/'>{e(state.title)}</a>"
        f"<span class='en'> {e(state.title_en)}</span></p>{_who(request, who)}"
        f"{_nav(request, who)}</header>"
        f"<main id='main' tabindex='-1'><h1>{e(heading)}{en}</h1>{body}</main>"
        "<footer><p>示范系统，所有人员与数据均为虚构。Demo: every person and record is invented."
        "</p></footer></body></html>"
    )
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )
