"""`tongban cases list | show | replay`: read the case store of a configuration or data directory.

Prints identifiers, statuses, provinces and reasons; never a case's data (用而不存).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.cases.lifecycle import NotReplayable, iso_now, plan_replay
from gateway.cases.model import Case, CaseStatus
from gateway.cases.store import CaseStore, CaseStoreError, StaleCase
from gateway.settings import ConfigError, load_settings
from gateway.stores.postgres_cases import PostgresCaseStore
from gateway.stores.sqlite_cases import SqliteCaseStore

DEFAULT_DB = "cases.db"


def add_cases_commands(commands: Any) -> None:
    """Register ``cases`` on the top-level sub-parsers of `tongban`."""
    cases = commands.add_parser(
        "cases",
        help="list, show and replay cases (办件)",
        description="Inspect the case store of a configuration (--config) or of an embedded "
        "data directory (--data-dir), and replay dead-lettered cases.",
    )
    actions = cases.add_subparsers(dest="cases_command", required=True, metavar="ACTION")

    def where(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--config", type=Path, help="configuration directory (its case store)")
        group.add_argument(
            "--data-dir", type=Path, help=f"data directory of an embedded store ({DEFAULT_DB})"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    listing = actions.add_parser(
        "list", help="list cases", description="List cases, newest first (or dead letters)."
    )
    where(listing)
    listing.add_argument("--status", choices=[s.value for s in CaseStatus], help="only this status")
    listing.add_argument("--subject", help="only this applicant (pairwise id)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument(
        "--dead-letters", action="store_true", help="list dead-lettered entries with the reason"
    )
    show = actions.add_parser(
        "show", help="show one case", description="A case's parts, timeline and outbox entries."
    )
    where(show)
    show.add_argument("case_id", help="the case id from the receipt")
    replay = actions.add_parser(
        "replay",
        help="replay dead-lettered cases",
        description="Put a case's dead-lettered entries back on the delivery schedule; a "
        "running gateway's worker delivers them. --all replays every dead-lettered case.",
    )
    where(replay)
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("case_id", nargs="?", help="the case to replay")
    target.add_argument("--all", action="store_true", help="every dead-lettered case")
    replay.add_argument("--operator", default="cli", help="recorded as the actor (default cli)")


def _open_store(args: argparse.Namespace) -> CaseStore:
    if args.data_dir is not None:
        path = args.data_dir / DEFAULT_DB
        if not path.exists():
            raise SystemExit(f"no case store at {path}")
        return SqliteCaseStore(path)
    try:
        settings = load_settings(args.config, resolve_secrets=False)
    except ConfigError as exc:
        raise SystemExit("configuration problems:\n  " + "\n  ".join(exc.problems)) from None
    config = settings.gateway.cases.store
    if config.backend == "postgres":
        assert config.dsn is not None
        return PostgresCaseStore(config.dsn, schema=config.schema_name, max_size=2)
    return SqliteCaseStore(settings.data_dir() / config.path)


def _print(rows: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _show(case: Case) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "service": case.service,
        "mode": case.mode.value,
        "status": case.status.value,
        "receiving_province": case.receiving_province,
        "actor": case.actor,
        "created_at": case.created_at,
        "outcome": case.outcome,
        "parts": [
            {
                "part": p.number,
                "name": p.name,
                "after": [case.part(n).label for n in p.after],
                "required": p.required,
                "handling_province": p.handling_province,
                "system": p.system,
                "operation": p.operation,
                "status": p.status.value,
                "error_code": p.error_code,
                "cause": p.cause,
                "supplement_request": p.supplement.as_json() if p.supplement else None,
            }
            for p in case.parts
        ],
        "timeline": [t.as_json() for t in case.transitions],
        "materials": [m.as_json() for m in case.materials],
        "supplements": [s.as_json() for s in case.supplements],
    }


async def _replay(store: CaseStore, case_id: str, operator: str) -> str:
    for _ in range(5):
        case = await store.get(case_id)
        if case is None:
            return "not found"
        dead = [e for e in await store.entries(case_id) if e.state == "dead"]
        try:
            step = plan_replay(case, dead, at=iso_now(), now=time.time(), actor=operator)
        except NotReplayable:
            return "nothing to replay"
        try:
            replayed = await store.commit(step)
        except StaleCase:
            continue
        return f"replayed ({len(dead)} entries) → {replayed.status.value}"
    return "busy; try again"


async def _run(args: argparse.Namespace) -> int:
    store = _open_store(args)
    try:
        await store.open()
    except CaseStoreError as exc:
        print(f"cannot open the case store: {exc}", file=sys.stderr)
        return 1
    try:
        if args.cases_command == "list":
            if args.dead_letters:
                entries = await store.dead_letters(limit=args.limit)
                rows = [
                    {
                        "case_id": e.case_id,
                        "part": e.part,
                        "kind": e.kind.value,
                        "attempts": e.attempts,
                        "reason": e.last_error,
                        "cause": e.cause or "",
                    }
                    for e in entries
                ]
                columns = ("case_id", "part", "kind", "attempts", "reason", "cause")
                _print(rows, args.json, columns)
                return 0
            status = CaseStatus(args.status) if args.status else None
            found = await store.list_cases(subject=args.subject, status=status, limit=args.limit)
            rows = [
                {
                    "case_id": s.case_id,
                    "service": s.service,
                    "mode": s.mode.value,
                    "status": s.status.value,
                    "provinces": f"{s.receiving_province}→{','.join(s.handling_provinces)}",
                    "updated_at": s.updated_at,
                }
                for s in found
            ]
            _print(
                rows, args.json, ("case_id", "service", "mode", "status", "provinces", "updated_at")
            )
            return 0
        if args.cases_command == "show":
            case = await store.get(args.case_id)
            if case is None:
                print(f"no case {args.case_id}", file=sys.stderr)
                return 1
            body = _show(case)
            body["outbox"] = [
                {
                    "entry": e.entry_id,
                    "kind": e.kind.value,
                    "part": e.part,
                    "state": e.state,
                    "attempts": e.attempts,
                    "last_error": e.last_error,
                    "cause": e.cause,
                }
                for e in await store.entries(case.case_id)
            ]
            sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        targets = (
            sorted({e.case_id for e in await store.dead_letters(limit=100_000)})
            if args.all
            else [args.case_id]
        )
        failed = 0
        for number, case_id in enumerate(targets, 1):
            outcome = await _replay(store, case_id, args.operator)
            failed += not outcome.startswith("replayed")
            print(f"[{number}/{len(targets)}] {case_id}: {outcome}")
        return 1 if failed and not args.all else 0
    finally:
        await store.aclose()


def run_cases_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
