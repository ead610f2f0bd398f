"""The demo's platforms beside Qinghai's OIDC one, and the legacy system.

Started on free loopback ports next to the Qinghai platform (federation.py): Shaanxi's
signed-ticket platform (HTTP and SOAP twins on one server), Gansu's (SOAP, one web service per
operation, back to the registered address), Ningxia's legacy one (no state, weak tickets, the
reversible cipher), Guangdong's quirky OAuth2, Shaanxi's legal-person platform, and a legacy
Shaanxi business system that signs in through the gateway's ticket and CAS faces.
``configure_platforms`` points the demo's own idps.yaml and legacy-apps.yaml entries at the
real ports, and leaves every other entry as the configuration wrote it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from gateway.demo.guangdong_idp import GuangdongIdpState, build_guangdong_idp_app
from gateway.demo.legacy_system import LegacySystemState, build_legacy_system_app
from gateway.demo.legal_idp import LegalIdpState, build_legal_idp_app
from gateway.demo.ticket_idp import APP_CODE, TicketPlatformState, build_ticket_platform_app
from gateway.identity.upstream_kinds import (
    AnyIdpSettings,
    LegalPersonIdpSettings,
    OAuth2QuirksIdpSettings,
    TicketCall,
    TicketIdpSettings,
)
from gateway.settings import Settings

LEGACY_TICKET_APP = "SX_BDC_QUERY"
LEGACY_CAS_APP = "sx-hrss-cas"
DEMO_TICKET_PLATFORMS = {"shaanxi": "shaanxi", "shaanxi-soap": "shaanxi", "gansu": "gansu",
                         "ningxia": "ningxia"}  # fmt: skip
"""idps.yaml entries of kind ticket that are the demo's own → the demo platform serving them."""
DEMO_OAUTH2_QUIRKS = "guangdong"
DEMO_LEGAL_PERSON = "shaanxi-legal"


@dataclass
class DemoPlatforms:
    shaanxi: TicketPlatformState
    gansu: TicketPlatformState
    ningxia: TicketPlatformState
    guangdong: GuangdongIdpState
    legal: LegalIdpState
    legacy: LegacySystemState

    def urls(self) -> dict[str, str]:
        """Where each platform listens (the legal-person one: its issuer), by its name here."""
        return {
            "shaanxi": self.shaanxi.base_url,
            "gansu": self.gansu.base_url,
            "ningxia": self.ningxia.base_url,
            "guangdong": self.guangdong.base_url,
            "legal": self.legal.issuer,
            "legacy": self.legacy.base_url,
        }

    def banner(self) -> list[str]:
        return [
            f"  Shaanxi ticket platform (61, HTTP+SOAP)  {self.shaanxi.base_url}/sso/login",
            f"  Gansu ticket platform (62, SOAP)         {self.gansu.base_url}/uc/login",
            f"  Ningxia legacy ticket platform (64)      {self.ningxia.base_url}/nx/cas/login",
            f"  Guangdong OAuth2 platform (44)           {self.guangdong.base_url}",
            f"  Shaanxi legal-person platform (61, S8)   {self.legal.issuer}/legal/login",
            f"  Shaanxi legacy business system           {self.legacy.base_url}/",
        ]


Serve = Callable[[web.Application], Awaitable[tuple[web.AppRunner, str]]]


