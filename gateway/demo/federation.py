"""Start the demo identity side on loopback: the Qinghai identity platform and the two portals,
and the Shaanxi window desk: its staff directory and the Shaanxi portal's window console.

``DemoIdentitySecrets`` are generated per run and exported under the names config/clients.yaml
and config/idps.yaml refer to; ``DemoIdentity.configure`` points the loaded settings at the
servers' real (free) ports: the platforms' issuers, each portal's redirect, post-logout and
back-channel logout URIs, and the window client's (on the Shaanxi portal, under /window).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from secrets import token_urlsafe
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from gateway.demo.federation_platforms import (
    DemoPlatforms,
    configure_platforms,
    start_demo_platforms,
)
from gateway.demo.portals import (
    PortalState,
    WindowDesk,
    build_portal_app,
    qinghai_portal,
    shaanxi_portal,
)
from gateway.demo.qinghai_idp import QinghaiIdpState, build_qinghai_idp_app
from gateway.demo.staff_directory import (
    STAFF_IDP,
    StaffDirectoryState,
    build_staff_directory_app,
)
from gateway.identity.upstream import OidcIdpSettings
from gateway.settings import Settings

QINGHAI_IDP = "qinghai"
WINDOW_CLIENT = "demo-window-shaanxi"
"""The Shaanxi window desk's client (clients.yaml ``window: true``), served by the Shaanxi
portal's /window console."""
ENV_NAMES = {
    "qinghai_idp_client_secret": "TONGBAN_SECRET_QH_IDP_CLIENT_SECRET",
    "portal_qinghai_secret": "TONGBAN_SECRET_PORTAL_QINGHAI",
    "portal_shaanxi_secret": "TONGBAN_SECRET_PORTAL_SHAANXI",
    # The platforms beside OIDC, the legacy system's secret and the link key.
    "shaanxi_idp_app_secret": "TONGBAN_SECRET_SX_IDP_APP_SECRET",
    "gansu_idp_app_secret": "TONGBAN_SECRET_GS_IDP_APP_SECRET",
    "ningxia_idp_app_secret": "TONGBAN_SECRET_NX_IDP_APP_SECRET",
    "guangdong_idp_client_secret": "TONGBAN_SECRET_GD_IDP_CLIENT_SECRET",
    "guangdong_idp_aes_key": "TONGBAN_SECRET_GD_IDP_AES_KEY",
    "legacy_sx_bdc_secret": "TONGBAN_SECRET_LEGACY_SX_BDC",
    "legacy_sx_gjj_secret": "TONGBAN_SECRET_LEGACY_SX_GJJ",
    "link_secret": "TONGBAN_LINK_SECRET",
    # The window staff directory and the window desk's client.
    "staff_idp_client_secret": "TONGBAN_SECRET_SX_STAFF_IDP_CLIENT_SECRET",
    "window_shaanxi_secret": "TONGBAN_SECRET_WINDOW_SHAANXI",
    "window_qinghai_secret": "TONGBAN_SECRET_WINDOW_QINGHAI",
    # S14: the Shaanxi bank's credit-approval system (a client-credentials client).
    "bank_shaanxi_secret": "TONGBAN_SECRET_BANK_SHAANXI",
}


