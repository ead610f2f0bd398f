"""The `tongban` command: demo, init, serve, config check, keys, cases, audit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.cases.commands import add_cases_commands, run_cases_command
from gateway.event_loop import EventLoopUnavailable, configured_choice
from gateway.event_loop import run as run_on_loop
from gateway.packaged import DEMO_CONFIG_DIR
from gateway.settings import ConfigError, load_settings, read_yaml_text
from gateway.stores.sqlite import private_dir


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
        default=DEMO_CONFIG_DIR,
        help="configuration directory (default: the demo's, shipped with the package)",
    )

    init = commands.add_parser(
        "init",
        help="write a starter configuration for a deployment",
        description="Write a commented starter configuration into DIR (one province, one "
        "system, one service, one portal, one identity platform; every secret an environment "
        "reference), print what to fill in and which secrets to export. DIR must be new or "
        "empty. The files pass `tongban config check --no-secrets` as written.",
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="directory to write (new or empty)")

    serve = commands.add_parser(
        "serve", help="run the gateway", description="Run the gateway from a configuration."
    )
    serve.add_argument("--config", type=_config_dir, required=True, help="configuration directory")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--instance-id",
        help="override instance_id (it names this instance's audit chain; instances sharing "
        "one configuration each need their own)",
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        help="worker processes on the one port (default: one per core); each writes its own "
        "audit chain <instance_id>.w<n> when there are several",
    )
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

    keys = commands.add_parser("keys", help="signing keys of the OpenID provider")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_commands.add_parser(
        "rotate",
        help="add a new signing key; older keys keep verifying",
        description="Add a new active signing key to the data directory's key file. Older keys "
        "stay in the published JWKS so tokens they signed verify until they expire. Restart "
        "(or roll) the gateway instances to sign with the new key.",
    )
    where = rotate.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="data directory holding the key file")
    where.add_argument("--config", type=_config_dir, help="configuration directory (its data_dir)")
    rotate.add_argument(
        "--algorithm", choices=["ES256", "RS256"], default="ES256", help="(default ES256)"
    )
    rotate.add_argument(
        "--key",
        choices=["oidc", "audit"],
        default="oidc",
        help="which key: the OpenID provider's (default) or the audit checkpoint key (ES256); "
        "either way a key_rotated record is written to the audit trail",
    )
    subject = keys_commands.add_parser(
        "subject",
        help="print a province's subject key (to hand to that province)",
        description="Print, in hex, the key a handling province uses to check the data "
        "subjects of its identity assertions: HKDF-SHA256 of identity.link_secret for that "
        "province (docs/data-subjects.md). It is a secret: hand it to that province only.",
    )
    subject.add_argument(
        "--config", type=_config_dir, required=True, help="configuration directory"
    )
    subject.add_argument("--province", required=True, help="GB/T 2260 code, e.g. 61")
    add_cases_commands(commands)
    _add_audit_commands(commands)
    return parser


def _workers(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError("between 1 and 256")
    return count


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="verify and export the tamper-evident audit trail")
    actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="recompute every chain and check the checkpoint signatures",
        description="Recompute every record hash and link of every chain, check each signed "
        "checkpoint, and name the first bad record (changed, missing, reordered, truncated, "
        "bad signature). Exit 0 when the trail verifies, 1 when it does not, 2 when it "
        "cannot be read.",
    )
    source = _trail_location(verify)
    source.add_argument("--file", type=Path, help="an export written by `tongban audit export`")
    verify.add_argument(
        "--strict",
        action="store_true",
        help="also prove each record is in canonical form (about 15%% slower)",
    )
    export = actions.add_parser(
        "export",
        help="write records (and the checkpoints that close them) as JSON Lines",
        description="Write the records of a time window, widened to the signed checkpoints "
        "that cover them, with the public keys, so the file verifies offline.",
    )
    _trail_location(export)
    export.add_argument("--since", type=_timestamp, help="first time included (ISO 8601)")
    export.add_argument("--until", type=_timestamp, help="first time excluded (ISO 8601)")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    backup = actions.add_parser(
        "backup",
        help="copy the embedded (SQLite) audit files as one snapshot, while the gateway runs",
        description="Copy every audit file of the data directory (one per worker of `serve "
        "--workers N`) into a directory, all as of one moment, so the copy verifies.",
    )
    _trail_location(backup)
    backup.add_argument("--out", type=Path, required=True, help="directory to write the copies to")


def _trail_location(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The audit trail's place: a configuration directory or a data directory, one of them
    (the group, for a command that takes a third)."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=_config_dir, help="the gateway's configuration directory")
    where.add_argument("--data-dir", type=Path, help="a data directory as `tongban demo` keeps it")
    return where


def _audit(args: argparse.Namespace) -> int:
    from gateway.audit.commands import (  # noqa: PLC0415
        backup_command,
        export_command,
        verify_command,
    )

    if args.audit_command == "backup":
        return backup_command(config_dir=args.config, data_dir=args.data_dir, out=args.out)
    if args.audit_command == "verify":
        return verify_command(
            config_dir=args.config, data_dir=args.data_dir, file=args.file, strict=args.strict
        )
    return export_command(
        config_dir=args.config,
        data_dir=args.data_dir,
        out=args.out,
        since=args.since,
        until=args.until,
    )


def _config_check(config_dir: Path, resolve_secrets: bool) -> int:
    try:
        settings = load_settings(config_dir, resolve_secrets=resolve_secrets)
    except ConfigError as exc:
        print(exc.report(config_dir), file=sys.stderr)
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
    if args.command == "audit":
        return _audit(args)
    if args.command == "cases":
        return run_cases_command(args)
    if args.command == "demo":
        from gateway.demo.runner import run_demo  # noqa: PLC0415 - demo-only dependencies

        data_dir = args.data_dir.resolve()
        private_dir(data_dir)
        config_dir = args.config.resolve()
        if not config_dir.is_dir():
            print(f"no configuration directory {config_dir}", file=sys.stderr)
            return 1
        return _run(
            run_demo(config_dir=config_dir, port=args.port, data_dir=data_dir),
            event_loop=configured_choice(config_dir),
        )
    if args.command == "init":
        return _init(args.dir)
    if args.command == "keys" and args.keys_command == "subject":
        return _subject_key(args.config, args.province)
    if args.command == "keys":
        return _keys_rotate(args.data_dir, args.config, args.algorithm, args.key)
    if args.command == "serve":
        from gateway.workers import default_workers, run_workers  # noqa: PLC0415

        return _run(
            run_workers(
                config_dir=args.config,
                host=args.host,
                port=args.port,
                dev_tokens=args.insecure_dev_tokens,
                workers=args.workers or default_workers(),
                instance_id=args.instance_id,
            )
        )
    return 2


def _init(directory: Path) -> int:
    from gateway.starter import StarterError, write_starter  # noqa: PLC0415

    try:
        starter = write_starter(directory)
    except (StarterError, OSError) as exc:
        print(f"tongban init: {exc}", file=sys.stderr)
        return 1
    print(starter.report())
    return 0


def _subject_key(config_dir: Path, province: str) -> int:

    from gateway.identity.subject_keys import province_key  # noqa: PLC0415
    from gateway.secrets import read_secret_ref  # noqa: PLC0415
    from gateway.settings import PROVINCES  # noqa: PLC0415

    if province not in PROVINCES:
        print(f"{province!r} is not a GB/T 2260 province code", file=sys.stderr)
        return 1
    # Only the link secret is read (the other secrets of the configuration need not be set).
    try:
        settings = load_settings(config_dir, resolve_secrets=False)
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 1
    raw = read_yaml_text((config_dir / "gateway.yaml").read_text(encoding="utf-8")) or {}
    reference = (raw.get("identity") or {}).get("link_secret")
    if settings.gateway.identity is None or reference is None:
        print("gateway.yaml has no identity.link_secret: no subject keys", file=sys.stderr)
        return 1
    try:
        secret = read_secret_ref(reference)
    except ValueError as exc:
        print(f"identity.link_secret: {exc}", file=sys.stderr)
        return 1
    print(province_key(secret, province).hex())
    return 0


def _keys_rotate(
    data_dir: Path | None, config_dir: Path | None, algorithm: str, key: str = "oidc"
) -> int:
    from gateway.identity.keys import KeyFileError, rotate_key_file  # noqa: PLC0415
    from gateway.identity.provider import KEY_FILE_NAME  # noqa: PLC0415

    if data_dir is None:
        assert config_dir is not None  # argparse: one of the two is required
        try:
            data_dir = load_settings(config_dir, resolve_secrets=False).data_dir()
        except ConfigError as exc:
            print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
            return 1
    if key == "audit":
        return _audit_key_rotate(data_dir, config_dir)
    try:
        new_kid, kept = rotate_key_file(data_dir / KEY_FILE_NAME, algorithm)  # type: ignore[arg-type]
    except KeyFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"new {algorithm} signing key {new_kid}; kept for verification: {', '.join(kept)}")
    return _record_rotation(data_dir, config_dir, "oidc", new_kid, algorithm, len(kept))


def _audit_key_rotate(data_dir: Path, config_dir: Path | None) -> int:
    from gateway.audit.rotation import rotate_audit_key  # noqa: PLC0415

    try:
        new_kid = rotate_audit_key(data_dir)
    except (OSError, ValueError) as exc:
        print(f"cannot rotate the audit signing key: {exc}", file=sys.stderr)
        return 1
    print(f"new ES256 audit checkpoint key {new_kid}; earlier keys kept for verification")
    return _record_rotation(data_dir, config_dir, "audit", new_kid, "ES256", 0)


def _record_rotation(
    data_dir: Path, config_dir: Path | None, key: str, kid: str, algorithm: str, kept: int
) -> int:
    """The key_rotated record, durably, on this instance's chain (gateway/audit/rotation.py)."""
    from gateway.audit.rotation import record_key_rotation_blocking  # noqa: PLC0415
    from gateway.audit.store import AuditStoreError  # noqa: PLC0415
    from gateway.audit.writer import ChainTailMismatch  # noqa: PLC0415
    from gateway.errors import AuditUnavailable  # noqa: PLC0415
    from gateway.settings import AuditSettings, GatewaySettings  # noqa: PLC0415

    audit, instance_id = AuditSettings(), GatewaySettings().instance_id
    try:
        if config_dir is not None:
            settings = load_settings(config_dir)
            audit, instance_id = settings.gateway.audit, settings.gateway.instance_id
        chain, sequence = record_key_rotation_blocking(
            audit, data_dir, instance_id, key=key, kid=kid, algorithm=algorithm, kept=kept,
            actor="cli",
        )  # fmt: skip
    except (ConfigError, AuditStoreError, AuditUnavailable, ChainTailMismatch, OSError) as exc:
        print(f"the key was rotated but NOT recorded in the audit trail: {exc}", file=sys.stderr)
        return 1
    print(f"recorded in the audit trail: chain {chain}, record {sequence}")
    return 0


def _run(coro: Coroutine[Any, Any, int], event_loop: str = "asyncio") -> int:
    """Run a server coroutine until SIGINT/SIGTERM; the coroutine returns an exit code.
    ``event_loop`` is a ``server.event_loop`` choice (the supervisor of `serve` keeps asyncio's
    loop: its workers, which serve the requests, take the configured one)."""
    try:
        return run_on_loop(coro, event_loop)
    except EventLoopUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
