"""The audit writer asks for its event loop once, at start, not per record.

On Python 3.11 every ``asyncio.get_running_loop()`` is a ``getpid`` system call (CPython checks
the running loop's process id), and the writer's path runs once or twice per routed call: it
keeps the loop ``start`` found. What must hold: after the start, appends of both modes, the
writer's lingering and gathering, settles and commits go without a single lookup, and the
records are committed as before.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.audit import writer as writer_module
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.memory_audit import MemoryAuditStore
from tests.loop_lookups import CountingAsyncio, count_loop_lookups
from tests.unit.audit.test_audit_writer import event

SETTINGS = WriterSettings(linger=0.002, buffered_linger=0.005, commit_timeout=1.0)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingAsyncio:
    return count_loop_lookups(monkeypatch, writer_module)


async def test_appends_settles_and_commits_ask_for_no_loop(counting: CountingAsyncio) -> None:
    store = MemoryAuditStore()
    writer = AuditWriter(
        store,
        chain="gw-a",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=SETTINGS,
    )
    await writer.start()
    try:
        started_with = counting.lookups  # what start asked for, kept from then on
        sequences = await asyncio.gather(*(writer.append(event(n)) for n in range(20)))
        await writer.append(event(20), mode="buffered")
        writer.append_nowait(event(21))
        assert await writer.settle()
        await asyncio.sleep(SETTINGS.buffered_linger * 2)  # a gathering that ends on its own
        await writer.append(event(22), mode="buffered")
        assert await writer.settle()
        assert counting.lookups == started_with
    finally:
        await writer.aclose(grace=1.0)
    assert sequences == list(range(1, 21))
    assert len(store.records_of("gw-a")) == 23
