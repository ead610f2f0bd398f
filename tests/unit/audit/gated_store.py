"""An audit store whose commits can be held, for tests of what queues during a commit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.audit.store import StoredCheckpoint, StoredRecord
from gateway.stores.memory_audit import MemoryAuditStore


class GatedStore(MemoryAuditStore):
    """Counts committed batches; while ``gate`` is cleared every commit waits for it (and
    ``waiting`` says one does)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()
        self.commits = 0

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        await super().append(records, checkpoint)
        self.commits += 1
