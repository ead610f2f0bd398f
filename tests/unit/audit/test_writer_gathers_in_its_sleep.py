"""A record nobody waits for, queued while the writer sleeps idle, starts its gathering in that
sleep: the writer's task is not woken for it, and the records are written as they were when
the writer woke to gather (at the end of the gathering, or at once when somebody waits)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.writer import AuditWriter
from gateway.stores.memory_audit import MemoryAuditStore
from tests.unit.audit.test_audit_writer import FAST, event


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


async def _idle_writer(
    keys: StaticKeyStore, *, buffered_linger: float, linger: float = FAST.linger
) -> AuditWriter:
    settings = dataclasses.replace(FAST, buffered_linger=buffered_linger, linger=linger)
    w = AuditWriter(
        MemoryAuditStore(), chain="gw-s", signer=CheckpointSigner(keys), settings=settings
    )
    await w.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert w._asleep == "work"
    return w


async def test_a_buffered_record_does_not_wake_the_idle_writer(keys: StaticKeyStore) -> None:
    w = await _idle_writer(keys, buffered_linger=3600.0)
    await w.append(event(0), mode="buffered")
    assert not w._bell.is_set(), "the buffered record woke the idle writer"
    assert w._asleep == "gather"
    assert w._linger_timer is not None  # its gathering ends on the writer's timer
    for _ in range(5):
        await asyncio.sleep(0)
    assert w._asleep == "gather"
    assert w.stats.batches == 0
    await w.append(event(1), mode="buffered")  # company: still no wake-up
    assert not w._bell.is_set()
    assert await w.settle()  # somebody waits: written at once, in one batch
    assert (w.stats.batches, w.stats.records) == (1, 2)
    await w.aclose()


async def test_the_gathering_ends_on_its_timer(keys: StaticKeyStore) -> None:
    w = await _idle_writer(keys, buffered_linger=0.01)
    w.append_nowait(event(0))
    assert w._asleep == "gather"
    async with asyncio.timeout(30):
        while w.stats.batches == 0:  # noqa: ASYNC110 - the writer's timer, on this loop
            await asyncio.sleep(0.005)
    assert w.stats.records == 1
    assert w.head.sequence == 1
    await w.aclose()


async def test_a_required_record_during_that_gathering_goes_at_once(
    keys: StaticKeyStore,
) -> None:
    """The gathering has waited as one begun by the woken writer: a required record that comes
    does not linger for company (whose wait here would be an hour), as it does not after a
    gathering the writer began itself."""
    w = await _idle_writer(keys, buffered_linger=3600.0, linger=3600.0)
    await w.append(event(0), mode="buffered")
    assert w._asleep == "gather"
    async with asyncio.timeout(30):
        sequence = await w.append(event(1))
    assert sequence == 2
    assert (w.stats.batches, w.stats.records) == (1, 2)
    await w.aclose()


async def test_a_closing_writer_writes_what_gathered(keys: StaticKeyStore) -> None:
    w = await _idle_writer(keys, buffered_linger=3600.0)
    w.append_nowait(event(0))
    w.append_nowait(event(1))
    await w.aclose()
    assert w.stats.records == 2
    assert w.head.sequence == 2
