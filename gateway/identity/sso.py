"""The SSO session ``Authenticator``: one login at a provincial platform, every portal after that.

- OIDC Core §3.1.2.3: a live session answers a second portal's authorization request with no
  prompt; ``prompt=login`` (§3.1.2.1) and an exceeded ``max_age`` send the browser back to the
  platform; ``prompt=none`` never starts a login (§3.1.2.6 ``login_required``).
- ``acr_values`` (§3.1.2.1) above the session's level trigger a step-up at the same platform with
  the platform's value for that level; the reached level lasts ``elevated_level_ttl`` seconds and
  then falls back to the session's base level.
- Session fixation (OWASP ASVS V3.2.1): every completed login issues a new random handle; the
  handle the browser had before is deleted, whoever set it.
- Login CSRF (RFC 6749 §10.12, RFC 9700 §4.7): a login transaction is bound to the browser by a
  random cookie, the login form carries a CSRF token, and the platform's ``state`` is one-time.
- Cookies: ``HttpOnly``, ``SameSite=Lax`` (the platform returns by a top-level GET), ``Secure``
  when the issuer is https; they hold only random handles.
- RP-initiated logout ends the session, revokes its grant families and queues OIDC Back-Channel
  Logout 1.0 tokens for every client of the session (backchannel.py).
- A session that reaches its deadline (idle or absolute timeout) ends the same way, whether the
  browser comes back (``current``) or never does (``sweep_expired``, run every
  ``sweep_interval`` seconds: the store hands each expired session to one instance only), so the
  portals hear of a timeout as of a logout (Back-Channel Logout 1.0 §2.7: the OP sends a logout
  token whenever the session ends). Each end is audited with its reason.
- A platform that echoes no ``state`` (it returns to the registered address, see
  docs/identity-platforms.md): the upstream login is found by the browser's login cookie
  instead, one-time and within the login timeout, and the login transaction's own cookie check
  still applies. A ``state`` that does arrive must match.
- Staff and citizens never share a session (staff.py): a window client's requests
  accept only a session from a staff directory and its login page offers only those; every other
  client accepts only citizen platforms. Only a staff directory's login gives a session roles.

Must not: import aiohttp (gateway/http/login.py is the web layer); log a handle, state, code or
personal data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlsplit

import structlog

from gateway.audit.record import EventType
from gateway.identity.authn import AuthenticatedUser, AuthorizationContext
from gateway.identity.backchannel import BackchannelDelivery
from gateway.identity.citizen import FederatedIdentity, natural_person_id
from gateway.identity.config import SessionSettings, pairwise_subject
from gateway.identity.legacy_face import identity_attributes
from gateway.identity.requests import IdentityRequest, IdentityResponse
from gateway.identity.sessions import SessionStore, SsoSession, handle_hash
from gateway.identity.upstream import UpstreamError, UpstreamIdP, UpstreamLogin
from gateway.principal import level_satisfies

if TYPE_CHECKING:
    from gateway.identity.provider import OpenIDProvider

log = structlog.get_logger("tongban.identity")

LEVELS = ("L1", "L2", "L3", "LP", "Counter")
BINDING_COOKIE = "tongban_login"
RESUME_PARAM = "tb_resume"
_LEVEL_ORDER = {"L1": 1, "L2": 2, "L3": 3, "Counter": 4, "LP": 0}
SWEEP_BATCH = 100

EndReason = Literal["logout", "idle_timeout", "absolute_timeout", "replaced"]
"""Why a session ended (``extra.reason`` of its ``logout`` records): RP-initiated logout, one of
its timeouts, or another person's login in the same browser."""


