"""When the writer lingers for company, and what a settle waits for after an outage."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import StoredCheckpoint, StoredRecord
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.errors import AuditUnavailable
from gateway.stores.memory_audit import MemoryAuditStore

SETTINGS = WriterSettings(
    batch_size=50,
    linger=0.05,
    buffered_linger=3600.0,
    checkpoint_every=10_000,
    checkpoint_interval=3600.0,
    commit_timeout=5.0,
    retry_initial=0.005,
    retry_max=0.02,
)


class CountingStore(MemoryAuditStore):
    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        await super().append(records, checkpoint)
        self.commits += 1


def event(n: int) -> AuditEvent:
    return AuditEvent(type=EventType.SERVICE_CALL_REQUESTED, request_id=f"req-{n:05d}")


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


async def test_a_required_record_lingers_only_when_company_is_expected(
    keys: StaticKeyStore,
) -> None:
    """The first required record lingers for company; once required records are known to
    come further apart than the linger, each is committed at once; close together again,
    they linger again."""
    store = CountingStore()
    w = AuditWriter(store, chain="gw-l", signer=CheckpointSigner(keys), settings=SETTINGS)
    await w.start()
    first = asyncio.create_task(w.append(event(0)))
    await turns()
    assert store.commits == 0, "nothing known of the rate yet: it lingers"
    assert await first == 1
    for n in range(1, 4):
        await asyncio.sleep(0.3)  # further apart than the linger
        task = asyncio.create_task(w.append(event(n)))
        await turns()
        assert store.commits == n + 1, "no company is coming: committed at once"
        await task
    # A burst: the spacing's average falls below the linger within a few records.
    for n in range(4, 12):
        await w.append(event(n))
    before = store.commits
    task = asyncio.create_task(w.append(event(12)))
    await turns()
    assert store.commits == before, "records came close together: it lingers again"
    assert await task == 13
    await w.aclose()


async def test_a_settle_after_an_outage_waits_only_for_what_is_still_queued(
    keys: StaticKeyStore,
) -> None:
    """A required record refused in an outage is never written; a settle after recovery
    returns once the buffered records queued again are, instead of waiting for it."""
    store = CountingStore()
    settings = dataclasses.replace(SETTINGS, linger=0.0)
    w = AuditWriter(store, chain="gw-o", signer=CheckpointSigner(keys), settings=settings)
    await w.start()
    store.available = False
    w.append_nowait(event(1))  # buffered: waits in the buffer through the outage
    with pytest.raises(AuditUnavailable):
        await w.append(event(2))  # required: refused, never written
    store.available = True
    for _ in range(500):
        if w.readiness().ready:
            break
        await asyncio.sleep(0.002)
    assert await asyncio.wait_for(w.settle(), 5) is True
    assert [r.sequence for r in store.records_of("gw-o")] == [1]
    await w.aclose()
