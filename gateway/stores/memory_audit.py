"""AuditStore in memory: for unit tests and throw-away demos only (nothing survives a restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from gateway.audit.query import (
    AuditQuery,
    QueryPage,
    QueryPosition,
    lookup_row,
    matches,
    page_of,
    record_subjects,
)
from gateway.audit.store import (
    AuditStoreUnavailable,
    ChainConflict,
    ChainHead,
    RawRecord,
    StoredCheckpoint,
    StoredRecord,
)


class MemoryAuditStore:
    def __init__(self) -> None:
        self._chains: dict[str, str] = {}
        self._records: dict[str, list[StoredRecord]] = {}
        self._checkpoints: dict[str, list[StoredCheckpoint]] = {}
        self.available = True
        """Set to False to make every call raise AuditStoreUnavailable."""

    def _check(self) -> None:
        if not self.available:
            raise AuditStoreUnavailable("memory store switched off")

    async def open(self) -> None:
        self._check()

    async def aclose(self) -> None:
        return None

    async def register_chain(self, chain: str, created: str) -> None:
        self._check()
        self._chains.setdefault(chain, created)

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        self._check()
        await asyncio.sleep(0)  # a real store yields here; keep the interleavings honest
        self._check()
        staged: dict[str, list[StoredRecord]] = {}
        for record in records:
            rows = staged.setdefault(record.chain, list(self._records.get(record.chain, [])))
            expected = rows[-1].sequence + 1 if rows else 1
            if record.sequence < expected:
                raise ChainConflict("sequence already written")
            rows.append(record)
        if checkpoint is not None:
            known = {c.sequence for c in self._checkpoints.get(checkpoint.chain, [])}
            if checkpoint.sequence in known:
                raise ChainConflict("checkpoint already written")
        self._records.update(staged)
        if checkpoint is not None:
            self._checkpoints.setdefault(checkpoint.chain, []).append(checkpoint)

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        await self.append([], checkpoint)

    async def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        self._check()
        rows = [
            r
            for r in self._records.get(chain, [])
            if r.sequence >= start and (end is None or r.sequence <= end)
        ]
        for index in range(0, len(rows), page_size):
            yield rows[index : index + page_size]

    async def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        async for page in self.read_pages(chain, start, end, page_size=page_size):
            yield [(r.sequence, r.text.encode("utf-8"), r.hash) for r in page]

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        self._check()
        return [
            c
            for c in sorted(self._checkpoints.get(chain, []), key=lambda c: c.sequence)
            if c.sequence >= start and (end is None or c.sequence <= end)
        ]

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        found = await self.checkpoints(chain)
        return found[-1] if found else None

    async def chains(self) -> list[str]:
        self._check()
        return sorted(self._chains)

    async def head(self, chain: str) -> ChainHead | None:
        self._check()
        rows = self._records.get(chain)
        return ChainHead(chain, rows[-1].sequence, rows[-1].hash) if rows else None

    async def heads(self) -> dict[str, ChainHead]:
        self._check()
        return {
            chain: ChainHead(chain, rows[-1].sequence, rows[-1].hash)
            for chain, rows in self._records.items()
            if rows
        }

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        self._check()
        hits = [
            r.sequence
            for r in self._records.get(chain, [])
            if (since is None or r.time >= since) and (until is None or r.time < until)
        ]
        return (min(hits), max(hits)) if hits else None

    async def ping(self) -> None:
        self._check()

    async def query(self, query: AuditQuery) -> QueryPage:
        self._check()

        def key(record: StoredRecord) -> QueryPosition:
            return QueryPosition(record.time, record.chain, record.sequence)

        hits = [
            r
            for rows in self._records.values()
            for r in rows
            if matches(query, lookup_row(r))
            and (query.subject is None or query.subject in record_subjects(r.text))
            and (
                query.after is None
                or (key(r) > query.after if query.oldest_first else key(r) < query.after)
            )
        ]
        hits.sort(key=key, reverse=not query.oldest_first)
        return page_of(query, hits[: query.limit + 1])

    # Test hooks: the database triggers a real store has do not exist here.
    def records_of(self, chain: str) -> list[StoredRecord]:
        return self._records.setdefault(chain, [])

    def checkpoints_of(self, chain: str) -> list[StoredCheckpoint]:
        return self._checkpoints.setdefault(chain, [])
