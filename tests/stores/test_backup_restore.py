"""docs/operations.md's backup and restore procedures, run as written (bash, the documented
commands) against a gateway that has taken a service call and cases: SQLite in the data
directory, and PostgreSQL on schemas of its own.

Each test backs up while the gateway runs, takes one more case in after the backup, stops the
gateway, damages the stores, restores, and checks what the document promises: the trail
verifies, the cases of the backup are back and the later one is not, and the gateway continues
the restored chain (the trail still verifies after it wrote more).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.cases import DEMO_CASES
from gateway.demo.examples import DEMO_CALLS
from tests.flows.conftest import CONFIG_DIR, Journey, demo_journey
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ACCOUNT_QUERY = next(c for c in DEMO_CALLS if c.body["operation"] == "account-query")
AUDIT_DSN_ENV = "TONGBAN_TEST_AUDIT_DSN"


def procedure(name: str) -> str:
    match = re.search(
        rf"<!-- procedure: {name} -->\n```sh\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.S
    )
    assert match, f"docs/operations.md has no procedure {name!r}"
    return match.group(1)


def run_procedure(name: str, **variables: str) -> str:
    """The block in bash with errexit, nounset and pipefail, `tongban` of this environment on
    the PATH, the environment of the test (the demo's secrets) plus ``variables``."""
    env = {**os.environ, **variables}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", procedure(name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def take_a_call_and_a_case(journey: Journey, index: int) -> str:
    status, answer = await journey.call(ACCOUNT_QUERY.service, ACCOUNT_QUERY.body)
    assert status == 200, answer
    _scenario, _title, key, body = DEMO_CASES[index]
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    receipt: dict[str, Any] = await response.json()
    assert response.status == 202, receipt
    return str(receipt["case_id"])


async def backed_up_then_one_more_case(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, config: Path, backup: Callable[[], object]
) -> tuple[str, str]:
    """(the case in the backup, the case taken in after it)."""
    async with demo_journey(data_dir, monkeypatch, config_dir=config) as journey:
        kept = await take_a_call_and_a_case(journey, 0)
        await asyncio.to_thread(backup)
        lost = await take_a_call_and_a_case(journey, 1)
    return kept, lost


async def continue_the_restored_chain(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, config: Path
) -> None:
    async with demo_journey(data_dir, monkeypatch, config_dir=config) as journey:
        status, answer = await journey.call(ACCOUNT_QUERY.service, ACCOUNT_QUERY.body)
        assert status == 200, answer


def test_sqlite_backup_while_running_and_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, backup_dir = tmp_path / "data", tmp_path / "backups" / "b1"
    data_dir.mkdir()
    where = {"DATA_DIR": str(data_dir), "BACKUP_DIR": str(backup_dir)}

    kept, lost = asyncio.run(
        backed_up_then_one_more_case(
            data_dir, monkeypatch, CONFIG_DIR, lambda: run_procedure("backup-sqlite", **where)
        )
    )
    assert (backup_dir / "audit.sqlite").exists()
    assert (backup_dir / "audit-signing-keys.jwks").stat().st_mode & 0o077 == 0
    # Damage: the audit store and the case store are unreadable.
    (data_dir / "audit.sqlite").write_bytes(b"\0" * 4096)
    (data_dir / "cases.db").unlink()

    listed = run_procedure("restore-sqlite", **where)
    assert kept in listed
    assert lost not in listed, "a case taken in after the backup cannot come back"
    assert list(tmp_path.glob("data.damaged-*")), "the damaged directory is kept as evidence"

    asyncio.run(continue_the_restored_chain(data_dir, monkeypatch, CONFIG_DIR))
    verified = run_procedure("backup-sqlite", DATA_DIR=str(data_dir),
                             BACKUP_DIR=str(tmp_path / "backups" / "b2"))  # fmt: skip
    assert "audit trail verified" in verified


@pytest.fixture
def schemas() -> Iterator[tuple[str, str]]:
    postgres_or_skip()
    audit, cases = (f"t_{kind}_{secrets.token_hex(5)}" for kind in ("audit", "cases"))
    try:
        yield audit, cases
    finally:
        run_private(drop_all(audit, cases))


async def drop_all(*prefixes: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(PG_DSN)
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE ANY($1::text[])",
            [f"{prefix}%" for prefix in prefixes],
        )
    finally:
        await conn.close()
    for row in names:
        await drop_schema(row["nspname"])


def postgres_config(tmp_path: Path, data_dir: Path, audit: str, cases: str) -> Path:
    """The demo's configuration with the audit trail and the cases in PostgreSQL."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    gateway = yaml.safe_load((config / "gateway.yaml").read_text(encoding="utf-8"))
    gateway["data_dir"] = str(data_dir)
    gateway["audit"] = {"store": "postgres", "dsn": {"env": AUDIT_DSN_ENV}, "schema_name": audit}
    gateway["cases"]["store"] = {"backend": "postgres", "dsn": PG_DSN, "schema": cases}
    (config / "gateway.yaml").write_text(yaml.safe_dump(gateway, allow_unicode=True))
    return config


@pytest.mark.postgres
def test_postgres_backup_while_running_and_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schemas: tuple[str, str]
) -> None:
    audit, cases = schemas
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = postgres_config(tmp_path, data_dir, audit, cases)
    monkeypatch.setenv(AUDIT_DSN_ENV, PG_DSN)
    where = {
        "PG_DSN": PG_DSN,
        "AUDIT_SCHEMA": audit,
        "CASES_SCHEMA": cases,
        "CONFIG_DIR": str(config),
        "DATA_DIR": str(data_dir),
        "BACKUP_DIR": str(tmp_path / "backup"),
    }

    kept, lost = asyncio.run(
        backed_up_then_one_more_case(
            data_dir, monkeypatch, config, lambda: run_procedure("backup-postgres", **where)
        )
    )
    assert (tmp_path / "backup" / "tongban.dump").stat().st_size > 0
    # Damage: a record of the trail changed behind the triggers' back.
    run_private(tamper_first_record(audit))
    broken = subprocess.run(
        [str(Path(sys.executable).parent / "tongban"), "audit", "verify", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert broken.returncode == 1, broken.stdout + broken.stderr

    listed = run_procedure("restore-postgres", **where)
    assert "audit trail verified" in listed
    assert kept in listed
    assert lost not in listed, "a case taken in after the backup cannot come back"

    asyncio.run(continue_the_restored_chain(data_dir, monkeypatch, config))
    again = subprocess.run(
        [str(Path(sys.executable).parent / "tongban"), "audit", "verify", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr


async def tamper_first_record(schema: str) -> None:
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
            await conn.execute(
                "UPDATE audit_records SET record = replace(record, '\"v\":1', '\"v\":1 ')"
                " WHERE sequence = 1"
            )
    finally:
        await conn.close()
