"""The embedded SQLite audit trail of a data directory: one store over its audit files.

A single process (`tongban demo`, `tongban serve` with one worker, `tongban keys rotate`)
writes ``audit.sqlite``. Each worker of `tongban serve --workers N` writes its chain into a file
of its own, ``audit.<chain>.sqlite`` (``audit.gw-1.w1.sqlite``): two processes committing to one
SQLite file make each other's connections drop their page cache and read the WAL again at
every transaction, and wait for each other's commit (its fsync included) on the file's one
write lock (docs/performance.md has what a file each saves).

Everything that reads the trail (the admin API's queries, `tongban audit verify`, the export,
the writer's witnessed heads) reads every audit file of the directory, found anew at each read
so that a worker started later is seen, and answers as one file holding all of them did: the
same chains, records, checkpoints, order and pages. A chain is normally in one file; one that
moved (a data directory whose workers' chains were in ``audit.sqlite`` before they got files of
their own continues each chain in its worker's file) is read as one sequence across the files,
and a record present in two files is read twice, so the verifier names it.

Each file is a ``SqliteAuditStore`` opened as before (migrated, lookup rows lost with a crash
made from the text), so its crash safety is the single file's. Writes go to the own file only.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from gateway.audit.query import AuditQuery, QueryPage, QueryPosition
from gateway.audit.store import (
    AuditStoreUnavailable,
    ChainHead,
    DerivedRow,
    RawRecord,
    StoredCheckpoint,
    StoredRecord,
    StoredSubjectRow,
    derived_sequence,
    raw_sequence,
    record_sequence,
)
from gateway.stores.sqlite import Synchronous, create_private
from gateway.stores.sqlite_audit import SqliteAuditStore

AUDIT_DB_NAME: Final = "audit.sqlite"
"""The audit file of a single process, and of every chain before workers had files of their
own."""

_WORKER_CHAIN: Final = re.compile(r"\.w[1-9][0-9]*\Z")
"""A worker's chain of `tongban serve --workers N` (``gateway.workers.worker_chain``)."""

_Row = TypeVar("_Row")


def audit_file_for(data_dir: Path, chain: str) -> Path:
    """The file a chain is written to: its own for a worker's chain, else ``audit.sqlite``."""
    if _WORKER_CHAIN.search(chain):
        return data_dir / f"audit.{chain}.sqlite"
    return data_dir / AUDIT_DB_NAME


def _is_audit_file(name: str) -> bool:
    """``audit.sqlite``, or the file of a worker's chain (``audit.<instance>.w<n>.sqlite``):
    a copy put beside them under another name (``audit.old.sqlite``) is not part of the trail."""
    if name == AUDIT_DB_NAME:
        return True
    if not (name.startswith("audit.") and name.endswith(".sqlite")):
        return False
    chain = name[len("audit.") : -len(".sqlite")]
    return bool(chain) and _WORKER_CHAIN.search(chain) is not None


