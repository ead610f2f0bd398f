"""`tongban audit verify` and `tongban audit export`: read a gateway's audit store and check it.

The verifier shares only the canonical encoding and hash functions with the writer; it reads
the store of ``--config DIR`` or of ``--data-dir DIR`` (as `tongban demo` lays it out), or an
export file, and names the first bad record.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.audit.export import export_jsonl
from gateway.audit.keys import KEY_FILE_NAME, FileKeyStore
from gateway.audit.setup import audit_store_for
from gateway.audit.verifier import (
    ExportFormatError,
    VerificationReport,
    verify_export,
    verify_store,
)
from gateway.audit.verifier import Progress as VerifyProgress
from gateway.settings import AuditSettings, ConfigError, load_settings
from gateway.stores.sqlite_audit_files import backup_audit_files


@dataclass(frozen=True, slots=True)
class AuditLocation:
    """Where a gateway keeps its audit trail."""

    settings: AuditSettings
    data_dir: Path


def locate(config_dir: Path | None, data_dir: Path | None) -> AuditLocation:
    """From ``--config`` (its audit settings and data dir) or ``--data-dir`` (embedded SQLite)."""
    if config_dir is not None:
        settings = load_settings(config_dir)
        return AuditLocation(settings.gateway.audit, settings.data_dir())
    assert data_dir is not None
    return AuditLocation(AuditSettings(), data_dir)


def _print_report(report: VerificationReport, out: TextIO) -> int:
    for summary in report.chains.values():
        print(
            f"  chain {summary.chain}: records {summary.first_sequence}..{summary.last_sequence}, "
            f"{summary.checkpoints} checkpoints, signed up to {summary.last_checkpoint}, "
            f"unsigned tail {summary.unsigned_tail}",
            file=out,
        )
    rate = report.records / report.seconds if report.seconds else 0.0
    if report.ok and report.derived_checked:
        print(
            "  derived data: every record's stored time, lookup row and subject rows match"
            " the record",
            file=out,
        )
    if report.ok:
        print(
            f"audit trail verified: {len(report.chains)} chain(s), {report.records} records "
            f"in {report.seconds:.2f} s ({rate:,.0f} records/s)",
            file=out,
        )
        return 0
    first = report.first_problem
    print(f"AUDIT TRAIL NOT VERIFIED: first bad record: {first}", file=out)
    for problem in report.problems[1:20]:
        print(f"  also: {problem}", file=out)
    return 1


class _Bar:
    """A rich progress bar fed by the verifier's per-page callback (to stderr)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("verifying {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self._tasks: dict[str, int] = {}

    def __call__(self, update: VerifyProgress) -> None:
        task = self._tasks.get(update.chain)
        if task is None:
            task = self._tasks[update.chain] = self.progress.add_task(
                update.chain, total=update.total
            )
        self.progress.update(task, completed=update.done)  # type: ignore[arg-type]


async def _verify_store(location: AuditLocation, strict: bool) -> VerificationReport:
    keys = await asyncio.to_thread(FileKeyStore.load, location.data_dir)
    store = audit_store_for(location.settings, location.data_dir)
    await store.open()
    try:
        bar = _Bar()
        with bar.progress:
            return await verify_store(store, keys.public_keys(), progress=bar, strict=strict)
    finally:
        await store.aclose()


def verify_command(
    *, config_dir: Path | None, data_dir: Path | None, file: Path | None, strict: bool
) -> int:
    out = sys.stdout
    try:
        if file is not None:
            bar = _Bar()
            with bar.progress:
                report = verify_export(file, progress=bar, strict=strict)
        else:
            location = locate(config_dir, data_dir)
            report = asyncio.run(_verify_store(location, strict))
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    except (FileNotFoundError, ExportFormatError) as exc:
        print(f"cannot verify: {exc}", file=sys.stderr)
        return 2
    return _print_report(report, out)


async def _export(
    location: AuditLocation, out: Path, since: datetime | None, until: datetime | None
) -> str:
    keys = await asyncio.to_thread(FileKeyStore.load, location.data_dir)
    store = audit_store_for(location.settings, location.data_dir)
    await store.open()
    try:
        summary = await export_jsonl(
            store, out, since=since, until=until, public_keys=keys.public_keys()
        )
    finally:
        await store.aclose()
    chains = ", ".join(f"{c} {a}..{b}" for c, (a, b) in sorted(summary.chains.items()))
    if summary.moved_times:
        where = ", ".join(f"{c} record {s}" for c, s in summary.moved_times[:10])
        raise DerivedDataDamaged(
            f"the store's stored times do not match {len(summary.moved_times)} exported "
            f"record(s) ({where}): the time window may have lost records; the export in {out} "
            "is still verifiable, run `tongban audit verify` on the store"
        )
    return (
        f"exported {summary.records} records and {summary.checkpoints} checkpoints "
        f"({chains or 'no chains'}) to {out}; verify with: tongban audit verify --file {out}"
    )


def export_command(
    *,
    config_dir: Path | None,
    data_dir: Path | None,
    out: Path,
    since: datetime | None,
    until: datetime | None,
) -> int:
    try:
        location = locate(config_dir, data_dir)
        print(asyncio.run(_export(location, out, since, until)))
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"cannot export: {exc}", file=sys.stderr)
        return 2
    except DerivedDataDamaged as exc:
        print(f"EXPORT OF A TAMPERED STORE: {exc}", file=sys.stderr)
        return 1
    return 0


class DerivedDataDamaged(Exception):
    """The store's derived data (stored times, lookup rows) contradicts its records."""


def backup_command(*, config_dir: Path | None, data_dir: Path | None, out: Path) -> int:
    """`tongban audit backup`: the embedded trail's audit files, one consistent snapshot of all
    of them, into ``out`` (the workers of `serve --workers N` write one file each; their signed
    checkpoints witness each other's heads, so the files must be copied as of one moment), and
    the audit signing keys beside them, which the checkpoints are verified with."""
    try:
        location = locate(config_dir, data_dir)
    except ConfigError as exc:
        print("configuration problems:\n  " + "\n  ".join(exc.problems), file=sys.stderr)
        return 2
    if location.settings.store == "postgres":
        print("cannot back up: the audit trail is in PostgreSQL (use pg_dump)", file=sys.stderr)
        return 2
    try:
        copies = backup_audit_files(location.data_dir, out)
        keys = location.data_dir / KEY_FILE_NAME
        if keys.exists():  # its mode (0600) copied along with it
            copies.append(Path(shutil.copy2(keys, out / KEY_FILE_NAME)))
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot back up: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(copy.name for copy in copies) or "no audit files"
    print(f"backed up {names} to {out}; verify with: tongban audit verify --data-dir {out}")
    return 0
