"""The login page and the provincial platforms' callbacks: the web side of SSO and federation.

- ``GET /login?tx=...``: server-rendered page (Chinese and English) where the citizen picks the
  home province; a platform that does not answer within the configured timeout is shown as
  unavailable and cannot be chosen. The form carries a CSRF token (RFC 6749 §10.12).
- ``POST /login``: check the token and the browser binding, then send the browser to the platform.
- ``GET /login/callback/{idp}``: the platform's answer; ``state`` and ``error`` are checked before
  any token request (gateway/identity/upstream_oidc.py), then the session cookie is set with a
  new handle and the browser resumes the portal's authorization request.

Resources opened here, in a cleanup context: the outbound HTTP client (httpx on aiohttp's
engine, several times faster than httpx's own under concurrency), the back-channel logout queue
(SQLite in the data directory) and its worker, and the sweeper that ends expired SSO sessions
(``SessionAuthenticator.sweep_forever``). The session store (``sessions.sqlite`` in the data
directory by default) is opened with the authenticator and closed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import structlog
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from gateway.http.assertion_post import park_post, take_posted
from gateway.http.legacy import add_legacy_routes
from gateway.identity.authn import Authenticator, NobodySignedIn
from gateway.identity.backchannel import (
    BackchannelDelivery,
    SqliteLogoutQueue,
    build_logout_token,
)
from gateway.identity.config import SessionSettings
from gateway.identity.provider import OpenIDProvider
from gateway.identity.redis_sessions import RedisSessionStore
from gateway.identity.sessions import MemorySessionStore, SessionStore
from gateway.identity.sqlite_sessions import SqliteSessionStore
from gateway.identity.sso import IdpChoice, LoginRefused, LoginView, SessionAuthenticator
from gateway.identity.upstreams import build_upstreams, login_origins, staff_directories
from gateway.settings import Settings
from gateway.stores.sqlite import private_dir

log = structlog.get_logger("tongban.identity")

LOGIN_PROVIDER = web.AppKey("login_provider", OpenIDProvider)
LOGIN_AUTHENTICATOR = web.AppKey("login_authenticator", SessionAuthenticator)
QUEUE_FILE_NAME = "backchannel-logout.sqlite3"
_MAX_FORM = 8 * 1024
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_REASONS = {
    "login_expired": ("登录已超时，请回到门户重新登录。", "The sign-in timed out; start again."),
    "login_not_bound_to_browser": (
        "此登录不是在本浏览器发起的。",
        "This sign-in was not started in this browser.",
    ),
    "csrf_token_invalid": ("表单已失效，请重试。", "The form expired; please try again."),
    "state_mismatch": ("登录响应无效。", "The sign-in answer is not valid."),
    "upstream_refused": ("身份认证平台拒绝了登录。", "The identity platform refused the sign-in."),
    "staff_role_missing": (
        "此工作人员账号没有可在窗口使用的角色。",
        "This staff account has no role allowed at the window.",
    ),
    "identity_platform_unavailable": (
        "该省身份认证平台暂不可用。",
        "That province's identity platform is unavailable.",
    ),
}


class Federation:
    """What `serve` and `demo` build from settings: the authenticator and where its queue lives."""

    def __init__(
        self, authenticator: SessionAuthenticator, http: httpx.AsyncClient, data_dir: Path
    ) -> None:
        self.authenticator = authenticator
        self.http = http
        self.data_dir = data_dir


def outbound_client(timeout: float) -> httpx.AsyncClient:
    """httpx API on aiohttp's engine (httpx's own transport is slow under concurrency); no env
    proxies."""
    return httpx.AsyncClient(
        transport=AiohttpTransport(trust_env=False), timeout=timeout, follow_redirects=False
    )


def open_session_store(
    session: SessionSettings, data_dir: Path, *, clock: Callable[[], float] = time.time
) -> SessionStore:
    """The store ``session.store`` names. 'sqlite' opens (creates, 0600) ``sessions.sqlite`` in
    ``data_dir``: a few milliseconds of file I/O, once, at start-up."""
    grace = float(session.expiry_grace)
    if session.store == "redis":
        return RedisSessionStore.from_url(
            session.redis_url, session.redis_prefix, clock=clock, grace=grace
        )
    if session.store == "memory":
        return MemorySessionStore(clock=clock, grace=grace)
    return SqliteSessionStore.in_data_dir(data_dir, clock=clock, grace=grace)


def build_authenticator(
    settings: Settings,
    *,
    store: SessionStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Authenticator:
    """The SSO authenticator when identity platforms are configured, else ``NobodySignedIn``.

    A ``store`` passed in must run on the same ``clock`` (session deadlines, sessions.py).
    """
    identity = settings.gateway.identity
    if identity is None or not settings.idps:
        return NobodySignedIn()
    session = identity.session
    if store is None:
        store = open_session_store(session, settings.data_dir(), clock=clock)
    http = outbound_client(session.upstream_timeout)
    idps = build_upstreams(
        settings.idps, http, provider=identity, config_dir=settings.config_dir, store=store
    )
    authenticator = SessionAuthenticator(
        session,
        store,
        idps,
        issuer=identity.issuer,
        staff_directories=staff_directories(settings.idps),
        clock=clock,
    )
    authenticator.resources = Federation(authenticator, http, settings.data_dir())
    return authenticator


def add_login_routes(app: web.Application, provider: OpenIDProvider) -> None:
    """Mount /login and the callbacks when the provider's authenticator is the SSO session."""
    authenticator = provider.authenticator
    if not isinstance(authenticator, SessionAuthenticator):
        return
    authenticator.attach(provider)
    app[LOGIN_PROVIDER] = provider
    app[LOGIN_AUTHENTICATOR] = authenticator
    app.cleanup_ctx.append(_federation_context)
    app.router.add_get(authenticator.login_path, login_page)
    app.router.add_post(authenticator.login_path, login_choose)
    app.router.add_get(authenticator.callback_path + "/{idp}", login_callback)
    app.router.add_post(authenticator.callback_path + "/{idp}", login_callback_post)
    add_legacy_routes(app, provider, authenticator)


