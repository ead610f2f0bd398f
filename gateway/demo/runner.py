"""`tongban demo`: demo provinces and the gateway on one machine, embedded stores under one dir."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.app import create_app, open_provider
from gateway.consent.book import Giver, GrantRequest
from gateway.consent.factory import subject_keys
from gateway.demo.backends import DemoSecrets, start_demo_backends
from gateway.demo.banner import requests_script, terminal_banner, write_requests_file
from gateway.demo.cases import S13_CASE, cases_banner, issue_staff_tokens
from gateway.demo.examples import issue_demo_tokens
from gateway.demo.federation import DemoIdentitySecrets, start_demo_identity
from gateway.demo.memory_probe import start_from_env
from gateway.demo.portals import PortalState
from gateway.demo.presentations import presentation_lines, presentation_tokens
from gateway.demo.property_transfer import SELLER
from gateway.http.keys import STATE
from gateway.http.login import build_authenticator
from gateway.identity.devtokens import DevTokenIssuer, WithDevTokens
from gateway.identity.subject_keys import SubjectKeys
from gateway.logs import configure_logging
from gateway.principal import TokenVerifier
from gateway.serve import serve_until_stopped
from gateway.settings import ConfigError, Settings, load_settings


def point_at(
    settings: Settings,
    overrides: Mapping[str, Mapping[str, Any]],
    data_dir: Path,
    *,
    port: int | None = None,
) -> Settings:
    """The configuration with each demo system's address (and token URL) replaced, the stores
    under ``data_dir`` and the issuer on the demo's own port."""
    systems = dict(settings.systems)
    for sid, fields in overrides.items():
        if sid not in systems:
            continue
        update: dict[str, Any] = {k: v for k, v in fields.items() if k != "auth"}
        if "auth" in fields:
            update["auth"] = {**systems[sid].auth, **fields["auth"]}
        systems[sid] = systems[sid].model_copy(update=update)
    gateway_update: dict[str, Any] = {"data_dir": data_dir}
    if settings.gateway.identity is not None and port is not None:
        gateway_update["identity"] = settings.gateway.identity.model_copy(
            update={"issuer": f"http://127.0.0.1:{port}"}
        )
    gateway = settings.gateway.model_copy(update=gateway_update)
    return dataclasses.replace(settings, systems=systems, gateway=gateway)


def demo_identity_env(data_dir: Path) -> dict[str, str]:
    """Identity secrets of the demo, kept (0600) in its data directory so pairwise subjects stay
    stable across restarts."""
    path = data_dir / "pairwise-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    # The portals' and the Qinghai platform's client secrets (clients.yaml, idps.yaml) too.
    return {
        "TONGBAN_PAIRWISE_SECRET": path.read_text().strip(),
        **DemoIdentitySecrets.load_or_create(data_dir).env(),
    }


S13_CLIENTS = ("demo-portal-qinghai", "demo-portal-shaanxi", "demo-window-shaanxi")