def audit_files(data_dir: Path) -> list[Path]:
    """The audit files of a data directory: ``audit.sqlite`` first, then the others by name."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    found = sorted(name for name in names if _is_audit_file(name) and name != AUDIT_DB_NAME)
    if AUDIT_DB_NAME in names:
        found.insert(0, AUDIT_DB_NAME)
    return [data_dir / name for name in found]


async def merged_pages(
    sources: Sequence[AsyncIterator[list[_Row]]],
    sequence_of: Callable[[_Row], int],
    page_size: int,
) -> AsyncIterator[list[_Row]]:
    """Pages of rows in sequence order from sources each in sequence order (one chain's rows
    of several files). Runs of one source go over whole (a chain's files hold ranges that
    do not interleave), so each row costs no more than a comparison or two."""
    if len(sources) == 1:
        async for page in sources[0]:
            yield page
        return
    buffers: list[list[_Row]] = [[] for _ in sources]
    done = [False] * len(sources)
    out: list[_Row] = []
    while True:
        for index, source in enumerate(sources):
            while not buffers[index] and not done[index]:
                try:
                    buffers[index] = list(await anext(source))
                except StopAsyncIteration:
                    done[index] = True
        live = sorted(
            (i for i, buffer in enumerate(buffers) if buffer),
            key=lambda i: sequence_of(buffers[i][0]),
        )
        if not live:
            break
        buffer = buffers[live[0]]
        if len(live) == 1:
            take = len(buffer)
        else:  # up to the other sources' lowest sequence, equal ones included (at least one)
            bound = sequence_of(buffers[live[1]][0])
            take = bisect.bisect_right(buffer, bound, key=sequence_of)
        out.extend(buffer[:take])
        del buffer[:take]
        while len(out) >= page_size:
            yield out[:page_size]
            del out[:page_size]
    if out:
        yield out


def _position(record: StoredRecord) -> tuple[str, str, int]:
    return (record.time, record.chain, record.sequence)


class SqliteAuditFiles:
    """The audit files of ``data_dir`` as one AuditStore; ``chain``: the chain this process
    writes (its file is created if need be), None for a reader (`tongban audit verify`)."""

    lookup_rows_trail = True
    """Lookup rows follow their records within a second (see SqliteAuditStore)."""

    def __init__(
        self,
        data_dir: Path,
        chain: str | None = None,
        *,
        synchronous: Synchronous = "FULL",
        kernel_fsync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._chain = chain
        self._synchronous: Synchronous = synchronous
        self._kernel_fsync = kernel_fsync
        self._stores: dict[Path, SqliteAuditStore] = {}
        self._own: SqliteAuditStore | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    @property
    def path(self) -> Path:
        """The file this process writes (``audit.sqlite`` for a reader)."""
        if self._chain is None:
            return self.data_dir / AUDIT_DB_NAME
        return audit_file_for(self.data_dir, self._chain)

    async def open(self) -> None:
        self._closed = False
        try:
            if self._chain is not None:
                # The other files are opened at the first read (a checkpoint's witnessed heads,
                # a query): a worker's start waits for its own file only.
                self._own = await self._open_file(self.path)
                return
            if not await asyncio.to_thread(audit_files, self.data_dir):
                await self._open_file(self.path)  # an empty trail, as a single file was
            await self._files()
        except BaseException:
            await self.aclose()
            raise

    async def _open_file(self, path: Path) -> SqliteAuditStore:
        async with self._opening:
            store = self._stores.get(path)
            if store is None:
                if self._closed:
                    raise AuditStoreUnavailable("the audit store is not open")
                own = self._chain is not None and path == self.path
                store = SqliteAuditStore(  # another worker's file: read here, not appended to
                    path, synchronous=self._synchronous, kernel_fsync=self._kernel_fsync and own
                )
                await store.open()
                self._stores[path] = store
            return store

    async def _files(self) -> list[SqliteAuditStore]:
        """Every audit file of the directory, in file order, those new since the last read
        opened now."""
        if self._closed:
            raise AuditStoreUnavailable("the audit store is not open")
        paths = await asyncio.to_thread(audit_files, self.data_dir)
        stores = []
        for path in paths:
            store = self._stores.get(path)
            stores.append(store if store is not None else await self._open_file(path))
        return stores

    async def _holding(self, chain: str) -> list[SqliteAuditStore]:
        """The files that hold ``chain`` (registered or with records)."""
        return [store for store in await self._files() if chain in await store.chains()]

    async def aclose(self) -> None:
        self._closed = True
        async with self._opening:
            stores, self._stores, self._own = list(self._stores.values()), {}, None
        for store in stores:
            await store.aclose()

    def _writable(self) -> SqliteAuditStore:
        if self._own is None:
            raise AuditStoreUnavailable("the audit store is not open for writing")
        return self._own

    # --- writes: the own file only ----------------------------------------------------------

    async def register_chain(self, chain: str, created: str) -> None:
        await self._writable().register_chain(chain, created)

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        await self._writable().append(records, checkpoint)

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        await self._writable().append_checkpoint(checkpoint)

    # --- one chain's rows, across the files that hold it ------------------------------------

    async def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        sources = [
            s.read_pages(chain, start, end, page_size=page_size) for s in await self._holding(chain)
        ]
        async for page in merged_pages(sources, record_sequence, page_size):
            yield page

    async def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        sources = [
            s.read_raw_pages(chain, start, end, page_size=page_size)
            for s in await self._holding(chain)
        ]
        async for page in merged_pages(sources, raw_sequence, page_size):
            yield page

    async def read_derived_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[DerivedRow]]:
        sources = [
            s.read_derived_pages(chain, start, end, page_size=page_size)
            for s in await self._holding(chain)
        ]
        async for page in merged_pages(sources, derived_sequence, page_size):
            yield page

    async def orphan_lookup_rows(self, chain: str) -> list[int]:
        found: set[int] = set()
        for store in await self._holding(chain):
            found.update(await store.orphan_lookup_rows(chain))
        return sorted(found)[:1000]

    async def orphan_subject_rows(self, chain: str) -> list[int]:
        found: set[int] = set()
        for store in await self._holding(chain):
            found.update(await store.orphan_subject_rows(chain))
        return sorted(found)[:1000]

    async def subject_rows_between(
        self, chain: str, first: int, last: int
    ) -> list[StoredSubjectRow]:
        rows: list[StoredSubjectRow] = []
        for store in await self._holding(chain):
            rows.extend(await store.subject_rows_between(chain, first, last))
        return sorted(rows, key=lambda row: (row[0], row[1])) if len(rows) > 1 else rows

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        found: list[StoredCheckpoint] = []
        for store in await self._holding(chain):
            found.extend(await store.checkpoints(chain, start, end))
        return sorted(found, key=lambda checkpoint: checkpoint.sequence)

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        found = [await store.last_checkpoint(chain) for store in await self._holding(chain)]
        present = [checkpoint for checkpoint in found if checkpoint is not None]
        return max(present, key=lambda checkpoint: checkpoint.sequence, default=None)

    async def head(self, chain: str) -> ChainHead | None:
        found = [await store.head(chain) for store in await self._holding(chain)]
        present = [head for head in found if head is not None]
        return max(present, key=lambda head: head.sequence, default=None)

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        found = [
            await store.sequence_range(chain, since, until) for store in await self._holding(chain)
        ]
        present = [extent for extent in found if extent is not None]
        if not present:
            return None
        return min(low for low, _ in present), max(high for _, high in present)

    # --- every chain ------------------------------------------------------------------------

    async def chains(self) -> list[str]:
        names: set[str] = set()
        for store in await self._files():
            names.update(await store.chains())
        return sorted(names)

    async def heads(self) -> dict[str, ChainHead]:
        result: dict[str, ChainHead] = {}
        for store in await self._files():
            for chain, head in (await store.heads()).items():
                known = result.get(chain)
                if known is None or head.sequence > known.sequence:
                    result[chain] = head
        return dict(sorted(result.items()))

    async def lookup_gaps(self) -> dict[str, int]:
        """Per chain, how many lookup rows are missing below its highest one, over all files."""
        extents: dict[str, tuple[int, int]] = {}
        for store in await self._files():
            for chain, (high, count) in (await store.lookup_extents()).items():
                known_high, known_count = extents.get(chain, (0, 0))
                extents[chain] = (max(known_high, high), known_count + count)
        gaps = {chain: high - count for chain, (high, count) in extents.items()}
        return {chain: gap for chain, gap in gaps.items() if gap}

    async def ping(self) -> None:
        for store in [self._own] if self._own is not None else await self._files():
            await store.ping()

    async def query(self, query: AuditQuery) -> QueryPage:
        """Each file's page of the query, merged: the first ``limit`` records of all of them in
        the query's order, and a cursor when any file has more."""
        stores = await self._files()
        if len(stores) == 1:
            return await stores[0].query(query)
        pages = [await store.query(query) for store in stores]
        records = sorted(
            (record for page in pages for record in page.records),
            key=_position,
            reverse=not query.oldest_first,
        )
        if len(records) <= query.limit and all(page.next is None for page in pages):
            return QueryPage(records, None)
        kept = records[: query.limit]
        last = kept[-1]
        return QueryPage(kept, QueryPosition(last.time, last.chain, last.sequence))


