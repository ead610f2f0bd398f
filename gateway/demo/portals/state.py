"""A portal's registration at the gateway, its local sessions, and the two demo portals.

Cookie names carry the client id: the portals share 127.0.0.1 with the gateway, and cookies
ignore ports, so the portals and the gateway never read each other's cookies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from gateway.demo.cases import S13_CASE, S13_REFUSED
from gateway.demo.examples import DEMO_CALLS, DemoCall

PENDING_LIFETIME = 600.0
"""Seconds a sign-in started here may take (the gateway's own ``login_timeout`` default): an
abandoned one is forgotten after that, never kept."""
SESSION_LIFETIME = 12 * 3600.0
"""Seconds a local session lasts at most: the gateway's absolute SSO timeout, after which its
back-channel logout ends it anyway; a session whose logout never arrived goes then too."""
KEPT_LOGOUTS = 100
"""Validated logout tokens kept (the latest) for tests and the page to read."""


V = TypeVar("V")


def forget_older(table: dict[str, V], before: float, when: Callable[[V], float]) -> None:
    """Drop the entries of ``table`` made before ``before``: the oldest come first (insertion
    order), so this stops at the first younger one and costs O(dropped)."""
    while table:
        first = next(iter(table))
        if when(table[first]) >= before:
            return
        del table[first]


@dataclass
class Tokens:
    """What the gateway's token endpoint gave a signed-in person or clerk, refreshed in place."""

    access_token: str
    refresh_token: str | None
    expires_at: float
    lifetime: float
    """``expires_in`` of the last answer: how long an access token lives."""
    id_token: str

    @classmethod
    def from_answer(cls, answer: dict[str, Any], now: float, id_token: str = "") -> Tokens:
        lifetime = float(answer.get("expires_in", 0))
        return cls(
            access_token=str(answer["access_token"]),
            refresh_token=answer.get("refresh_token") or None,
            expires_at=now + lifetime,
            lifetime=lifetime,
            id_token=str(answer.get("id_token") or id_token),
        )


@dataclass
class PortalSession:
    """A person (citizen, or an enterprise's operator) signed in at the portal."""

    sid: str | None
    subject: str
    acr: str
    tokens: Tokens
    name: str | None
    signed_in_at: float = 0.0

    @property
    def access_token(self) -> str:
        return self.tokens.access_token

    @property
    def id_token(self) -> str:
        return self.tokens.id_token


@dataclass(frozen=True)
class WindowDesk:
    """A province's window desk (S10): its window client at the gateway."""

    client_id: str
    """A window client (clients.yaml ``window: true``, allowed the token-exchange grant)."""
    client_secret: str
    receiving_province: str = "61"
    handling_province: str = "63"
    scope: str = "openid profile services:call"
    """What the clerk's own token may do; each Counter token gets ``services:call`` only."""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.client_id, self.client_secret)}


@dataclass
class ClerkSession:
    """A clerk signed in at the console through the gateway (never a password here)."""

    subject: str
    """The clerk's pairwise ``sub`` at the window client: the ``act.sub`` of Counter tokens."""
    staff_id: str
    """工号 (``preferred_username`` at userinfo), shown on the console."""
    name: str
    """As the staff directory gives it (``name`` at userinfo)."""
    acr: str
    tokens: Tokens
    csrf: str
    last_receipt: str = ""
    signed_in_at: float = 0.0

    @property
    def access_token(self) -> str:
        return self.tokens.access_token


