"""The `tongban` command: demo, serve, config check."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.settings import ConfigError, load_settings


def _config_dir(value: str) -> Path:
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tongban",
        description="跨省通办 integration gateway: unified identity, routed calls, durable cases.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the gateway with demo provinces on this machine",
        description="Start the gateway and the demo provincial systems on 127.0.0.1, with "
        "embedded stores under --data-dir, and print ready-made curl lines.",
    )
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".tongban-demo"),
        help="where the demo keeps its stores (default ./.tongban-demo)",
    )
    demo.add_argument(
        "--config",
        type=_config_dir,
        default=Path("config"),
        help="configuration directory (default ./config)",
    )

    serve = commands.add_parser(
        "serve", help="run the gateway", description="Run the gateway from a configuration."
    )
    serve.add_argument("--config", type=_config_dir, required=True, help="configuration directory")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--insecure-dev-tokens",
        action="store_true",
        help="accept development bearer tokens (never in production; prints one per level)",
    )

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check",
        help="validate a configuration directory",
        description="Validate every file, entry and field, cross-check routes, systems and "
        "services, and let each adapter check its own options. Exits 1 on any problem.",
    )
    check.add_argument("--config", type=_config_dir, required=True, help="configuration directory")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="check secret references' shape without reading their values",
    )
    return parser


def _config_check(config_dir: Path, resolve_secrets: bool) -> int:
    try:
        settings = load_settings(config_dir, resolve_secrets=resolve_secrets)
    except ConfigError as exc:
        print(f"configuration {config_dir}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"configuration {config_dir}: ok ({len(settings.systems)} systems, "
        f"{len(settings.services)} services, {len(settings.routes)} routes)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return _config_check(args.config, resolve_secrets=not args.no_secrets)
    if args.command == "demo":
        from gateway.demo.runner import run_demo  # noqa: PLC0415 - demo-only dependencies

        data_dir = args.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        config_dir = args.config.resolve()
        if not config_dir.is_dir():
            print(
                f"no configuration directory {config_dir} (run from the repository root "
                "or pass --config)",
                file=sys.stderr,
            )
            return 1
        return _run(run_demo(config_dir=config_dir, port=args.port, data_dir=data_dir))
    if args.command == "serve":
        from gateway.serve import run_serve  # noqa: PLC0415

        return _run(
            run_serve(
                config_dir=args.config,
                host=args.host,
                port=args.port,
                dev_tokens=args.insecure_dev_tokens,
            )
        )
    return 2


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a server coroutine until SIGINT/SIGTERM; the coroutine returns an exit code."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