@dataclass(frozen=True, slots=True, repr=False)
class DemoIdentitySecrets:
    qinghai_idp_client_secret: str
    portal_qinghai_secret: str
    portal_shaanxi_secret: str
    shaanxi_idp_app_secret: str
    gansu_idp_app_secret: str
    ningxia_idp_app_secret: str
    guangdong_idp_client_secret: str
    guangdong_idp_aes_key: str
    legacy_sx_bdc_secret: str
    legacy_sx_gjj_secret: str
    link_secret: str
    staff_idp_client_secret: str
    window_shaanxi_secret: str
    window_qinghai_secret: str
    bank_shaanxi_secret: str

    @classmethod
    def generate(cls) -> DemoIdentitySecrets:
        return cls(**{f.name: token_urlsafe(24) for f in fields(cls)})

    def env(self) -> dict[str, str]:
        return {var: getattr(self, name) for name, var in ENV_NAMES.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DemoIdentitySecrets:
        return cls(**{name: environ[var] for name, var in ENV_NAMES.items()})

    @classmethod
    def load_or_create(cls, data_dir: Path) -> DemoIdentitySecrets:
        """Kept (0600) in the demo's data directory, like the pairwise secret, so a restarted
        demo keeps its clients' secrets."""
        path = data_dir / "identity-secrets.json"
        if not path.exists():
            path.write_text(json.dumps(asdict(cls.generate())))
            path.chmod(0o600)
        stored = json.loads(path.read_text())
        missing = {f.name for f in fields(cls)} - set(stored)
        if missing:  # a data directory from before a secret was added: add it, keep the rest
            stored.update({k: v for k, v in asdict(cls.generate()).items() if k in missing})
            path.write_text(json.dumps(stored))
        return cls(**stored)

    def __repr__(self) -> str:
        return "DemoIdentitySecrets(**********)"


@dataclass(frozen=True)
class IdentityAddresses:
    """The identity side's servers by address: platforms' issuers, portals' and windows' bases."""

    qinghai: str
    staff: str | None
    portals: dict[str, str]
    """Portal client id → the portal's base URL."""
    windows: dict[str, str]
    """Window client id → the base URL of the portal serving its console (under /window)."""
    platforms: dict[str, str] | None
    """``DemoPlatforms.urls()``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdentityAddresses:
        return cls(**data)

    def configure(self, settings: Settings) -> Settings:
        """The settings with the platform's issuer and the portals' URIs on their real ports."""
        idps = dict(settings.idps)
        # Only the demo's own entries (by id and kind): a platform the user added stays as is.
        qinghai = idps.get(QINGHAI_IDP)
        if isinstance(qinghai, OidcIdpSettings) and qinghai.staff is None:
            idps[QINGHAI_IDP] = qinghai.model_copy(update={"issuer": self.qinghai})
        staff = idps.get(STAFF_IDP)
        if self.staff is not None and isinstance(staff, OidcIdpSettings) and staff.staff:
            idps[STAFF_IDP] = staff.model_copy(update={"issuer": self.staff})
        clients = dict(settings.clients)
        for client_id, base in self.portals.items():
            if client_id in clients:
                clients[client_id] = clients[client_id].model_copy(
                    update={
                        "redirect_uris": (f"{base}/callback",),
                        "post_logout_redirect_uris": (f"{base}/",),
                        "backchannel_logout_uri": f"{base}/backchannel-logout",
                    }
                )
        for window, base in self.windows.items():
            if window in clients:
                clients[window] = clients[window].model_copy(
                    update={
                        "redirect_uris": (f"{base}/window/callback",),
                        "post_logout_redirect_uris": (f"{base}/window",),
                    }
                )
        configured = dataclasses.replace(settings, idps=idps, clients=clients)
        if self.platforms is not None:
            configured = configure_platforms(configured, self.platforms)
        return configured


@dataclass
class DemoIdentity:
    idp: QinghaiIdpState
    portals: dict[str, PortalState]
    runners: list[web.AppRunner]
    platforms: DemoPlatforms | None = None
    """Ticket, OAuth2-quirks and legal-person platforms and the legacy system."""
    staff: StaffDirectoryState | None = None
    """The Shaanxi window staff directory (clerks sign in there)."""

    @property
    def idp_url(self) -> str:
        return self.idp.issuer

    def portal(self, client_id: str) -> PortalState:
        return self.portals[client_id]

    def addresses(self) -> IdentityAddresses:
        """Where every server of the identity side listens (JSON-able: the soak hands them from
        the process running the fakes to the gateway's, gateway/demo/split.py)."""
        return IdentityAddresses(
            qinghai=self.idp.issuer,
            staff=self.staff.issuer if self.staff is not None else None,
            portals={cid: p.base_url for cid, p in self.portals.items()},
            windows={
                p.window.client_id: p.base_url
                for p in self.portals.values()
                if p.window is not None
            },
            platforms=self.platforms.urls() if self.platforms is not None else None,
        )

    def configure(self, settings: Settings) -> Settings:
        """The settings with the platform's issuer and the portals' URIs on their real ports."""
        return self.addresses().configure(settings)

    async def aclose(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _serve(app: web.Application, host: str) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://{host}:{runner.addresses[0][1]}"


async def start_demo_identity(
    gateway_issuer: str, secrets: DemoIdentitySecrets, host: str = "127.0.0.1"
) -> DemoIdentity:
    """Start the platform and both portals on free ports, all pointing at ``gateway_issuer``."""
    idp = QinghaiIdpState(
        client_secret=secrets.qinghai_idp_client_secret,
        redirect_uris=(f"{gateway_issuer}/login/callback/{QINGHAI_IDP}",),
    )
    staff = StaffDirectoryState(
        client_secret=secrets.staff_idp_client_secret,
        redirect_uris=(f"{gateway_issuer}/login/callback/{STAFF_IDP}",),
    )
    portals = {
        p.client_id: p
        for p in (
            qinghai_portal(gateway_issuer, secrets.portal_qinghai_secret),
            shaanxi_portal(gateway_issuer, secrets.portal_shaanxi_secret),
        )
    }
    # S10: the Shaanxi portal's window console takes applications in for Qinghai.
    portals["demo-portal-shaanxi"].window = WindowDesk(
        client_id=WINDOW_CLIENT, client_secret=secrets.window_shaanxi_secret
    )
    runners: list[web.AppRunner] = []
    try:
        runner, idp.issuer = await _serve(build_qinghai_idp_app(idp), host)
        runners.append(runner)
        runner, staff.issuer = await _serve(build_staff_directory_app(staff), host)
        runners.append(runner)
        for portal in portals.values():
            runner, portal.base_url = await _serve(build_portal_app(portal), host)
            runners.append(runner)
        platforms = await start_demo_platforms(
            gateway_issuer,
            shaanxi_secret=secrets.shaanxi_idp_app_secret,
            gansu_secret=secrets.gansu_idp_app_secret,
            ningxia_secret=secrets.ningxia_idp_app_secret,
            guangdong_secret=secrets.guangdong_idp_client_secret,
            guangdong_aes_key=secrets.guangdong_idp_aes_key,
            legacy_secret=secrets.legacy_sx_bdc_secret,
            serve=lambda app: _serve(app, host),
            runners=runners,
        )
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return DemoIdentity(idp, portals, runners, platforms, staff)
