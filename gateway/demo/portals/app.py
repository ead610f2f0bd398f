"""The portal's aiohttp application: its pages, its navigation, its stylesheet, and the one
place an ended session becomes a 请重新登录 page.

``PAGE_MODULES`` is the literal list of the portal's page modules, in navigation order; a new
page is a module exporting ``PAGES`` (pages.py) and one more line here.

Must not: hold page logic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import ModuleType

import aiohttp
from aiohttp import web

from gateway.demo.portals import cases, catalogue, consents, licences, signin, window
from gateway.demo.portals.layout import NAV, render
from gateway.demo.portals.pages import Handler, PortalPage
from gateway.demo.portals.state import STATE, PortalState
from gateway.demo.portals.tokens import SessionEnded

PAGE_MODULES: tuple[ModuleType, ...] = (catalogue, cases, consents, licences, signin, window)
STATIC = Path(__file__).resolve().parent / "static"


def portal_pages(modules: Iterable[ModuleType] = PAGE_MODULES) -> tuple[PortalPage, ...]:
    return tuple(page for module in modules for page in module.PAGES)


@web.middleware
async def session_ended_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The gateway refused to refresh a session's token: end it here too, and say so."""
    try:
        return await handler(request)
    except SessionEnded as ended:
        state = request.app[STATE]
        if ended.who == "clerk":
            state.clerk_sessions.pop(request.cookies.get(state.clerk_cookie, ""), None)
            again, cookie = "/window/login", state.clerk_cookie
        else:
            state.sessions.pop(request.cookies.get(state.cookie, ""), None)
            again, cookie = "/login", state.cookie
        response = render(
            request,
            "请重新登录",
            "<p class='warning' id='session-ended' role='alert'>登录已过期或已在别处退出，"
            "请重新登录后继续办理。</p>"
            f"<p><a class='button' id='sign-in-again' href='{again}'>重新登录</a></p>",
            status=401,
            heading_en="Please sign in again",
        )
        response.del_cookie(cookie)
        return response


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.http = aiohttp.ClientSession()
    yield
    await state.http.close()


def build_portal_app(
    state: PortalState, pages: Iterable[PortalPage] | None = None
) -> web.Application:
    """The portal's app with ``pages`` (default: every page of ``PAGE_MODULES``)."""
    app = web.Application(middlewares=[session_ended_middleware])
    app[STATE] = state
    app.cleanup_ctx.append(_http_client)
    mounted = portal_pages() if pages is None else tuple(pages)
    for page in mounted:
        app.router.add_route(page.method, page.path, page.handler)
    app[NAV] = tuple(
        sorted(
            ((p.path, p.nav) for p in mounted if p.nav is not None and p.method == "GET"),
            key=lambda item: item[1].order,
        )
    )
    app.router.add_static("/static/", STATIC)
    return app
