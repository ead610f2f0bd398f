"""Opening SQLite for the embedded stores: WAL, full fsync on commit, a busy timeout.

synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut may lose the last
commits although the caller was told they were durable. With group commit one fsync covers a
whole batch, so FULL costs little throughput and keeps "acknowledged" meaning "on disk".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import aiosqlite

from gateway.stores.migrations import Migration, migrate_sqlite

Synchronous = Literal["FULL", "NORMAL"]


async def connect_sqlite(
    path: str | Path, *, synchronous: Synchronous = "FULL", read_only: bool = False
) -> aiosqlite.Connection:
    """A connection in autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT)."""
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        if not read_only:
            await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def open_migrated_pair(
    path: Path,
    *,
    component: str,
    migrations: Sequence[Migration],
    synchronous: Synchronous = "FULL",
) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """A writer with ``component``'s migrations applied and a reader on the same file.

    Two connections: SQLite has one writer at a time, and reads in WAL mode must not queue behind
    a batch being committed on the writer's thread.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = await connect_sqlite(path, synchronous=synchronous)
    try:
        await migrate_sqlite(writer, component, migrations)
        reader = await connect_sqlite(path, synchronous=synchronous)
    except BaseException:
        await writer.close()
        raise
    return writer, reader
