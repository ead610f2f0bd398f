"""Open the audit trail of a configuration: its store, signing keys and this instance's writer.

Shared by the running gateway and by `tongban audit verify/export`, so both read the same store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import FileKeyStore
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.settings import AuditSettings
from gateway.stores.postgres_audit import PostgresAuditStore
from gateway.stores.sqlite import private_dir
from gateway.stores.sqlite_audit_files import AUDIT_DB_NAME, SqliteAuditFiles

__all__ = ["AUDIT_DB_NAME", "audit_store_for", "open_audit_writer"]


def audit_store_for(
    settings: AuditSettings, data_dir: Path, chain: str | None = None
) -> AuditStore:
    """The (unopened) store a configuration names: PostgreSQL, or the audit files of data_dir
    (every one of them read; ``chain``, the one this process writes, in its own file when it
    is a worker's: ``gateway.stores.sqlite_audit_files``)."""
    if settings.store == "postgres":
        assert settings.dsn is not None, "validated by AuditSettings"
        return PostgresAuditStore(settings.dsn.get_secret_value(), schema=settings.schema_name)
    return SqliteAuditFiles(data_dir, chain)


async def open_audit_writer(
    settings: AuditSettings, data_dir: Path, instance_id: str
) -> tuple[AuditStore, FileKeyStore, AuditWriter]:
    """Open the store, load (or create) the signing keys and start this instance's chain."""
    await asyncio.to_thread(private_dir, data_dir)
    store = audit_store_for(settings, data_dir, instance_id)
    await store.open()
    try:
        keys = await asyncio.to_thread(FileKeyStore.load_or_create, data_dir)
        writer = AuditWriter(
            store,
            chain=instance_id,
            signer=CheckpointSigner(keys),
            alg=settings.algorithm,
            settings=WriterSettings(
                batch_size=settings.batch_size,
                linger=settings.linger_ms / 1000.0,
                buffered_linger=settings.buffered_linger_ms / 1000.0,
                buffer_limit=settings.buffer_limit,
                checkpoint_every=settings.checkpoint_every,
                checkpoint_interval=settings.checkpoint_interval,
            ),
        )
        await writer.start()
    except BaseException:
        await store.aclose()
        raise
    return store, keys, writer