BACKUP_LOCK_WAIT: Final = 10.0
"""Seconds the backup waits for the writers' locks (each writer holds one for a commit)."""


def backup_audit_files(data_dir: Path, target: Path) -> list[Path]:
    """Copy every audit file of ``data_dir`` into the directory ``target`` as one snapshot.

    A checkpoint of one worker's chain witnesses the heads of the other files, so copies of the
    files taken one after another would not verify: a file copied first would lack records that
    a file copied later vouches for. So the write locks of all files are taken together (for
    the moment it takes to open a read transaction on each; writers wait that long), the read
    transactions then fix the snapshot, and SQLite's online backup copies each file from it
    while the workers go on writing. Blocking (the CLI runs it on a thread of its own)."""
    paths = audit_files(data_dir)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    holders: list[sqlite3.Connection] = []
    readers: list[sqlite3.Connection] = []
    try:
        for path in paths:
            for group in (holders, readers):
                conn = sqlite3.connect(path, isolation_level=None)
                group.append(conn)
                conn.execute(f"PRAGMA busy_timeout = {int(BACKUP_LOCK_WAIT * 1000)}")
        try:
            for holder in holders:  # in file order, so two backups cannot wait for each other
                holder.execute("BEGIN IMMEDIATE")
            for reader in readers:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            for holder in holders:
                if holder.in_transaction:
                    holder.execute("ROLLBACK")
        copies = []
        for path, reader in zip(paths, readers, strict=True):
            copy = target / path.name
            create_private(copy)  # 0600 as the original, not the umask's mode
            destination = sqlite3.connect(copy)
            try:
                reader.backup(destination)
            finally:
                destination.close()
            copies.append(copy)
        return copies
    finally:
        for conn in holders + readers:
            conn.close()