async def _federation_context(app: web.Application) -> AsyncIterator[None]:
    authenticator = app[LOGIN_AUTHENTICATOR]
    provider = app[LOGIN_PROVIDER]
    resources = authenticator.resources
    worker: asyncio.Task[None] | None = None
    queue: SqliteLogoutQueue | None = None
    if isinstance(resources, Federation):
        private_dir(resources.data_dir)
        queue = await SqliteLogoutQueue.open(resources.data_dir / QUEUE_FILE_NAME)
        settings = provider.settings

        def sign(client_id: str, sid: str, subject: str) -> str:
            client = provider.clients.get(client_id)
            alg = (
                client.registration.id_token_signed_response_alg if client else None
            ) or settings.algorithms[0]
            return build_logout_token(
                provider.keys,
                issuer=settings.issuer,
                algorithm=alg,
                client_id=client_id,
                sid=sid,
                subject=subject,
                now=provider.clock(),
                ttl=settings.backchannel.logout_token_ttl,
            )

        delivery = BackchannelDelivery(
            queue, resources.http, sign, settings.backchannel, audit=provider.audit
        )
        authenticator.backchannel = delivery
        provider.backchannel_logout = True
        worker = asyncio.create_task(delivery.run_forever())
    # After the queue is wired: an expired session's logout must be queued like any other.
    stop_sweeping = asyncio.Event()
    sweeper = asyncio.create_task(authenticator.sweep_forever(stop_sweeping))
    try:
        yield
    finally:
        # First, while the store and the queue are open: the session being ended ends whole.
        stop_sweeping.set()
        await sweeper
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if queue is not None:
            await queue.aclose()
        if isinstance(resources, Federation):
            await resources.http.aclose()
        await authenticator.store.aclose()


# --- pages -----------------------------------------------------------------------------------


def _page(title: str, body: str, status: int = 200, cookies: tuple[str, ...] = ()) -> web.Response:
    page = (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:'WenQuanYi Zen Hei',sans-serif;max-width:40em;margin:2em auto;"
        "padding:0 1em;color:#222}li{margin:.5em 0}button{font-size:1em;padding:.4em 1em}"
        ".down{color:#a00}.muted{color:#595959;font-size:.9em}"
        "fieldset{border:1px solid #bbb;margin:1em 0}fieldset ul{list-style:none;padding-left:0}"
        ":focus-visible{outline:3px solid #b45309;outline-offset:2px}</style></head><body>"
        f"{body}</body></html>"
    )
    response = web.Response(
        status=status, text=page, content_type="text/html", headers=_PAGE_HEADERS
    )
    for cookie in cookies:
        response.headers.add("Set-Cookie", cookie)
    return response


def _refusal(exc: LoginRefused) -> web.Response:
    zh, en = _REASONS.get(exc.reason, ("登录失败。", "The sign-in failed."))
    again = ""
    if exc.resume_url:
        again = f"<p><a href='{html.escape(exc.resume_url)}'>重试 / Try again</a></p>"
    body = (
        f"<h1>无法登录 / Sign-in failed</h1><p>{html.escape(zh)}</p><p>{html.escape(en)}</p>"
        f"<p class='muted'>code: <code>{html.escape(exc.reason)}</code></p>{again}"
    )
    return _page("无法登录 / Sign-in failed", body, status=exc.status)


