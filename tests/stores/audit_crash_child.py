"""Child process for the crash test: appends audit records flat out and prints each ACK.

Usage: audit_crash_child.py KEY_DIR sqlite PATH | KEY_DIR postgres DSN SCHEMA
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import FileKeyStore
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.postgres_audit import PostgresAuditStore
from gateway.stores.sqlite_audit import SqliteAuditStore


def open_store(args: list[str]) -> AuditStore:
    if args[0] == "sqlite":
        return SqliteAuditStore(Path(args[1]))
    return PostgresAuditStore(args[1], schema=args[2])


async def main(argv: list[str]) -> None:
    keys = FileKeyStore.load_or_create(Path(argv[0]))
    store = open_store(argv[1:])
    await store.open()
    writer = AuditWriter(
        store,
        chain="crash-1",
        signer=CheckpointSigner(keys),
        settings=WriterSettings(batch_size=200, linger=0.002, checkpoint_every=500),
    )
    await writer.start()
    out = sys.stdout

    async def worker(worker_id: int) -> None:
        n = 0
        while True:
            n += 1
            sequence = await writer.append(
                AuditEvent(type=EventType.LOGIN, request_id=f"w{worker_id}-{n}")
            )
            out.write(f"ACK {sequence}\n")
            out.flush()

    await asyncio.gather(*(worker(i) for i in range(64)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
