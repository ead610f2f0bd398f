"""Build one ``UpstreamIdP`` per configured platform, of the kind its settings declare."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from gateway.identity.config import ProviderSettings
from gateway.identity.identifiers import LinkKeyer, link_keyer
from gateway.identity.sessions import SessionStore
from gateway.identity.upstream import OidcIdpSettings, UpstreamIdP
from gateway.identity.upstream_kinds import (
    AnyIdpSettings,
    LegalPersonIdpSettings,
    OAuth2QuirksIdpSettings,
    TicketIdpSettings,
)
from gateway.identity.upstream_legal_person import LegalPersonUpstream
from gateway.identity.upstream_oauth2_quirks import OAuth2QuirksUpstream
from gateway.identity.upstream_oidc import OidcUpstream
from gateway.identity.upstream_ticket import TicketUpstream


def provider_linker(settings: ProviderSettings) -> LinkKeyer | None:
    """The cross-province link key function, when a link secret is configured."""
    if settings.link_secret is None:
        return None
    return link_keyer(settings.link_secret.get_secret_value(), settings.link_algorithm)


def staff_directories(idps: Mapping[str, AnyIdpSettings]) -> frozenset[str]:
    """Platforms declared staff directories (``staff:``, gateway/identity/staff.py)."""
    return frozenset(
        pid for pid, idp in idps.items() if isinstance(idp, OidcIdpSettings) and idp.staff
    )


def build_upstreams(
    idps: Mapping[str, AnyIdpSettings],
    http: httpx.AsyncClient,
    *,
    provider: ProviderSettings,
    config_dir: Path,
    store: SessionStore | None = None,
) -> dict[str, UpstreamIdP]:
    """One ``UpstreamIdP`` per platform; ``store`` (the SSO session store) keeps the signed-ticket
    platforms' used-ticket record, shared by every instance that shares the store."""
    timeout = provider.session.upstream_timeout
    linker = provider_linker(provider)
    built: dict[str, UpstreamIdP] = {}
    for pid, idp in idps.items():
        if isinstance(idp, OidcIdpSettings):
            built[pid] = OidcUpstream(
                pid, idp, http, timeout=timeout, leeway=provider.leeway, linker=linker
            )
        elif isinstance(idp, TicketIdpSettings):
            built[pid] = TicketUpstream(
                pid,
                idp,
                http,
                config_dir=config_dir,
                timeout=timeout,
                linker=linker,
                claim_once=store.claim_once if store is not None else None,
            )
        elif isinstance(idp, OAuth2QuirksIdpSettings):
            built[pid] = OAuth2QuirksUpstream(pid, idp, http, timeout=timeout, linker=linker)
        elif isinstance(idp, LegalPersonIdpSettings):
            built[pid] = LegalPersonUpstream(
                pid, idp, http, timeout=timeout, leeway=provider.leeway, linker=linker
            )
    return built


def login_origins(idps: Mapping[str, UpstreamIdP]) -> tuple[str, ...]:
    """Origins the login form's POST may redirect to (CSP ``form-action`` covers redirects)."""
    origins: set[str] = set()
    for idp in idps.values():
        settings = getattr(idp, "settings", None)
        for name in ("issuer", "login_url", "authorize_url"):
            url = getattr(settings, name, None)
            if isinstance(url, str):
                parts = urlsplit(url)
                if parts.scheme in ("http", "https") and parts.netloc:
                    origins.add(f"{parts.scheme}://{parts.netloc}")
    return tuple(sorted(origins))