def _choice(view: LoginView, choice: IdpChoice) -> str:
    label = f"{html.escape(choice.zh)} <span class='muted'>{html.escape(choice.en)}</span>"
    if not choice.available:
        return (
            f"<li class='down' data-idp='{html.escape(choice.idp_id)}'>{label}："
            "暂不可用 <span class='muted'>currently unavailable</span></li>"
        )
    checked = " checked" if view.hint == choice.idp_id or len(view.choices) == 1 else ""
    return (
        f"<li><label><input type='radio' name='idp' value='{html.escape(choice.idp_id)}'"
        f"{checked} required> {label}</label></li>"
    )


def render_login(view: LoginView) -> str:
    """The platform chooser: persons by home province, enterprises apart, staff alone; the
    platforms by name (never by protocol or transport)."""
    if view.staff:
        # A window client: staff directories only (gateway/identity/staff.py).
        groups = [
            (
                "工作人员登录：请选择工作人员身份认证平台",
                "Choose your staff directory",
                view.choices,
            )
        ]
    else:
        groups = [
            (
                "个人登录：请选择您的户籍或常住省份",
                "Persons: choose your home province",
                tuple(c for c in view.choices if not c.for_enterprises),
            ),
            (
                "法人登录：企业经办人请选择",
                "Enterprises: the operator signs in here",
                tuple(c for c in view.choices if c.for_enterprises),
            ),
        ]
    fieldsets = "".join(
        f"<fieldset><legend>{zh} <span class='muted'>{en}</span></legend>"
        f"<ul>{''.join(_choice(view, c) for c in choices)}</ul></fieldset>"
        for zh, en, choices in groups
        if choices
    )
    return (
        "<h1>统一身份认证 <span class='muted'>Unified sign-in</span></h1>"
        f"<p>{html.escape(view.client_name)} 请求您登录。</p>"
        f"<p class='muted'>{html.escape(view.client_name)} asks you to sign in.</p>"
        "<form method='post' action='/login'>"
        f"<input type='hidden' name='tx' value='{html.escape(view.tx)}'>"
        f"<input type='hidden' name='csrf' value='{html.escape(view.csrf)}'>"
        f"{fieldsets}"
        "<button type='submit' id='continue'>继续 <span>Continue</span></button></form>"
    )


async def login_page(request: web.Request) -> web.Response:
    authenticator = request.app[LOGIN_AUTHENTICATOR]
    try:
        view = await authenticator.login_view(request.query.get("tx", ""), dict(request.headers))
    except LoginRefused as exc:
        return _refusal(exc)
    response = _page("统一身份认证 / Sign in", render_login(view))
    # The form's POST is answered by a redirect to the chosen platform; browsers apply
    # form-action to that redirect too, so the platforms' origins are allowed beside 'self'.
    targets = " ".join(login_origins(authenticator.idps))
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {targets}".rstrip()
    )
    return response


async def login_choose(request: web.Request) -> web.Response:
    authenticator = request.app[LOGIN_AUTHENTICATOR]
    if request.content_type != "application/x-www-form-urlencoded":
        return _refusal(LoginRefused("csrf_token_invalid", status=403))
    if (request.content_length or 0) > _MAX_FORM:
        return _refusal(LoginRefused("login_expired", status=413))
    form = {k: str(v) for k, v in (await request.post()).items()}
    try:
        location = await authenticator.choose(form, dict(request.headers))
    except LoginRefused as exc:
        return _refusal(exc)
    raise web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


async def login_callback(request: web.Request) -> web.Response:
    authenticator = request.app[LOGIN_AUTHENTICATOR]
    params = {k: v for k, v in request.query.items() if len(v) <= 4096}
    params = await take_posted(params, authenticator)
    try:
        done = await authenticator.finish(request.match_info["idp"], params, dict(request.headers))
    except LoginRefused as exc:
        return _refusal(exc)
    response = web.HTTPFound(done.location, headers={"Cache-Control": "no-store"})
    for cookie in done.set_cookies:
        response.headers.add("Set-Cookie", cookie)
    raise response


async def login_callback_post(request: web.Request) -> web.Response:
    """A platform that answers by POST (legal-person assertions): parked, then the GET above."""
    return await park_post(request, request.app[LOGIN_AUTHENTICATOR])