async def start_demo_platforms(
    gateway_issuer: str,
    *,
    shaanxi_secret: str,
    gansu_secret: str,
    ningxia_secret: str,
    guangdong_secret: str,
    guangdong_aes_key: str,
    legacy_secret: str,
    serve: Serve,
    runners: list[web.AppRunner],
) -> DemoPlatforms:
    """Start every server; each runner is appended to ``runners`` as soon as it runs."""
    callback = f"{gateway_issuer}/login/callback/"
    platforms = DemoPlatforms(
        shaanxi=TicketPlatformState("shaanxi", shaanxi_secret, return_prefixes=(callback,)),
        gansu=TicketPlatformState(
            "gansu",
            gansu_secret,
            return_prefixes=(callback,),
            registered={APP_CODE: f"{callback}gansu"},
        ),
        ningxia=TicketPlatformState(
            "ningxia", ningxia_secret, registered={APP_CODE: f"{callback}ningxia"}
        ),
        guangdong=GuangdongIdpState(
            guangdong_secret, guangdong_aes_key, redirect_uris=(f"{callback}guangdong",)
        ),
        legal=LegalIdpState(return_prefixes=(f"{callback}shaanxi-legal",)),
        legacy=LegacySystemState(gateway=gateway_issuer, secret=legacy_secret),
    )
    for app, assign in (
        (build_ticket_platform_app(platforms.shaanxi), "shaanxi"),
        (build_ticket_platform_app(platforms.gansu), "gansu"),
        (build_ticket_platform_app(platforms.ningxia), "ningxia"),
        (build_guangdong_idp_app(platforms.guangdong), "guangdong"),
        (build_legal_idp_app(platforms.legal), "legal"),
        (build_legacy_system_app(platforms.legacy), "legacy"),
    ):
        runner, url = await serve(app)
        runners.append(runner)
        if assign == "legal":
            platforms.legal.issuer = url
        else:
            getattr(platforms, assign).base_url = url
    return platforms


def moved(url: str, base: str) -> str:
    """``url`` on the origin of ``base`` (the configuration's placeholder port → the real one)."""
    parts, origin = urlsplit(url), urlsplit(base)
    return urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, parts.fragment))


def _moved_ticket(idp: TicketIdpSettings, base: str) -> TicketIdpSettings:
    calls: dict[str, str | TicketCall] = {}
    for name, given in idp.operations.items():
        url = given.service_url if isinstance(given, TicketCall) else None
        if isinstance(given, TicketCall) and url is not None:
            calls[name] = given.model_copy(update={"service_url": moved(url, base)})
        else:
            calls[name] = given
    update: dict[str, Any] = {
        "login_url": moved(idp.login_url, base),
        "service_url": moved(idp.service_url, base),
        "operations": calls,
    }
    return idp.model_copy(update=update)


def configure_platforms(settings: Settings, urls: Mapping[str, str]) -> Settings:
    """The demo's own idps.yaml and legacy-apps.yaml entries pointed at the demo servers' real
    ports (``urls``: ``DemoPlatforms.urls()``, perhaps of another process). An entry is the
    demo's by its id and kind; any other (a platform the user added, or one of the demo's ids
    reused for another kind) is left exactly as configured."""
    idps: dict[str, AnyIdpSettings] = dict(settings.idps)
    for pid, idp in settings.idps.items():
        if isinstance(idp, TicketIdpSettings) and pid in DEMO_TICKET_PLATFORMS:
            idps[pid] = _moved_ticket(idp, urls[DEMO_TICKET_PLATFORMS[pid]])
        elif isinstance(idp, OAuth2QuirksIdpSettings) and pid == DEMO_OAUTH2_QUIRKS:
            base = urls["guangdong"]
            idps[pid] = idp.model_copy(
                update={
                    "authorize_url": moved(idp.authorize_url, base),
                    "token_url": moved(idp.token_url, base),
                    "tokeninfo_url": moved(idp.tokeninfo_url, base),
                }
            )
        elif isinstance(idp, LegalPersonIdpSettings) and pid == DEMO_LEGAL_PERSON:
            issuer = urls["legal"]
            idps[pid] = idp.model_copy(
                update={
                    "login_url": moved(idp.login_url, issuer),
                    "issuer": issuer,
                    "jwks_uri": moved(idp.jwks_uri, issuer),
                }
            )
    apps = dict(settings.legacy_apps)
    base = urls["legacy"]
    if LEGACY_TICKET_APP in apps:
        apps[LEGACY_TICKET_APP] = apps[LEGACY_TICKET_APP].model_copy(
            update={"callbacks": (f"{base}/sso/callback",)}
        )
    if LEGACY_CAS_APP in apps:
        apps[LEGACY_CAS_APP] = apps[LEGACY_CAS_APP].model_copy(
            update={"services": (f"{base}/cas/",)}
        )
    return dataclasses.replace(settings, idps=idps, legacy_apps=apps)
