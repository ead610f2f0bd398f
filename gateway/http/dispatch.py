"""The call endpoint's requests handed to the middlewares without aiohttp's general dispatch.

For every request aiohttp's server calls ``Application._handle``: it resolves the route
(``UrlDispatcher.resolve`` walks the path's prefixes backwards and asks each resource there,
a coroutine each, to match its pattern), handles ``Expect``, builds (or finds in an LRU
cache) the middleware chain, and runs it behind ``_fix_request_current_app``, a middleware
coroutine aiohttp adds to every app that has middlewares, which sets the match info's current
app for sub-applications and is resumed at every wake-up of the call.

``CallDispatch`` stands in for ``Application._handle`` (the server takes the app's
``_handle`` when the runner is set up, so it is set on the app as ``_handle``). A POST to a
path aiohttp has already resolved to the call endpoint (``POST
/api/v1/services/{service}/calls``) is matched by one dictionary lookup of the path, and runs
the app's middlewares around the call handler directly; the current-app layer has nothing to
do for an app without sub-applications (the match info's current app is the app, set by
``add_app`` as aiohttp does). Every other request, a request with ``Expect``, and the first
request to each path go through ``Application._handle`` as before; what that resolution
gives for a call path is kept (the path's match, at most ``_PATHS_KEPT`` paths: then the
table starts again), so the lookup gives exactly what the resolver gave. Resolution depends
only on the method and the path (``path_safe``, as the resolver reads it) while the router
has plain and dynamic resources only and no sub-applications, which ``direct_calls`` checks
when the app starts; otherwise the app keeps aiohttp's dispatch throughout.
tests/unit/http/test_dispatch.py compares the bytes on the wire of both, and fails naming the
aiohttp function if the code this stands in for changes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import (
    AbstractRoute,
    DynamicResource,
    PlainResource,
    UrlMappingMatchInfo,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PATHS_KEPT = 1024
"""Call paths whose match is kept (one per service code seen); beyond, the table starts again."""


_new_match_info = UrlMappingMatchInfo.__new__
_fill = dict.update


class CallDispatch:
    """The app's request handler: ``Application._handle``, with the call endpoint's known
    paths dispatched directly (the module docstring says how, and why it is the same)."""

    __slots__ = ("_app", "_chain", "_general", "_paths", "_route")

    def __init__(
        self,
        app: web.Application,
        route: AbstractRoute,
        general: Handler,
        chain: Handler | None = None,
    ) -> None:
        self._app = app
        self._route = route
        self._general = general
        self._paths: dict[str, dict[str, str]] = {}
        if chain is None:
            # The app's middlewares around the handler, as aiohttp's _build_middlewares wraps
            # them (without the current-app layer it adds last).
            chain = route.handler
            for middleware in reversed(app.middlewares):
                chain = functools.partial(middleware, handler=chain)
        self._chain = chain

    def __call__(self, request: web.Request) -> Awaitable[web.StreamResponse]:
        # Not a coroutine: the chain's own coroutine is what the server awaits, one frame
        # less on the call's stack at every wake-up.
        if request.method == hdrs.METH_POST:
            path = request.rel_url.path_safe
            match = self._paths.get(path)
            if match is None:
                return self._learning(request, path)
            if not request.headers.get(hdrs.EXPECT):
                # UrlMappingMatchInfo(match, route), add_app(app), freeze(), without their
                # three calls: the state they leave, set at once.
                info = _new_match_info(UrlMappingMatchInfo)
                _fill(info, match)
                info._route = self._route
                info._apps = [self._app]
                info._current_app = self._app
                info._frozen = True
                request._match_info = info
                return self._chain(request)
        return self._general(request)

    async def _learning(self, request: web.Request, path: str) -> web.StreamResponse:
        """aiohttp's dispatch; if it resolved ``path`` to the call endpoint, its match kept."""
        response = await self._general(request)
        info = request._match_info
        if info is not None and info.route is self._route:
            paths = self._paths
            if len(paths) >= _PATHS_KEPT:
                paths.clear()
            paths[path] = dict(info)
        return response


def direct_calls(
    app: web.Application,
    route: AbstractRoute,
    chain: Callable[[web.Application, AbstractRoute], Handler | None] | None = None,
) -> None:
    """Have ``app``'s server dispatch the calls of ``route`` directly (``CallDispatch``) once
    the app starts, when its router and middlewares allow it. ``chain``, given the started
    app and ``route``, may return what stands in for its middlewares around the route's
    handler (one that does what they do, in fewer frames); None: the middlewares themselves."""

    async def install(app: web.Application) -> None:
        if dispatched_directly(app) or not _plain_router(app):
            return
        general = app._handle
        fused = chain(app, route) if chain is not None else None
        # The server takes app._handle when the runner sets up (Application._make_handler),
        # after the on_startup signal: an attribute of the instance stands in for the method.
        object.__setattr__(app, "_handle", CallDispatch(app, route, general, fused))

    app.on_startup.append(install)


def _plain_router(app: web.Application) -> bool:
    """Whether resolution depends on the method and path only (plain and dynamic resources,
    no sub-applications) and every middleware is a new-style one."""
    if app._subapps or app.router._matched_sub_app_resources:
        return False
    if any(getattr(m, "__middleware_version__", None) != 1 for m in app.middlewares):
        return False
    return all(type(r) in (PlainResource, DynamicResource) for r in app.router.resources())


def dispatched_directly(app: web.Application) -> bool:
    """Whether ``app``'s calls are dispatched by ``CallDispatch`` (for tests)."""
    handle: Any = vars(app).get("_handle")
    return isinstance(handle, CallDispatch)