@dataclass
class PortalState:
    """One portal: its registration at the gateway and its local sessions."""

    client_id: str
    client_secret: str
    title: str
    """The portal's own name, shown in its header (Chinese)."""
    title_en: str
    gateway: str
    """The gateway's issuer URL."""
    calls: tuple[DemoCall, ...]
    scope: str = "openid profile services:call"
    province_hint: str | None = None
    """Sent as ``idp_hint`` for persons: the portal's own province's platform."""
    enterprise_hint: str | None = None
    """Sent as ``idp_hint`` for enterprises: their legal-person platform."""
    base_url: str = ""
    sessions: dict[str, PortalSession] = field(default_factory=dict)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)
    backchannel_logouts: list[dict[str, Any]] = field(default_factory=list)
    """Validated logout tokens' claims (tests read them)."""
    http: aiohttp.ClientSession | None = None
    clock: Callable[[], float] = time.time
    window: WindowDesk | None = None
    """Set on the Shaanxi portal by `tongban demo`: the window clerk console (/window)."""
    clerk_sessions: dict[str, ClerkSession] = field(default_factory=dict)
    clerk_pending: dict[str, dict[str, str]] = field(default_factory=dict)
    """Clerk sign-ins under way at the gateway, by OAuth ``state``."""
    clerk_roster: dict[str, str] = field(default_factory=dict)
    """Names of the clerks who signed in here, by their pairwise ``sub`` (the ``actor`` of the
    cases they take in), as the staff directory gave them."""
    guides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Service guides read from the gateway (names, levels, materials, result labels)."""
    applications: tuple[DemoApplication, ...] = ()
    """Applications (cases) the portal offers to file with the demo's data, on their guides."""
    consents: dict[str, str] = field(default_factory=dict)
    """Grant ids its applications present (``consent``), by the client that sends them: the
    demo's S13 seller's consent to this portal (and to its window), given when the demo starts
    (gateway/demo/runner.py). None given: the application goes without, and is refused."""

    def with_consent(self, body: dict[str, Any], client_id: str) -> dict[str, Any]:
        """``body`` presenting the grant the demo seeded for ``client_id``'s S13 applications."""
        grant = self.consents.get(client_id)
        if grant is None or body.get("service") != "second-hand-home-transfer":
            return body
        return {**body, "consent": grant}

    @property
    def cookie(self) -> str:
        return f"portal_{self.client_id}"

    @property
    def login_cookie(self) -> str:
        return f"portal_login_{self.client_id}"

    @property
    def clerk_cookie(self) -> str:
        return f"portal_clerk_{self.client_id}"

    @property
    def clerk_login_cookie(self) -> str:
        return f"portal_clerk_login_{self.client_id}"

    @property
    def auth(self) -> dict[str, str]:
        """client_secret_basic for the gateway's token endpoint."""
        return {"Authorization": aiohttp.encode_basic_auth(self.client_id, self.client_secret)}


STATE = web.AppKey("portal_state", PortalState)


def http_of(state: PortalState) -> aiohttp.ClientSession:
    assert state.http is not None, "the portal's client opens with the app"
    return state.http


def _call(scenario: str, service: str, operation: str) -> DemoCall:
    return next(
        c
        for c in DEMO_CALLS
        if c.scenario == scenario and c.service == service and c.body["operation"] == operation
    )


@dataclass(frozen=True, slots=True)
class DemoApplication:
    """An application a portal files as a case with the demo's data (a button on the guide)."""

    service: str
    title: str
    """The button's words."""
    body: dict[str, Any]


def _s13_applications() -> tuple[DemoApplication, ...]:
    return (
        DemoApplication("second-hand-home-transfer", "以示范数据申请", S13_CASE[3]),
        DemoApplication(
            "second-hand-home-transfer", "以被查封的房屋申请（示范不予受理与撤回）", S13_REFUSED[3]
        ),
    )


def qinghai_portal(gateway: str, secret: str) -> PortalState:
    return PortalState(
        client_id="demo-portal-qinghai",
        client_secret=secret,
        title="青海政务服务网（示范）",
        title_en="Qinghai portal (demo)",
        gateway=gateway,
        calls=(
            _call("S6", "degree-verification", "verify"),
            _call("S1", "pension-transfer", "contribution-history"),
        ),
        scope="openid profile phone services:call",
        province_hint="63",
        enterprise_hint="shaanxi-legal",
        applications=_s13_applications(),
    )


def shaanxi_portal(gateway: str, secret: str) -> PortalState:
    return PortalState(
        client_id="demo-portal-shaanxi",
        client_secret=secret,
        title="陕西政务服务网（示范）",
        title_en="Shaanxi portal (demo)",
        gateway=gateway,
        calls=(_call("S4", "housing-fund-transfer", "account-query"),),
        enterprise_hint="shaanxi-legal",
        applications=_s13_applications(),
    )
