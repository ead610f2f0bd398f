"""The demo in two processes: its fakes in one, the gateway in the other (for the soak).

``tongban demo`` hosts the gateway *and* every fake the gateway talks to (provincial back-ends,
identity platforms, portals) in one process, so that process's memory is not the gateway's.
The soak (bench/soak.py) runs them apart, to judge the gateway's own RSS:

    python -m gateway.demo.split fakes   --gateway-port P --data-dir D --config C --handoff F
    python -m gateway.demo.split gateway --port P         --data-dir D --config C --handoff F

The fakes start first, on free ports, pointed at the gateway's future issuer
``http://127.0.0.1:P``; they write their addresses to the handoff file ``F`` (JSON, no secret)
and serve until SIGINT/SIGTERM. The gateway reads ``F``, points the configuration at those
addresses exactly as `tongban demo` does, and serves on ``P``. Both read the back-ends'
credentials from the environment (``DemoSecrets.env()``: the soak generates them) and the
identity secrets from the shared data directory (``DemoIdentitySecrets``, 0600).

Not a way to run the demo by hand: no banner, and the portals do not learn the S13 consent the
gateway seeds (that needs the two in one process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.demo.backends import DemoSecrets, start_demo_backends
from gateway.demo.federation import DemoIdentitySecrets, IdentityAddresses, start_demo_identity
from gateway.demo.memory_probe import start_from_env
from gateway.demo.runner import demo_identity_env, point_at, serve_demo_gateway
from gateway.logs import configure_logging
from gateway.settings import ConfigError, load_settings

QINGHAI_PORTAL = "demo-portal-qinghai"


async def run_fakes(*, gateway_port: int, data_dir: Path, config_dir: Path, handoff: Path) -> int:
    """The back-ends, platforms and portals until SIGINT/SIGTERM; their addresses in
    ``handoff`` once they all listen."""
    configure_logging("info", "console", stream=sys.stderr)
    loop = asyncio.get_running_loop()
    start_from_env(loop)
    backend_secrets = DemoSecrets.from_env(os.environ)
    os.environ.update(demo_identity_env(data_dir))
    issuer = f"http://127.0.0.1:{gateway_port}"
    async with await start_demo_backends(backend_secrets, config_dir=config_dir) as backends:
        identity = await start_demo_identity(issuer, DemoIdentitySecrets.from_env(os.environ))
        async with identity:
            addresses = identity.addresses()
            written = handoff.with_suffix(".tmp")
            written.write_text(
                json.dumps({"overrides": backends.overrides(), "identity": addresses.to_json()}),
                encoding="utf-8",
            )
            written.replace(handoff)  # whole or absent: the gateway waits for it
            print(f"demo fakes ready; Qinghai portal {addresses.portals[QINGHAI_PORTAL]}/")
            sys.stdout.flush()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    return 0


async def run_gateway(*, port: int, data_dir: Path, config_dir: Path, given: dict[str, Any]) -> int:
    """The demo's gateway, on the fakes whose addresses the handoff file gave."""
    configure_logging("info", "console", stream=sys.stderr)
    start_from_env(asyncio.get_running_loop())
    os.environ.update(demo_identity_env(data_dir))
    addresses = IdentityAddresses.from_json(given["identity"])
    try:
        settings = point_at(load_settings(config_dir), given["overrides"], data_dir, port=port)
        settings = addresses.configure(settings)
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 1
    return await serve_demo_gateway(
        settings,
        data_dir=data_dir,
        port=port,
        portals={},
        banner=lambda base, _tokens, _cases: f"demo gateway ready on {base}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    roles = parser.add_subparsers(dest="role", required=True)
    fakes = roles.add_parser("fakes", help="the back-ends, platforms and portals")
    fakes.add_argument("--gateway-port", type=int, required=True)
    gateway = roles.add_parser("gateway", help="the gateway, on the fakes' addresses")
    gateway.add_argument("--port", type=int, required=True)
    for role in (fakes, gateway):
        role.add_argument("--data-dir", type=Path, required=True)
        role.add_argument("--config", type=Path, required=True)
        role.add_argument("--handoff", type=Path, required=True)
    args = parser.parse_args(argv)
    data_dir, config_dir = args.data_dir.resolve(), args.config.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if args.role == "fakes":
        run = run_fakes(
            gateway_port=args.gateway_port,
            data_dir=data_dir,
            config_dir=config_dir,
            handoff=args.handoff,
        )
    else:
        given = json.loads(args.handoff.read_text(encoding="utf-8"))
        run = run_gateway(port=args.port, data_dir=data_dir, config_dir=config_dir, given=given)
    return asyncio.run(run)


if __name__ == "__main__":
    sys.exit(main())
