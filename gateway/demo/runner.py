"""`tongban demo`: demo provinces and the gateway on one machine, embedded stores under one dir."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.demo.backends import DemoBackends, DemoSecrets, start_demo_backends
from gateway.demo.examples import DEMO_CALLS, curl_line, issue_demo_tokens
from gateway.identity.devtokens import DevTokenIssuer
from gateway.logs import configure_logging
from gateway.serve import serve_until_stopped
from gateway.settings import ConfigError, Settings, load_settings


def point_at(
    settings: Settings, overrides: Mapping[str, Mapping[str, Any]], data_dir: Path
) -> Settings:
    """The configuration with each demo system's address (and token URL) replaced."""
    systems = dict(settings.systems)
    for sid, fields in overrides.items():
        if sid not in systems:
            continue
        update: dict[str, Any] = {k: v for k, v in fields.items() if k != "auth"}
        if "auth" in fields:
            update["auth"] = {**systems[sid].auth, **fields["auth"]}
        systems[sid] = systems[sid].model_copy(update=update)
    gateway = settings.gateway.model_copy(update={"data_dir": data_dir})
    return dataclasses.replace(settings, systems=systems, gateway=gateway)


def _banner(port: int, backends: DemoBackends, tokens: dict[str, dict[str, str]]) -> str:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        f"tongban demo: gateway on {base}",
        "",
        "demo provincial systems (real servers on loopback):",
        *(f"  {sid:<18} {addr}" for sid, addr in sorted(backends.addresses.items())),
        "",
        "development tokens (this run only):",
        *(f"  {k}: {v['who']}\n    {v['token']}" for k, v in tokens.items()),
        "",
        f"catalogue:  curl -s {base}/api/v1/services -H 'Authorization: Bearer "
        f"{tokens['citizen-l3']['token']}'",
        f"operations: {base}/healthz  {base}/readyz  {base}/metrics  {base}/openapi.json",
        "",
    ]
    for call in DEMO_CALLS:
        lines += [f"# {call.scenario}: {call.title}", curl_line(base, call, tokens), ""]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


async def run_demo(*, config_dir: Path, port: int, data_dir: Path) -> int:
    """Run until SIGINT/SIGTERM; ``config_dir`` and ``data_dir`` are absolute and exist."""
    configure_logging("info", "console", stream=sys.stderr)
    secrets = DemoSecrets.generate()
    os.environ.update(secrets.env())
    async with await start_demo_backends(secrets, config_dir=config_dir) as backends:
        try:
            settings = point_at(load_settings(config_dir), backends.overrides(), data_dir)
        except ConfigError as exc:
            print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
            return 1
        issuer = DevTokenIssuer()
        tokens = issue_demo_tokens(issuer)
        app = create_app(settings, verifier=issuer)

        def started(bound: int) -> None:
            token_file = data_dir / "demo-tokens.json"
            token_file.write_text(json.dumps(tokens, ensure_ascii=False, indent=2))
            token_file.chmod(0o600)
            print(_banner(bound, backends, tokens), flush=True)

        return await serve_until_stopped(app, "127.0.0.1", port, on_started=started)
