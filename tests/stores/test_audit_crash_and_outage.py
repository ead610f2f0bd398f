"""Durability on real stores: SIGKILL mid-batch loses no acknowledged record; outages fail closed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import FileKeyStore, StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery, QueryPage
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import (
    AuditStore,
    AuditStoreUnavailable,
    ChainHead,
    RawRecord,
    StoredCheckpoint,
    StoredRecord,
)
from gateway.audit.verifier import verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.errors import AuditUnavailable
from tests.stores.backends import Backend

CHILD = Path(__file__).with_name("audit_crash_child.py")


async def test_sigkill_mid_batch_loses_no_acknowledged_record(
    backend: Backend, tmp_path: Path
) -> None:
    key_dir = tmp_path / "keys"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(key_dir),
        *backend.child_args(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked: list[int] = []
    try:
        async with asyncio.timeout(60):
            while len(acked) < 3000:
                line = await proc.stdout.readline()
                if not line:
                    break
                if line.startswith(b"ACK "):
                    acked.append(int(line[4:]))
    finally:
        proc.kill()  # SIGKILL: no clean-up, no final checkpoint, a batch in flight
        rest, errors = await proc.communicate()
    acked += [int(line[4:]) for line in rest.splitlines() if line.startswith(b"ACK ")]
    assert proc.returncode == -9
    assert len(acked) >= 3000, errors.decode(errors="replace")[-2000:]

    keys = FileKeyStore.load_or_create(key_dir)
    store = backend.new_store()
    await store.open()
    try:
        report = await verify_store(store, keys.public_keys())
        assert report.ok, report.problems
        head = report.chains["crash-1"].last_sequence
        assert max(acked) <= head  # every acknowledged record is there (the chain is gapless)
        assert len(set(acked)) == len(acked)

        writer = AuditWriter(store, chain="crash-1", signer=CheckpointSigner(keys))
        await writer.start()  # re-checks the unsigned tail before building on it
        assert writer.head.sequence == head
        assert await writer.append(AuditEvent(type=EventType.CONFIG_LOADED)) == head + 1
        await writer.aclose()
        report = await verify_store(store, keys.public_keys())
        assert report.ok, report.problems
        assert report.chains["crash-1"].unsigned_tail == 0
    finally:
        await store.aclose()


class SwitchableStore:
    """A real store behind a switch: ``down`` makes it behave like an unreachable database."""

    def __init__(self, inner: AuditStore) -> None:
        self.inner = inner
        self.down = False

    def _gate(self) -> None:
        if self.down:
            raise AuditStoreUnavailable("switched off")

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def register_chain(self, chain: str, created: str) -> None:
        self._gate()
        await self.inner.register_chain(chain, created)

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        self._gate()
        await self.inner.append(records, checkpoint)

    async def append_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        self._gate()
        await self.inner.append_checkpoint(checkpoint)

    async def read_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[StoredRecord]]:
        self._gate()
        async for page in self.inner.read_pages(chain, start, end, page_size=page_size):
            yield page

    async def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[RawRecord]]:
        self._gate()
        async for page in self.inner.read_raw_pages(chain, start, end, page_size=page_size):
            yield page

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[StoredCheckpoint]:
        self._gate()
        return await self.inner.checkpoints(chain, start, end)

    async def last_checkpoint(self, chain: str) -> StoredCheckpoint | None:
        self._gate()
        return await self.inner.last_checkpoint(chain)

    async def chains(self) -> list[str]:
        self._gate()
        return await self.inner.chains()

    async def head(self, chain: str) -> ChainHead | None:
        self._gate()
        return await self.inner.head(chain)

    async def heads(self) -> dict[str, ChainHead]:
        self._gate()
        return await self.inner.heads()

    async def sequence_range(
        self, chain: str, since: str | None, until: str | None
    ) -> tuple[int, int] | None:
        self._gate()
        return await self.inner.sequence_range(chain, since, until)

    async def ping(self) -> None:
        self._gate()
        await self.inner.ping()

    async def query(self, query: AuditQuery) -> QueryPage:
        self._gate()
        return await self.inner.query(query)


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 - polling a readiness report is the point
            await asyncio.sleep(0.01)


async def test_outage_fails_closed_then_buffered_records_follow_in_order(
    store: AuditStore,
) -> None:
    keys = StaticKeyStore([new_signing_key()])
    switch = SwitchableStore(store)
    settings = WriterSettings(
        linger=0, buffer_limit=100, retry_initial=0.01, retry_max=0.05, checkpoint_every=10
    )
    writer = AuditWriter(switch, chain="gw-o", signer=CheckpointSigner(keys), settings=settings)
    await writer.start()
    acked = [
        await writer.append(AuditEvent(type=EventType.LOGIN, request_id=f"a{n}")) for n in range(5)
    ]
    switch.down = True
    with pytest.raises(AuditUnavailable):
        await writer.append(AuditEvent(type=EventType.SERVICE_CALL_REQUESTED, request_id="lost"))
    assert not writer.readiness().ready
    with pytest.raises(AuditUnavailable):  # known down: refused at once
        await writer.append(AuditEvent(type=EventType.SERVICE_CALL_REQUESTED, request_id="lost2"))
    for n in range(30):
        await writer.append(AuditEvent(type=EventType.LOGIN, request_id=f"b{n}"), mode="buffered")
    assert writer.readiness().queued == 30
    switch.down = False
    await wait_until(lambda: writer.readiness().ready and writer.readiness().queued == 0)
    await writer.flush()
    acked.append(await writer.append(AuditEvent(type=EventType.LOGOUT, request_id="c0")))
    await writer.aclose()

    assert acked == [1, 2, 3, 4, 5, 36]
    texts = [r.text async for page in store.read_pages("gw-o") for r in page]
    ids = [t.split('"request_id":"')[1].split('"')[0] for t in texts]
    assert ids == [f"a{n}" for n in range(5)] + [f"b{n}" for n in range(30)] + ["c0"]
    report = await verify_store(store, keys.public_keys())
    assert report.ok, report.problems
    assert report.chains["gw-o"].unsigned_tail == 0
