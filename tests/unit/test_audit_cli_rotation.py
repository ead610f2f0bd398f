"""`tongban keys rotate` writes a durable key_rotated record, for the OpenID and the audit key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.audit.keys import FileKeyStore
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditRecord
from gateway.cli import main
from gateway.stores.sqlite_audit import SqliteAuditStore


async def _rotations(data_dir: Path) -> list[AuditRecord]:
    store = SqliteAuditStore(data_dir / "audit.sqlite")
    await store.open()
    try:
        page = await store.query(AuditQuery(types=("key_rotated",), oldest_first=True))
    finally:
        await store.aclose()
    return [AuditRecord.from_stored(r.text, r.hash) for r in page.records]


def test_rotating_either_key_writes_a_verified_key_rotated_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "rotate", "--data-dir", str(tmp_path)]) == 0
    assert main(["keys", "rotate", "--data-dir", str(tmp_path), "--key", "audit"]) == 0
    out = capsys.readouterr().out
    assert out.count("recorded in the audit trail: chain gw-1") == 2

    records = asyncio.run(_rotations(tmp_path))
    assert [(r.event.extra["key"], r.event.operation, r.event.actor) for r in records] == [
        ("oidc", "rotate_oidc_signing_key", "cli"),
        ("audit", "rotate_audit_signing_key", "cli"),
    ]
    oidc_keys = json.loads((tmp_path / "oidc-signing-keys.json").read_text())
    assert records[0].event.extra["kid"] in {k["jwk"]["kid"] for k in oidc_keys["keys"]}
    audit_keys = FileKeyStore.load_or_create(tmp_path)
    assert records[1].event.extra["kid"] == audit_keys.signing_key().kid
    assert set(records[1].event.extra) == {"key", "kid", "algorithm", "kept"}, "no key material"
    # The trail, checkpoints signed with the old and the new audit key, verifies.
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 0
