"""Opening SQLite for the embedded stores: WAL, full fsync on commit, a busy timeout.

synchronous=FULL: in WAL mode NORMAL skips the fsync at commit, so a power cut may lose the last
commits although the caller was told they were durable. With group commit one fsync covers a
whole batch, so FULL costs little throughput and keeps "acknowledged" meaning "on disk".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import aiosqlite

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