def seed_demo_consents(
    portals: Mapping[str, PortalState], keys: SubjectKeys | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The S13 seller's consent to the portals and the window that file the demo's home
    purchase (the buyer files; the seller, a co-applicant, lets these clients reach her part of
    the application), given in the consent book when the demo starts."""

    async def seed(app: web.Application) -> AsyncIterator[None]:
        book = app[STATE].consent
        if book is not None and keys is not None:
            seller = keys.person(SELLER.id_number)
            for client in S13_CLIENTS:
                grant = await book.give(
                    Giver(subject=seller, granted_by="subject", client=client),
                    GrantRequest(
                        kind="consent",
                        services=("second-hand-home-transfer",),
                        expires_at=time.time() + 30 * 86400,
                        purpose=str(S13_CASE[3]["purpose"]),
                        requester_client=client,
                    ),
                )
                owner = "demo-portal-shaanxi" if client == "demo-window-shaanxi" else client
                if owner in portals:
                    portals[owner].consents[client] = grant.grant_id
        yield

    return seed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_demo(*, config_dir: Path, port: int, data_dir: Path) -> int:
    """Run until SIGINT/SIGTERM; ``config_dir`` and ``data_dir`` are absolute and exist."""
    configure_logging("info", "console", stream=sys.stderr)
    start_from_env(asyncio.get_running_loop())  # the soak's opt-in allocation probe
    backend_secrets = DemoSecrets.generate()
    os.environ.update(backend_secrets.env())
    os.environ.update(demo_identity_env(data_dir))
    port = port or free_port()
    async with await start_demo_backends(backend_secrets, config_dir=config_dir) as backends:
        # The identity platforms, the portals and the window console, closed with the app.
        identity_secrets = DemoIdentitySecrets.from_env(os.environ)
        demo_identity = await start_demo_identity(f"http://127.0.0.1:{port}", identity_secrets)
        try:
            settings = point_at(
                load_settings(config_dir), backends.overrides(), data_dir, port=port
            )
            settings = demo_identity.configure(settings)
        except ConfigError as exc:
            await demo_identity.aclose()
            print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
            return 1

        def banner(base: str, tokens: dict[str, Any], cases: str) -> str:
            requests_file = write_requests_file(data_dir, requests_script(base, tokens, cases))
            return terminal_banner(base, demo_identity, backends, requests_file)

        return await serve_demo_gateway(
            settings,
            data_dir=data_dir,
            port=port,
            portals=demo_identity.portals,
            banner=banner,
            on_cleanup=demo_identity.aclose,
        )


async def serve_demo_gateway(
    settings: Settings,
    *,
    data_dir: Path,
    port: int,
    portals: Mapping[str, PortalState],
    banner: Callable[[str, dict[str, Any], str], str],
    on_cleanup: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """The demo's gateway on ``settings`` (already pointed at the fakes) until SIGINT/SIGTERM:
    demo tokens and staff tokens written to ``data_dir`` once it listens, then ``banner(base,
    tokens, cases)`` printed. ``portals`` are those of this process (they learn the seeded
    consents; none when the portals run in another process)."""
    issuer = DevTokenIssuer()
    keys = subject_keys(settings)
    tokens = issue_demo_tokens(issuer, keys)
    provider = await open_provider(settings, build_authenticator(settings))
    verifier: TokenVerifier = (
        WithDevTokens(issuer, provider.access_token_verifier()) if provider else issuer
    )
    app = create_app(settings, verifier=verifier, oidc=provider)
    app.cleanup_ctx.append(seed_demo_consents(portals, keys))
    if on_cleanup is not None:
        cleanup = on_cleanup
        app.on_cleanup.append(lambda _app: cleanup())

    def started(bound: int) -> None:
        token_file = data_dir / "demo-tokens.json"
        token_file.write_text(json.dumps(tokens, ensure_ascii=False, indent=2))
        token_file.chmod(0o600)
        # Staff tokens for tools run against the demo (CI's schemathesis run reaches the
        # admin API as an operator and as an auditor with them).
        staff = {
            **issue_staff_tokens(issuer),
            "auditor": issuer.issue("demo-auditor", "L3", roles=["auditor"]),
        }
        staff_file = data_dir / "demo-staff-tokens.json"
        staff_file.write_text(json.dumps(staff, indent=2))
        staff_file.chmod(0o600)
        base = f"http://127.0.0.1:{bound}"
        window = portals.get("demo-portal-shaanxi")
        qinghai = portals.get("demo-portal-qinghai")
        # S10: clerks sign in through the gateway (staff directory only), then identify each
        # applicant by token exchange; the console is the window client's.
        cases = cases_banner(
            base,
            tokens["citizen-l3"]["token"],
            issue_staff_tokens(issuer, keys),
            data_dir,
            window_console=window.base_url + "/window" if window is not None else "",
            s13_consent=qinghai.consents.get("demo-portal-qinghai") if qinghai else None,
        )
        shown = presentation_tokens(issuer, settings)
        if shown is not None:  # 亮证 with a time-limited code, by hand
            cases += "\n".join(["", *presentation_lines(base, shown)])
        print(banner(base, tokens, cases), flush=True)

    return await serve_until_stopped(app, "127.0.0.1", port, on_started=started)
