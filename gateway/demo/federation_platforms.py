"""The issue-6 side of the demo: platforms beside Qinghai's OIDC one, and the legacy system.

Started on free loopback ports next to the Qinghai platform (federation.py): Shaanxi's
signed-ticket platform (HTTP and SOAP twins on one server), Gansu's (SOAP only), Guangdong's
quirky OAuth2, Shaanxi's legal-person platform, and a legacy Shaanxi business system that signs
in through the gateway's ticket and CAS faces. ``configure_platforms`` points the loaded
settings (idps.yaml, legacy-apps.yaml) at the real ports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.demo.guangdong_idp import GuangdongIdpState, build_guangdong_idp_app
from gateway.demo.legacy_system import LegacySystemState, build_legacy_system_app
from gateway.demo.legal_idp import LegalIdpState, build_legal_idp_app
from gateway.demo.ticket_idp import TicketPlatformState, build_ticket_platform_app
from gateway.identity.upstream import OidcIdpSettings
from gateway.identity.upstream_kinds import (
    LegalPersonIdpSettings,
    OAuth2QuirksIdpSettings,
    TicketIdpSettings,
)
from gateway.settings import Settings

LEGACY_TICKET_APP = "SX_BDC_QUERY"
LEGACY_CAS_APP = "sx-hrss-cas"


@dataclass
class DemoPlatforms:
    shaanxi: TicketPlatformState
    gansu: TicketPlatformState
    guangdong: GuangdongIdpState
    legal: LegalIdpState
    legacy: LegacySystemState

    def banner(self) -> list[str]:
        return [
            f"  Shaanxi ticket platform (61, HTTP+SOAP)  {self.shaanxi.base_url}/sso/login",
            f"  Gansu ticket platform (62, SOAP)         {self.gansu.base_url}/uc/login",
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
        gansu=TicketPlatformState("gansu", gansu_secret, return_prefixes=(callback,)),
        guangdong=GuangdongIdpState(
            guangdong_secret, guangdong_aes_key, redirect_uris=(f"{callback}guangdong",)
        ),
        legal=LegalIdpState(return_prefixes=(f"{callback}shaanxi-legal",)),
        legacy=LegacySystemState(gateway=gateway_issuer, secret=legacy_secret),
    )
    for app, assign in (
        (build_ticket_platform_app(platforms.shaanxi), "shaanxi"),
        (build_ticket_platform_app(platforms.gansu), "gansu"),
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


def configure_platforms(settings: Settings, platforms: DemoPlatforms) -> Settings:
    """idps.yaml and legacy-apps.yaml entries pointed at the demo servers' real ports."""
    idps = dict(settings.idps)
    for pid, idp in settings.idps.items():
        if isinstance(idp, OidcIdpSettings):
            continue
        if isinstance(idp, TicketIdpSettings):
            state = platforms.shaanxi if idp.province == "61" else platforms.gansu
            prefix = state.prefix
            service = "soap" if idp.transport == "soap" else "api"
            idps[pid] = idp.model_copy(
                update={
                    "login_url": f"{state.base_url}{prefix}/login",
                    "service_url": f"{state.base_url}{prefix}/{service}",
                }
            )
        elif isinstance(idp, OAuth2QuirksIdpSettings):
            base = platforms.guangdong.base_url
            idps[pid] = idp.model_copy(
                update={
                    "authorize_url": f"{base}/oauth2/authorize",
                    "token_url": f"{base}/oauth2/access_token",
                    "tokeninfo_url": f"{base}/oauth2/tokeninfo",
                }
            )
        elif isinstance(idp, LegalPersonIdpSettings):
            issuer = platforms.legal.issuer
            idps[pid] = idp.model_copy(
                update={
                    "login_url": f"{issuer}/legal/login",
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/legal/jwks",
                }
            )
    apps = dict(settings.legacy_apps)
    base = platforms.legacy.base_url
    if LEGACY_TICKET_APP in apps:
        apps[LEGACY_TICKET_APP] = apps[LEGACY_TICKET_APP].model_copy(
            update={"callbacks": (f"{base}/sso/callback",)}
        )
    if LEGACY_CAS_APP in apps:
        apps[LEGACY_CAS_APP] = apps[LEGACY_CAS_APP].model_copy(
            update={"services": (f"{base}/cas/",)}
        )
    return dataclasses.replace(settings, idps=idps, legacy_apps=apps)
