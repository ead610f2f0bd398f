"""Key rotations as audit events: `tongban keys rotate` (OpenID provider or audit signing key).

The command runs beside (or instead of) a serving gateway, so it appends to this instance's
chain with a short-lived writer of its own: a running gateway's writer that meets the new
record gets ``ChainConflict``, re-reads the head and carries on (docs/audit.md, "Chains and
instances"), so the chain never forks. The record is ``required``: the command reports success
only once it is durable. Closing the writer signs the head, with the new key when the audit key
was the one rotated.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.audit.keys import FileKeyStore
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.setup import open_audit_writer
from gateway.settings import AuditSettings


def rotate_audit_key(data_dir: Path) -> str:
    """Add a new audit checkpoint signing key; earlier keys stay for verification."""
    keys = FileKeyStore.load_or_create(data_dir)
    key = keys.rotate()
    return str(key.kid)


async def record_key_rotation(
    settings: AuditSettings,
    data_dir: Path,
    instance_id: str,
    *,
    key: str,
    kid: str,
    algorithm: str,
    kept: int,
    actor: str | None = None,
) -> tuple[str, int]:
    """A durable ``key_rotated`` record (``key``: oidc or audit); returns (chain, sequence)."""
    store, _keys, writer = await open_audit_writer(settings, data_dir, instance_id)
    try:
        sequence = await writer.append(
            AuditEvent(
                type=EventType.KEY_ROTATED,
                actor=actor,
                operation=f"rotate_{key}_signing_key",
                outcome="ok",
                extra={"key": key, "kid": kid, "algorithm": algorithm, "kept": kept},
            )
        )
    finally:
        await writer.aclose()
        await store.aclose()
    return writer.chain, sequence


def record_key_rotation_blocking(
    settings: AuditSettings,
    data_dir: Path,
    instance_id: str,
    *,
    key: str,
    kid: str,
    algorithm: str,
    kept: int,
    actor: str | None = None,
) -> tuple[str, int]:
    """For the CLI: run ``record_key_rotation`` on a loop of its own."""
    return asyncio.run(
        record_key_rotation(
            settings,
            data_dir,
            instance_id,
            key=key,
            kid=kid,
            algorithm=algorithm,
            kept=kept,
            actor=actor,
        )
    )