class LoginRefused(Exception):
    """A login step that cannot go on; ``reason`` is a safe snake_case word for page and log."""

    def __init__(self, reason: str, *, status: int = 400, resume_url: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.resume_url = resume_url


@dataclass(frozen=True, slots=True)
class IdpChoice:
    idp_id: str
    province: str
    zh: str
    en: str
    available: bool
    for_enterprises: bool = False


@dataclass(frozen=True, slots=True)
class LoginView:
    """What the login page shows."""

    tx: str
    csrf: str
    client_name: str
    choices: tuple[IdpChoice, ...]
    hint: str | None
    staff: bool = False
    """A window client's login: the choices are staff directories, not home provinces."""


@dataclass(frozen=True, slots=True)
class LoginDone:
    """The browser's next stop after a completed login, and the cookies to set."""

    location: str
    set_cookies: tuple[str, ...]


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def read_cookie(headers: Mapping[str, str], name: str) -> str | None:
    """One cookie's value from a Cookie header (RFC 6265 §5.4); the first one wins."""
    raw = headers.get("Cookie") or headers.get("cookie") or ""
    for part in raw.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value.strip('"')
    return None


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _browser_login_key(idp_id: str, binding_hash: str) -> str:
    """Pending record of the login a browser started at a platform that echoes no state."""
    return f"upb:{idp_id}:{binding_hash}"


class SessionAuthenticator:
    """``Authenticator`` backed by the SSO session and the provincial platforms."""

    def __init__(
        self,
        settings: SessionSettings,
        store: SessionStore,
        idps: Mapping[str, UpstreamIdP],
        *,
        issuer: str,
        staff_directories: Iterable[str] = (),
        login_path: str = "/login",
        callback_path: str = "/login/callback",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.idps = dict(idps)
        self.staff_directories = frozenset(staff_directories) & set(self.idps)
        """Platforms declared staff directories (idps.yaml ``staff:``): window logins only."""
        self.issuer = issuer
        self.login_path = login_path
        self.callback_path = callback_path
        self.clock = clock
        self.secure = urlsplit(issuer).scheme == "https"
        self.provider: OpenIDProvider | None = None
        self.backchannel: BackchannelDelivery | None = None
        self.resources: object | None = None
        """What the web layer opens and closes for this authenticator (outbound client, queue)."""

    def attach(self, provider: OpenIDProvider) -> None:
        """Bind to the provider whose grants a logout revokes (built after this object)."""
        self.provider = provider

    # --- cookies -----------------------------------------------------------------------------

    def _cookie(self, name: str, value: str, *, max_age: int, path: str = "/") -> str:
        parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly"]
        parts.append("SameSite=Lax")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def session_cookie(self, handle: str) -> str:
        return self._cookie(
            self.settings.cookie_name, handle, max_age=self.settings.absolute_timeout
        )

    def clear_session_cookie(self) -> str:
        return self._cookie(self.settings.cookie_name, "", max_age=0)

    def _binding_cookie(self, value: str) -> str:
        return self._cookie(
            BINDING_COOKIE, value, max_age=self.settings.login_timeout, path=self.login_path
        )

    def clear_binding_cookie(self) -> str:
        # Same name, domain and path as when it was set, or the browser keeps it (RFC 6265
        # §5.3 step 11).
        return self._cookie(BINDING_COOKIE, "", max_age=0, path=self.login_path)

    # --- the session -------------------------------------------------------------------------

    def deadline(self, session: SsoSession) -> float:
        """When ``session`` ends: the earlier of its idle and absolute timeouts."""
        return min(
            session.last_seen + self.settings.idle_timeout,
            session.created_at + self.settings.absolute_timeout,
        )

    def expiry_reason(self, session: SsoSession) -> EndReason:
        """Which timeout sets ``session``'s deadline."""
        absolute = session.created_at + self.settings.absolute_timeout
        idle = session.last_seen + self.settings.idle_timeout
        return "absolute_timeout" if absolute <= idle else "idle_timeout"

    def _ttl(self, session: SsoSession, now: float) -> float:
        # The store learns the deadline from this (sessions.py): keep both computed in one place.
        return max(self.deadline(session) - now, 0.0)

    async def current(self, headers: Mapping[str, str]) -> tuple[str, SsoSession] | None:
        """The browser's live session, with idle and absolute timeouts applied."""
        handle = read_cookie(headers, self.settings.cookie_name)
        if not handle or len(handle) > 128:
            return None
        key = handle_hash(handle)
        # Past the deadline the store already answers None; the sweeper ends that session.
        session = await self.store.get_session(key)
        if session is None:
            return None
        if self.clock() >= self.deadline(session):
            # Deadline stored under other settings (a shorter timeout since), or the boundary.
            await self.end_session(key, reason="expired")
            return None
        return key, session

    def user_of(self, session: SsoSession, now: float) -> AuthenticatedUser:
        level = session.level(now)
        elevated = level != session.base_level
        return AuthenticatedUser(
            local_id=session.local_id,
            acr=level,
            auth_time=session.auth_time,
            amr=session.amr,
            claims=dict(session.claims),
            # A session holds internal ids only: its actor becomes pairwise in each token.
            actor_local_id=session.actor,
            actor_role=session.actor_role,
            roles=frozenset(session.roles),
            session_id=session.sid,
            acr_until=int(session.elevated_until) if elevated else None,
            base_acr=session.base_level if elevated else None,
        )

    # --- Authenticator -----------------------------------------------------------------------

    async def authenticate(
        self, context: AuthorizationContext
    ) -> AuthenticatedUser | IdentityResponse | None:
        now = self.clock()
        params = context.request.params
        wanted = next((v for v in context.acr_values if v in LEVELS), None)
        found = await self.current(context.request.headers)
        hint = self._hinted_idp(params.get("idp_hint") or context.login_hint, context.client_id)
        if found is not None:
            key, session = found
            if not self.offers(context.client_id, session.platform):
                # A citizen's session never satisfies a window client, nor a clerk's a portal.
                if "none" in context.prompt:
                    return None
                log.info("sso_login_required", reason="staff_or_citizen")
                return await self._begin(context, wanted, hint)
            just_logged_in = bool(
                params.get(RESUME_PARAM)
                and await self.store.take_pending(f"done:{session.sid}:{params[RESUME_PARAM]}")
            )
            level = session.level(now)
            needs_login = not just_logged_in and (
                "login" in context.prompt
                or (context.max_age is not None and now - session.auth_time > context.max_age)
            )
            step_up = (
                not just_logged_in and wanted is not None and not level_satisfies(level, wanted)
            )
            if not needs_login and not step_up:
                session = session.with_client(context.client_id, now)
                await self.store.put_session(key, session, self._ttl(session, now))
                return self.user_of(session, now)
            if "none" in context.prompt:
                return None
            log.info("sso_login_required", reason="step_up" if step_up else "fresh_login")
            return await self._begin(context, wanted, session.platform)
        if "none" in context.prompt:
            return None
        return await self._begin(context, wanted, hint)

    def _hinted_idp(self, hint: str | None, client_id: str) -> str | None:
        if not hint:
            return None
        if hint in self.idps:
            return hint if self.offers(client_id, hint) else None
        for idp_id, idp in self.idps.items():
            if idp.province == hint and self.offers(client_id, idp_id):
                return idp_id
        return None

    def is_window(self, client_id: str) -> bool:
        """Is ``client_id`` a window client (clients.yaml ``window: true``)?"""
        provider = self.provider
        client = provider.clients.get(client_id) if provider is not None else None
        return client is not None and client.registration.window

    def offers(self, client_id: str, idp_id: str) -> bool:
        """May a login at ``idp_id`` sign in at ``client_id``? Staff directories at window
        clients, citizen platforms everywhere else."""
        return (idp_id in self.staff_directories) == self.is_window(client_id)

    async def _begin(
        self, context: AuthorizationContext, wanted: str | None, idp_id: str | None
    ) -> IdentityResponse:
        binding = read_cookie(context.request.headers, BINDING_COOKIE)
        if not binding or len(binding) > 128:
            binding = secrets.token_urlsafe(24)
        tx = secrets.token_urlsafe(24)
        record = {
            "resume": context.resume_url,
            "client_id": context.client_id,
            "acr": wanted or "",
            "binding": _hash(binding),
            "csrf": secrets.token_urlsafe(24),
            "hint": idp_id or "",
        }
        await self.store.put_pending(f"tx:{tx}", record, self.settings.login_timeout)
        cookies = (("Set-Cookie", self._binding_cookie(binding)),)
        if (
            idp_id is not None
            and idp_id in self.idps
            and self.offers(context.client_id, idp_id)
            and await self.idps[idp_id].available()
        ):
            location = await self._start_upstream(tx, record, idp_id)
        else:
            location = f"{self.issuer}{self.login_path}?tx={quote(tx)}"
        return IdentityResponse(
            302, b"", (("Location", location), ("Cache-Control", "no-store"), *cookies)
        )

    async def browser_session(self, request: IdentityRequest) -> str | None:
        found = await self.current(request.headers)
        return found[1].sid if found is not None else None

    async def logout_token(self, request: IdentityRequest) -> str | None:
        # Keyed with the cookie's handle, which the store never holds (it keeps its hash): a
        # page that cannot read the cookie cannot make the token, on any instance.
        handle = read_cookie(request.headers, self.settings.cookie_name)
        found = await self.current(request.headers)
        if found is None or not handle:
            return None
        mac = hmac.new(handle.encode(), f"rp-logout:{found[1].sid}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    async def sign_out(self, request: IdentityRequest) -> tuple[tuple[str, str], ...]:
        # Only the session of the cookie this browser sent: an ID token names a session but
        # does not prove the browser holds it (an expired or foreign hint ends nothing).
        found = await self.current(request.headers)
        if found is not None:
            await self.end_session(found[0])
        return (("Set-Cookie", self.clear_session_cookie()),)

    async def end_session(
        self, key: str, *, reason: EndReason | Literal["expired"] = "logout"
    ) -> bool:
        """Delete the session, revoke its grants, queue back-channel logout for its clients.

        ``reason`` goes to the log and the audit records; "expired" stands for whichever
        timeout set the session's deadline. False when there was no session to end.
        """
        session = await self.store.delete_session(key)
        if session is None:
            return False
        # What the legacy faces may release goes with the session, not hours later (it was
        # put for ``absolute_timeout``; a replaced session's sid gets it again afterwards).
        await self.store.take_pending(f"attrs:{session.sid}")
        ended: EndReason = self.expiry_reason(session) if reason == "expired" else reason
        try:
            await self._finish_ending(session, ended)
        except Exception:
            # The session is out of the store but its portals were not all told: put it back
            # with its deadline passed, so the sweeper ends it again (revocation and queueing
            # are idempotent; the trail shows each attempt).
            log.warning("sso_session_end_incomplete", reason=ended)
            with contextlib.suppress(Exception):
                await self.store.put_session(key, session, 0)
            raise
        return True

    async def _finish_ending(self, session: SsoSession, ended: EndReason) -> None:
        provider = self.provider
        rows: list[tuple[str, str, str, str]] = []
        if provider is not None:
            revoked = await provider.run_with_store(provider.store.revoke_session, session.sid)
            user = self.user_of(session, self.clock())
            for client_id in session.clients:
                client = provider.clients.get(client_id)
                uri = client.registration.backchannel_logout_uri if client else None
                if client is not None and uri:
                    rows.append((client_id, uri, session.sid, provider.subject_for(client, user)))
            log.info(
                "sso_session_ended",
                reason=ended,
                families_revoked=revoked,
                backchannel=len(rows),
            )
            for client_id in session.clients:
                # One record per portal of the session, under that portal's pairwise subject.
                provider.audit_event(
                    EventType.LOGOUT,
                    client_id=client_id,
                    subject=self._subject(client_id, session.local_id),
                    level=session.base_level,
                    operation="sso_session_ended",
                    extra={
                        "platform": session.platform,
                        "reason": ended,
                        "families_revoked": revoked,
                        "backchannel": any(row[0] == client_id for row in rows),
                    },
                )
        else:
            log.info("sso_session_ended", reason=ended)
        if rows and self.backchannel is not None:
            await self.backchannel.enqueue(rows)

    async def sweep_expired(self, *, stop: asyncio.Event | None = None) -> int:
        """End every session whose deadline has passed; how many this call ended.

        The store hands each expired session to one caller only, so gateway instances sweeping
        the same Redis end it once; a session ended by logout left the store's deadline index
        and is never swept. ``stop`` set: return after the session being ended.
        """
        ended = lost = failed = 0
        while stop is None or not stop.is_set():
            keys = await self.store.claim_expired(self.clock(), SWEEP_BATCH)
            for key in keys:
                try:
                    if await self.end_session(key, reason="expired"):
                        ended += 1
                    else:
                        lost += 1  # its data outlived the grace: nothing left to tell
                except Exception as exc:
                    # end_session put it back as due: the next sweep tries again.
                    failed += 1
                    log.error("sso_session_end_failed", error_code=type(exc).__name__)
                if stop is not None and stop.is_set():
                    break
            if len(keys) < SWEEP_BATCH or failed:
                break  # after a failure, wait for the next sweep rather than spin on it
        if ended or lost:
            log.info("sso_sessions_swept", count=ended, lost=lost)
        return ended

    async def sweep_forever(self, stop: asyncio.Event) -> None:
        """``sweep_expired`` at once and then every ``sweep_interval`` seconds until ``stop``.

        Stopped through the event rather than by cancelling: a session being ended is ended
        completely (deleted, revoked, queued) before the store and the queue close.
        """
        while not stop.is_set():
            try:
                await self.sweep_expired(stop=stop)
            except Exception as exc:
                # The store is unreachable: the expired sessions wait in it for the next run.
                log.warning("sso_session_sweep_failed", error_code=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval)

    # --- the login page and the platform round trip (called by gateway/http/login.py) --------

    async def _transaction(self, tx: str, headers: Mapping[str, str]) -> dict[str, str]:
        record = await self.store.get_pending(f"tx:{tx}") if tx and len(tx) < 128 else None
        if record is None:
            raise LoginRefused("login_expired")
        binding = read_cookie(headers, BINDING_COOKIE) or ""
        if not hmac.compare_digest(_hash(binding), record["binding"]):
            # Another browser's login transaction: login CSRF.
            raise LoginRefused("login_not_bound_to_browser", status=403)
        return record

    async def login_view(self, tx: str, headers: Mapping[str, str]) -> LoginView:
        record = await self._transaction(tx, headers)
        client_name = record["client_id"]
        if self.provider is not None and record["client_id"] in self.provider.clients:
            registration = self.provider.clients[record["client_id"]].registration
            client_name = registration.name or registration.client_id
        choices: list[IdpChoice] = []
        for idp_id, idp in sorted(self.idps.items(), key=lambda item: item[1].province):
            if not self.offers(record["client_id"], idp_id):
                continue
            # One platform configured twice (one login page, two back channels: HTTP and SOAP)
            # is one choice for a person; the first listed is offered, the other stays
            # reachable by idp_hint.
            if any(c.province == idp.province and c.zh == idp.display_name[0] for c in choices):
                continue
            choices.append(
                IdpChoice(
                    idp_id,
                    idp.province,
                    idp.display_name[0],
                    idp.display_name[1],
                    False,
                    idp.for_enterprises,
                )
            )
        availability = [await idp.available() for idp in (self.idps[c.idp_id] for c in choices)]
        return LoginView(
            tx=tx,
            csrf=record["csrf"],
            client_name=client_name,
            choices=tuple(
                replace(c, available=ok) for c, ok in zip(choices, availability, strict=True)
            ),
            hint=record["hint"] or None,
            staff=self.is_window(record["client_id"]),
        )

    async def choose(self, form: Mapping[str, str], headers: Mapping[str, str]) -> str:
        """The login form was posted: check CSRF, start the login at the chosen platform."""
        tx = form.get("tx", "")
        record = await self._transaction(tx, headers)
        if not hmac.compare_digest(form.get("csrf", "").encode(), record["csrf"].encode()):
            raise LoginRefused("csrf_token_invalid", status=403)
        idp_id = form.get("idp", "")
        if idp_id not in self.idps or not self.offers(record["client_id"], idp_id):
            raise LoginRefused("unknown_identity_platform")
        if not await self.idps[idp_id].available():
            raise LoginRefused("identity_platform_unavailable", status=503)
        return await self._start_upstream(tx, record, idp_id)

    def _subject(self, client_id: str, local_id: str) -> str | None:
        """The pairwise subject of ``local_id`` at ``client_id`` (what its tokens carry)."""
        provider = self.provider
        client = provider.clients.get(client_id) if provider is not None else None
        if provider is None or client is None:
            return None
        return pairwise_subject(
            provider.settings.pairwise_secret, client.registration.sector, local_id
        )

    def _audit_login(
        self,
        idp_id: str,
        *,
        client_id: str | None = None,
        subject: str | None = None,
        level: str | None = None,
        refused: str | None = None,
        extra: Mapping[str, str | bool] | None = None,
    ) -> None:
        if self.provider is None:
            return
        idp = self.idps.get(idp_id)
        self.provider.audit_event(
            EventType.LOGIN,
            client_id=client_id,
            subject=subject,
            level=level,
            operation="federated_login",
            outcome="denied" if refused else "ok",
            error_code=refused,
            extra={
                "idp": idp_id if idp is not None else "unknown",
                "idp_province": idp.province if idp is not None else "",
                **(extra or {}),
            },
        )

    def callback_uri(self, idp_id: str) -> str:
        # One redirect URI per platform: a response cannot be replayed at another (RFC 9700 §4.4).
        return f"{self.issuer}{self.callback_path}/{idp_id}"

    async def _start_upstream(self, tx: str, record: Mapping[str, str], idp_id: str) -> str:
        verifier, challenge = _pkce_pair()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        acr = record.get("acr") or None
        now = self.clock()
        await self.store.put_pending(
            f"up:{state}",
            {
                "tx": tx,
                "idp": idp_id,
                "nonce": nonce,
                "verifier": verifier,
                "acr": acr or "",
                "started": repr(now),
            },
            self.settings.login_timeout,
        )
        if getattr(self.idps[idp_id], "binds_to_browser", False):
            # No state comes back: the browser's login cookie finds this login (finish).
            await self.store.put_pending(
                _browser_login_key(idp_id, record["binding"]),
                {"state": state},
                self.settings.login_timeout,
            )
        login = UpstreamLogin(
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            code_challenge=challenge,
            acr=acr if acr in LEVELS else None,  # type: ignore[arg-type]
            redirect_uri=self.callback_uri(idp_id),
            started_at=now,
        )
        try:
            return await self.idps[idp_id].start_login(login)
        except UpstreamError as exc:
            raise LoginRefused("identity_platform_unavailable", status=503) from exc

    async def finish(
        self, idp_id: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> LoginDone:
        """The platform sent the browser back: state first, then the platform's answer."""
        state = await self._callback_state(idp_id, params, headers)
        pending = await self.store.take_pending(f"up:{state}") if 0 < len(state) < 128 else None
        if pending is None:
            log.warning("upstream_callback_refused", reason="state_mismatch", platform=idp_id)
            self._audit_login(idp_id, refused="state_mismatch")
            raise LoginRefused("state_mismatch")
        if pending["idp"] != idp_id or idp_id not in self.idps:
            log.warning("upstream_callback_refused", reason="platform_mismatch", platform=idp_id)
            self._audit_login(idp_id, refused="platform_mismatch")
            raise LoginRefused("state_mismatch")
        record = await self._transaction(pending["tx"], headers)
        acr = pending["acr"] or None
        login = UpstreamLogin(
            state=state,
            nonce=pending["nonce"],
            code_verifier=pending["verifier"],
            code_challenge="",
            acr=acr if acr in LEVELS else None,  # type: ignore[arg-type]
            redirect_uri=self.callback_uri(idp_id),
            started_at=float(pending.get("started") or 0.0),
        )
        try:
            identity = await self.idps[idp_id].complete(params, login)
        except UpstreamError as exc:
            log.warning("upstream_callback_refused", reason=exc.reason, platform=idp_id)
            self._audit_login(idp_id, client_id=record["client_id"], refused=exc.reason)
            raise LoginRefused(
                exc.reason, status=503 if exc.unavailable else 400, resume_url=record["resume"]
            ) from None
        await self.store.take_pending(f"tx:{pending['tx']}")
        handle = await self._establish(identity, headers, pending["tx"])
        self._audit_login(
            idp_id,
            client_id=record["client_id"],
            subject=self._subject(record["client_id"], identity.local_id),
            level=identity.level,
            extra={
                "level_raw": identity.level_raw[:32],
                "level_scale": identity.level_scale[:32],
                "step_up": bool(acr),
                "staff": idp_id in self.staff_directories,
            },
        )
        resume = record["resume"]
        separator = "&" if "?" in resume else "?"
        return LoginDone(
            location=f"{resume}{separator}{RESUME_PARAM}={quote(pending['tx'])}",
            set_cookies=(self.session_cookie(handle), self.clear_binding_cookie()),
        )

    async def _callback_state(
        self, idp_id: str, params: Mapping[str, str], headers: Mapping[str, str]
    ) -> str:
        """The callback's ``state``, read where the platform put it; for a platform that echoes
        none, the state of the login this browser (its login cookie) started there."""
        idp = self.idps.get(idp_id)
        read = getattr(idp, "callback_state", None)
        found = read(params) if read is not None else params.get("state")
        if found is not None or not getattr(idp, "binds_to_browser", False):
            return found or ""
        binding = read_cookie(headers, BINDING_COOKIE)
        if not binding or len(binding) > 128:
            return ""
        pending = await self.store.take_pending(_browser_login_key(idp_id, _hash(binding)))
        return pending["state"] if pending else ""

    async def _establish(
        self, identity: FederatedIdentity, headers: Mapping[str, str], tx: str
    ) -> str:
        """A new handle for the signed-in browser (never the one it came with)."""
        now = self.clock()
        previous = await self.current(headers)
        handle = secrets.token_urlsafe(32)
        # A legal person (LP) acts through its operator (经办人): the enterprise+operator account
        # is the principal and the operator, the same person in every province by the link key,
        # is the actor (represented as both).
        operator = (
            natural_person_id(identity.link_key)
            if identity.person_type == "legal" and identity.link_key
            else None
        )
        fresh = SsoSession(
            sid=secrets.token_urlsafe(16),
            local_id=identity.local_id,
            platform=identity.platform,
            base_level=identity.level,
            level_raw=identity.level_raw,
            level_scale=identity.level_scale,
            auth_time=int(now),
            created_at=now,
            last_seen=now,
            amr=("fed",),
            claims=identity.userinfo_claims(),
            person_type=identity.person_type,
            actor=operator,
            actor_role="agent" if operator else None,
            # Defence in depth: only a staff directory's login carries roles (staff.py).
            roles=tuple(sorted(identity.roles))
            if identity.platform in self.staff_directories
            else (),
        )
        if previous is not None:
            old_key, old = previous
            if old.local_id == identity.local_id:
                # Step-up or fresh login of the same person: same sid, same clients and the
                # original absolute deadline; a higher level is elevated for a while only.
                await self.store.delete_session(old_key)
                elevated = _LEVEL_ORDER.get(identity.level, 0) > _LEVEL_ORDER.get(old.base_level, 0)
                fresh = replace(
                    old,
                    auth_time=int(now),
                    last_seen=now,
                    claims=fresh.claims,
                    level_raw=identity.level_raw,
                    elevated_level=identity.level if elevated else None,
                    elevated_until=now + self.settings.elevated_level_ttl if elevated else 0.0,
                )
            else:
                await self.end_session(old_key, reason="replaced")
        await self.store.put_session(handle_hash(handle), fresh, self._ttl(fresh, now))
        # What the legacy ticket / CAS faces may release (legacy_face.py), for this session only.
        await self.store.put_pending(
            f"attrs:{fresh.sid}", identity_attributes(identity), self.settings.absolute_timeout
        )
        await self.store.put_pending(f"done:{fresh.sid}:{tx}", {"ok": "1"}, 120)
        log.info("sso_session_started", platform=identity.platform, level=fresh.level(now))
        return handle
