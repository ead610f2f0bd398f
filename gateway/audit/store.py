"""The AuditStore protocol and the rows it moves; implementations live in gateway.stores.

A store keeps text exactly as given (the hash covers those bytes), appends atomically, and
refuses UPDATE, DELETE and TRUNCATE in the database itself. It knows nothing about hashing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from gateway.frozen import made_in_one_step

if TYPE_CHECKING:
    from gateway.audit.query import AuditQuery, QueryPage


class AuditStoreError(Exception):
    """Base of the errors stores raise; driver exceptions never escape a store."""


class AuditStoreUnavailable(AuditStoreError):
    """The store cannot be reached or refused the write; nothing of the batch was committed
    (or, for a lost COMMIT acknowledgement, the outcome is unknown: re-read the head)."""


class ChainConflict(AuditStoreError):
    """A sequence in the batch already exists: another writer appended to this chain."""


LookupRow = tuple[str, int, str, str | None, str | None, str | None, str | None, str | None,
                  str | None, str | None, str | None]  # fmt: skip
"""(chain, sequence, time, then gateway.audit.query.LOOKUP_FIELDS in order): a record's row
in the lookup table."""


@made_in_one_step
@dataclass(frozen=True)
class StoredRecord:
    chain: str
    sequence: int
    time: str
    """Copy of the record's time for range queries; the verifier trusts only ``text``."""
    text: str
    """The canonical record, exactly the bytes hashed."""
    hash: str
    lookup: LookupRow | None = field(default=None, compare=False, repr=False)
    """The lookup row, when the writer made it from the event it encoded as ``text`` (the same
    values); stores derive it from ``text`` when it is None."""
    subjects: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    """The subjects of ``extra.subjects``, when the writer took them from the event it encoded
    as ``text`` (the same keys); stores read them from ``text`` when it is None."""


RawRecord = tuple[int, bytes, str]
DerivedRow = tuple[int, str, str, tuple[str | None, ...] | None]
"""A record's sequence and text beside what the store derived from it: the stored time, and its
lookup row's time and LOOKUP_FIELDS values (None when the record has no lookup row)."""

StoredSubjectRow = tuple[int, str, str]
"""(sequence, subject, recorded_at): a subject lookup row as the store holds it, for the
verifier to compare with the record it names."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    chain: str
    sequence: int
    hash: str
    time: str
    kid: str
    jws: str
    """JWS compact (ES256) over the canonical checkpoint; the only part the verifier trusts."""


@dataclass(frozen=True, slots=True)
class ChainHead:
    chain: str
    sequence: int
    hash: str


class AuditStore(Protocol):
    """Append-only storage of chained records and checkpoints; see the module docstring."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def aclose(self) -> None: ...

    async def register_chain(self, chain: str, created: str) -> None:
        """Record that a chain exists (idempotent), so a verifier notices a chain vanishing."""

    async def append(
        self,
        records: Sequence[StoredRecord],
        checkpoint: StoredCheckpoint | None = None,
    ) -> None:
        """Insert the batch and the optional checkpoint in one transaction, durably.

        Raises ChainConflict if any (chain, sequence) exists, AuditStoreUnavailable otherwise.
        """

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None: ...

    def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        """Records of one chain with ``start <= sequence <= end``, in sequence order, in pages
        (one round trip each; no read transaction is held between pages)."""

    def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        """Like ``read_pages`` but as ``(sequence, UTF-8 record bytes, hash)`` tuples: the
        verifier's fast path (no str decoding, no objects per row)."""

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        """Checkpoints of one chain in sequence order."""

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None: ...

    async def chains(self) -> list[str]:
        """Every registered chain."""

    async def head(self, chain: str) -> ChainHead | None:
        """The last record of the chain, or None when it is empty."""

    async def heads(self) -> dict[str, ChainHead]:
        """The last record of every non-empty chain."""

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        """Lowest and highest sequence with ``since <= time < until`` (RFC 3339 text), if any."""

    async def ping(self) -> None:
        """Raise AuditStoreUnavailable unless a trivial query succeeds."""

    async def query(self, query: AuditQuery) -> QueryPage:
        """Records matching ``query`` across all chains, ordered by (time, chain, sequence),
        one page at a time (keyset: ``query.after``); see gateway/audit/query.py."""


async def iter_records(
    store: AuditStore, chain: str, start: int = 1, end: int | None = None
) -> AsyncIterator[StoredRecord]:
    """One record at a time, for callers that do not care about pages."""
    async for page in store.read_pages(chain, start, end):
        for record in page:
            yield record


MAX_SEQUENCE = 2**63 - 1
_Row = TypeVar("_Row")


async def keyset_pages(
    fetch: Callable[[int, int], Awaitable[list[_Row]]],
    sequence_of: Callable[[_Row], int],
    start: int,
    end: int | None,
    page_size: int,
) -> AsyncIterator[list[_Row]]:
    """Rows with ``start <= sequence <= end`` page by page, each page fetched as "after the last
    sequence seen" so no read transaction is held between pages. ``fetch(after, last)`` returns
    at most ``page_size`` rows with ``after < sequence <= last``, in sequence order."""
    last = end if end is not None else MAX_SEQUENCE
    after = start - 1
    while after < last:
        page = await fetch(after, last)
        if page:
            yield page
        if len(page) < page_size:
            return
        after = sequence_of(page[-1])


def record_sequence(record: StoredRecord) -> int:
    return record.sequence


def raw_sequence(record: RawRecord) -> int:
    return record[0]


def derived_sequence(row: DerivedRow) -> int:
    return row[0]
