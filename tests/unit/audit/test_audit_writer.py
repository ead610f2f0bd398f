"""The batching writer on the in-memory store: ordering, group commit, fail-closed, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
from joserfc.jwk import KeySet

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, AuditRecord, EventType
from gateway.audit.store import AuditStoreUnavailable, StoredCheckpoint, StoredRecord
from gateway.audit.verifier import ProblemKind, verify_store
from gateway.audit.writer import AuditWriter, ChainTailMismatch, WriterSettings
from gateway.errors import AuditUnavailable
from gateway.stores.memory_audit import MemoryAuditStore
from tests.unit.audit.gated_store import GatedStore

FAST = WriterSettings(
    batch_size=50,
    linger=0.0005,
    buffered_linger=0.0,
    buffer_limit=200,
    checkpoint_every=25,
    checkpoint_interval=60.0,
    commit_timeout=0.5,
    retry_initial=0.005,
    retry_max=0.02,
)


def event(n: int) -> AuditEvent:
    return AuditEvent(
        type=EventType.SERVICE_CALL_REQUESTED,
        request_id=f"req-{n:05d}",
        principal="pw-3f2a",
        service="hukou-move",
        receiving_province="63",
        handling_province="61",
        attempts=1,
        latency_ms=12,
    )


class LostAckStore(MemoryAuditStore):
    """Commits the next batch, then reports a failure: a COMMIT whose answer was lost."""

    lose_next = False

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        await super().append(records, checkpoint)
        if self.lose_next:
            self.lose_next = False
            self.available = False
            raise AuditStoreUnavailable("connection reset after COMMIT")


class HangingStore(MemoryAuditStore):
    hang = False

    async def append(
        self, records: Sequence[StoredRecord], checkpoint: StoredCheckpoint | None = None
    ) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        await super().append(records, checkpoint)


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


@pytest.fixture
def store() -> MemoryAuditStore:
    return MemoryAuditStore()


@pytest.fixture
async def writer(store: MemoryAuditStore, keys: StaticKeyStore) -> AsyncIterator[AuditWriter]:
    w = AuditWriter(store, chain="gw-a", signer=CheckpointSigner(keys), settings=FAST)
    await w.start()
    yield w
    await w.aclose(grace=1.0)


async def verify_ok(store: MemoryAuditStore, keys: KeySet) -> int:
    report = await verify_store(store, keys)
    assert report.ok, report.problems
    return report.records


async def test_sequences_follow_append_order_and_batches_group(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    sequences = await asyncio.gather(*(writer.append(event(n)) for n in range(120)))
    assert sorted(sequences) == list(range(1, 121))
    assert sequences == list(range(1, 121))  # gather starts them in order
    assert writer.stats.batches < 120 / 2
    assert await verify_ok(store, keys.public_keys()) == 120
    texts = [r.text for r in store.records_of("gw-a")]
    assert '"request_id":"req-00000"' in texts[0]


async def test_checkpoints_every_n_records_and_on_close(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    for n in range(30):
        await writer.append(event(n))
    await writer.aclose()
    signed = [c.sequence for c in store.checkpoints_of("gw-a")]
    assert signed[0] == 25
    assert signed[-1] == 30  # the head is signed on close
    report = await verify_store(store, keys.public_keys())
    assert report.ok
    assert report.chains["gw-a"].unsigned_tail == 0


async def test_checkpoint_after_interval_when_idle(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    now = [0.0]
    settings = WriterSettings(checkpoint_every=10_000, checkpoint_interval=5.0, linger=0)
    w = AuditWriter(
        store,
        chain="gw-t",
        signer=CheckpointSigner(keys),
        settings=settings,
        monotonic=lambda: now[0],
    )
    await w.start()
    await w.append(event(1))
    assert store.checkpoints_of("gw-t") == []
    now[0] = 6.0
    await w.append(event(2))  # due at the next batch
    assert [c.sequence for c in store.checkpoints_of("gw-t")] == [2]
    now[0] = 20.0
    await w.append(event(3))
    await asyncio.sleep(0.01)
    assert [c.sequence for c in store.checkpoints_of("gw-t")] == [2, 3]
    await w.aclose()


async def test_required_fails_fast_when_store_is_down(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    await writer.append(event(0))
    store.available = False
    with pytest.raises(AuditUnavailable):
        await writer.append(event(1))  # discovers the outage
    assert writer.readiness().state == "degraded"
    started = time.perf_counter()
    with pytest.raises(AuditUnavailable):
        await writer.append(event(2))
    assert time.perf_counter() - started < 0.05
    store.available = True
    for _ in range(100):
        if writer.readiness().ready:
            break
        await asyncio.sleep(0.01)
    assert await writer.append(event(3)) == 2  # failed records left no gap and no trace
    assert await verify_ok(store, keys.public_keys()) == 2


async def test_buffered_waits_in_order_and_chain_stays_valid(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    await writer.append(event(0))
    store.available = False
    for n in range(1, 60):
        await writer.append(event(n), mode="buffered")
    await asyncio.sleep(0.05)
    readiness = writer.readiness()
    assert readiness.state == "degraded"
    assert readiness.queued == 59
    assert 0 < readiness.buffer_fill < 1
    assert readiness.last_error == "AuditStoreUnavailable"
    store.available = True
    for _ in range(200):
        if writer.readiness().ready and not writer.readiness().queued:
            break
        await asyncio.sleep(0.01)
    await writer.flush()
    records = store.records_of("gw-a")
    assert [r.sequence for r in records] == list(range(1, 61))
    assert [f'"req-{n:05d}"' in r.text for n, r in enumerate(records)] == [True] * 60
    assert await verify_ok(store, keys.public_keys()) == 60


async def test_buffer_full_raises(writer: AuditWriter, store: MemoryAuditStore) -> None:
    store.available = False
    with pytest.raises(AuditUnavailable):
        await writer.append(event(0))
    for n in range(FAST.buffer_limit):
        await writer.append(event(n), mode="buffered")
    with pytest.raises(AuditUnavailable, match="full"):
        await writer.append(event(999), mode="buffered")
    assert writer.readiness().buffer_fill == 1.0
    assert writer.stats.rejected == 1


async def test_lost_commit_acknowledgement_writes_nothing_twice(
    keys: StaticKeyStore,
) -> None:
    store = LostAckStore()
    w = AuditWriter(store, chain="gw-l", signer=CheckpointSigner(keys), settings=FAST)
    await w.start()
    await w.append(event(0))
    store.lose_next = True
    await w.append(event(1), mode="buffered")
    await asyncio.sleep(0.02)
    store.available = True
    for _ in range(100):
        if w.readiness().ready:
            break
        await asyncio.sleep(0.01)
    await w.append(event(2))
    await w.aclose()
    ids = [r.text.split('"request_id":"')[1][:9] for r in store.records_of("gw-l")]
    assert ids == ["req-00000", "req-00001", "req-00002"]
    assert await verify_ok(store, keys.public_keys()) == 3


async def test_hanging_store_times_out(keys: StaticKeyStore) -> None:
    store = HangingStore()
    w = AuditWriter(store, chain="gw-h", signer=CheckpointSigner(keys), settings=FAST)
    await w.start()
    store.hang = True
    started = time.perf_counter()
    with pytest.raises(AuditUnavailable):
        await w.append(event(0))
    assert time.perf_counter() - started < 1.0
    store.hang = False
    for _ in range(200):
        if w.readiness().ready:
            break
        await asyncio.sleep(0.01)
    assert await w.append(event(1)) == 1
    await w.aclose()
    assert await verify_ok(store, keys.public_keys()) == 1


async def test_two_writers_on_one_chain_never_fork(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    a = AuditWriter(store, chain="same", signer=CheckpointSigner(keys), settings=FAST)
    b = AuditWriter(store, chain="same", signer=CheckpointSigner(keys), settings=FAST)
    await a.start()
    await b.start()
    got = await asyncio.gather(
        *(w.append(event(n)) for n in range(40) for w in (a, b)), return_exceptions=True
    )
    await a.aclose()
    await b.aclose()
    written = [g for g in got if isinstance(g, int)]
    assert sorted(written) == list(range(1, len(written) + 1))
    assert a.stats.conflicts + b.stats.conflicts > 0
    assert await verify_ok(store, keys.public_keys()) == len(written)


async def test_restart_resumes_the_chain(store: MemoryAuditStore, keys: StaticKeyStore) -> None:
    for round_ in range(2):
        w = AuditWriter(store, chain="gw-r", signer=CheckpointSigner(keys), settings=FAST)
        await w.start()
        assert w.head.sequence == round_ * 10
        for n in range(10):
            await w.append(event(n))
        await w.aclose()
    assert await verify_ok(store, keys.public_keys()) == 20


async def test_refuses_to_build_on_a_broken_tail(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    w = AuditWriter(store, chain="gw-x", signer=CheckpointSigner(keys), settings=FAST)
    await w.start()
    for n in range(30):
        await w.append(event(n))
    await w.aclose()  # signs the head, 30
    rows = store.records_of("gw-x")
    last = rows[-1]
    text = last.text.replace("req", "REQ")
    rows[-1] = StoredRecord(last.chain, last.sequence, last.time, text, last.hash)
    again = AuditWriter(store, chain="gw-x", signer=CheckpointSigner(keys), settings=FAST)
    with pytest.raises(ChainTailMismatch):
        await again.start()
    report = await verify_store(store, keys.public_keys())
    assert report.first_problem is not None
    assert (report.first_problem.sequence, report.first_problem.kind) == (30, ProblemKind.CHANGED)


async def test_not_started_and_closed_writers_refuse(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    w = AuditWriter(store, chain="gw-n", signer=CheckpointSigner(keys), settings=FAST)
    with pytest.raises(AuditUnavailable):
        await w.append(event(0))
    await w.start()
    await w.aclose()
    assert w.readiness().state == "closed"
    with pytest.raises(AuditUnavailable):
        await w.append(event(0), mode="buffered")


async def test_cancelled_append_before_sealing_leaves_no_record(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    settings = WriterSettings(linger=0.05, batch_size=1000)
    w = AuditWriter(store, chain="gw-c", signer=CheckpointSigner(keys), settings=settings)
    await w.start()
    task = asyncio.create_task(w.append(event(1)))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await w.append(event(2)) == 1
    await w.aclose()
    assert len(store.records_of("gw-c")) == 1


def test_event_validation() -> None:
    with pytest.raises(ValueError, match="floats"):
        AuditEvent(type=EventType.LOGIN, extra={"score": 0.5})
    with pytest.raises(ValueError, match="at most"):
        AuditEvent(type=EventType.LOGIN, extra={"k": "x" * 3000})
    with pytest.raises(ValueError, match="non-negative"):
        AuditEvent(type=EventType.LOGIN, latency_ms=-1)
    assert AuditEvent(type="login").type is EventType.LOGIN  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="principal must be a string"):
        AuditEvent(type=EventType.LOGIN, principal=12345)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        AuditEvent(type=EventType.LOGIN, attempts=2**53)
    # A StrEnum member is recorded as its plain text.
    assert type(AuditEvent(type=EventType.LOGIN, outcome=EventType.LOGOUT).outcome) is str


async def test_extra_is_recorded_as_it_was_when_the_event_was_made(
    writer: AuditWriter, store: MemoryAuditStore
) -> None:
    extra: dict[str, object] = {"breaker": "closed"}
    made = AuditEvent(type=EventType.LOGIN, extra=extra)
    extra["breaker"] = "open"
    extra["score"] = 0.5  # would not even be canonical
    await writer.append(made)
    [stored] = store.records_of("gw-a")
    assert orjson.loads(stored.text)["extra"] == {"breaker": "closed"}


async def test_an_unencodable_event_is_refused_alone(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    # A lone surrogate passes the type checks but has no UTF-8 form: only its append fails.
    bad = AuditEvent(type=EventType.LOGIN, principal="pw-\ud800")
    results = await asyncio.gather(
        writer.append(event(1)), writer.append(bad), writer.append(event(3)),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == 1
    assert results[2] == 2
    assert isinstance(results[1], AuditUnavailable)
    assert writer.readiness().ready
    assert await writer.append(event(4)) == 3
    assert await verify_ok(store, keys.public_keys()) == 3


async def test_stored_records_read_back(writer: AuditWriter, store: MemoryAuditStore) -> None:
    original = event(7)
    sequence = await writer.append(original)
    [stored] = store.records_of("gw-a")
    record = AuditRecord.from_stored(stored.text, stored.hash)
    assert (record.chain, record.sequence, record.hash) == ("gw-a", sequence, stored.hash)
    assert record.event.request_id == original.request_id
    assert record.event.latency_ms == 12
    assert record.time.endswith("Z")
    assert record.as_dict() == orjson.loads(stored.text)


async def test_settle_returns_once_buffered_records_are_committed(
    writer: AuditWriter, store: MemoryAuditStore
) -> None:
    assert await writer.settle(), "nothing queued: settled at once"
    for n in range(5):
        writer.append_nowait(event(n))
    assert store.records_of("gw-a") == [], "queued, not yet written"
    assert await writer.settle()
    assert [r.sequence for r in store.records_of("gw-a")] == [1, 2, 3, 4, 5]


async def test_settle_says_false_when_the_store_fails_and_the_records_stay_buffered(
    writer: AuditWriter, store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    await writer.append(event(0))
    store.available = False
    writer.append_nowait(event(1))
    assert await writer.settle() is False, "the commit failed meanwhile"
    writer.append_nowait(event(2))
    started = time.perf_counter()
    assert await writer.settle() is False, "degraded: no waiting for a store known to be down"
    assert time.perf_counter() - started < 0.05
    store.available = True
    for _ in range(200):
        if writer.readiness().ready and not writer.readiness().queued:
            break
        await asyncio.sleep(0.01)
    assert await writer.settle()
    assert [r.sequence for r in store.records_of("gw-a")] == [1, 2, 3]
    assert await verify_ok(store, keys.public_keys()) == 3


async def test_settle_is_not_held_up_by_a_required_append_whose_caller_gave_up(
    writer: AuditWriter, store: MemoryAuditStore
) -> None:
    pending = asyncio.ensure_future(writer.append(event(0)))
    await asyncio.sleep(0)  # queued, the writer still lingering
    assert writer.readiness().queued == 1
    pending.cancel()  # before the writer took it: skipped, never written
    async with asyncio.timeout(1):
        assert await writer.settle()
    assert store.records_of("gw-a") == []


async def test_buffered_records_gather_until_somebody_waits(keys: StaticKeyStore) -> None:
    """Records nobody waits for share one commit; a required append ends the gathering."""
    store = MemoryAuditStore()
    gathering = dataclasses.replace(FAST, buffered_linger=3600.0)
    w = AuditWriter(store, chain="gw-g", signer=CheckpointSigner(keys), settings=gathering)
    await w.start()
    for n in range(5):
        await w.append(event(n), mode="buffered")
    for _ in range(20):
        await asyncio.sleep(0)
    assert w.stats.batches == 0  # still gathering: no commit for records nobody waits for
    assert await w.append(event(5)) == 6  # a required append: one commit for all six
    assert w.stats.batches == 1
    assert w.stats.records == 6
    await w.aclose()


async def test_settle_and_close_end_the_gathering(keys: StaticKeyStore) -> None:
    store = MemoryAuditStore()
    gathering = dataclasses.replace(FAST, buffered_linger=3600.0)
    w = AuditWriter(store, chain="gw-s", signer=CheckpointSigner(keys), settings=gathering)
    await w.start()
    await w.append(event(0), mode="buffered")
    assert await w.settle()
    assert w.stats.batches == 1
    await w.append(event(1), mode="buffered")
    await w.aclose()  # closing writes what was gathered
    assert len(store.records_of("gw-s")) == 2


async def test_buffered_records_queued_during_a_commit_gather_for_the_next(
    keys: StaticKeyStore,
) -> None:
    """Records nobody waits for that queued while a batch was being committed do not go in a
    commit of their own right after it: they gather like any others, until somebody waits."""
    store = GatedStore()
    gathering = dataclasses.replace(FAST, buffered_linger=3600.0)
    w = AuditWriter(store, chain="gw-d", signer=CheckpointSigner(keys), settings=gathering)
    await w.start()
    store.gate.clear()
    first = asyncio.create_task(w.append(event(0)))  # required: committed at once
    await asyncio.wait_for(store.waiting.wait(), 5)
    for n in range(1, 4):
        await w.append(event(n), mode="buffered")  # queued while the commit is held
    store.gate.set()
    assert await first == 1
    for _ in range(50):
        await asyncio.sleep(0)
    assert w.stats.batches == 1, "buffered records went in a commit of their own"
    assert w.readiness().queued == 3
    assert await w.settle()  # somebody waits: one more commit for the three
    assert w.stats.batches == 2
    assert [r.sequence for r in store.records_of("gw-d")] == [1, 2, 3, 4]
    await w.aclose()


async def test_required_records_queued_during_a_commit_go_right_after_it(
    keys: StaticKeyStore,
) -> None:
    store = GatedStore()
    lingering = dataclasses.replace(FAST, linger=3600.0, buffered_linger=7200.0)
    w = AuditWriter(store, chain="gw-e", signer=CheckpointSigner(keys), settings=lingering)
    await w.start()
    store.gate.clear()
    w.append_nowait(event(0))
    for _ in range(5):
        await asyncio.sleep(0)  # the writer gathers it
    settled = asyncio.create_task(w.settle())  # ends the gathering: a commit, held
    await asyncio.wait_for(store.waiting.wait(), 5)
    second = asyncio.create_task(w.append(event(1)))  # required, queued during the commit
    await asyncio.sleep(0)
    store.gate.set()
    assert await settled
    # It has waited for the commit before it: no linger (an hour here) on top.
    assert await asyncio.wait_for(second, 5) == 2
    await w.aclose()


async def test_an_idle_writer_signs_its_head_once_the_interval_is_over(
    store: MemoryAuditStore, keys: StaticKeyStore
) -> None:
    settings = dataclasses.replace(FAST, checkpoint_every=10_000, checkpoint_interval=0.05)
    w = AuditWriter(store, chain="gw-i", signer=CheckpointSigner(keys), settings=settings)
    await w.start()
    await w.append(event(1))
    await w.append(event(2))
    for _ in range(500):  # no further record: the writer's own timer must ring
        if 2 in [c.sequence for c in store.checkpoints_of("gw-i")]:
            break
        await asyncio.sleep(0.01)
    # The head, 2, signed; on a machine that stalls longer than the interval between the two
    # appends the timer may have signed record 1 first, never anything else.
    signed = [c.sequence for c in store.checkpoints_of("gw-i")]
    assert signed in ([2], [1, 2])
    await w.aclose()


async def test_a_gathering_writer_is_not_woken_by_each_record(keys: StaticKeyStore) -> None:
    """Buffered records queued while the writer gathers do not resume its task: it sleeps
    until somebody waits, the batch is full or its gathering time is over."""
    store = MemoryAuditStore()
    gathering = dataclasses.replace(FAST, buffered_linger=3600.0)
    w = AuditWriter(store, chain="gw-w", signer=CheckpointSigner(keys), settings=gathering)
    await w.start()
    await w.append(event(0), mode="buffered")
    for _ in range(5):
        await asyncio.sleep(0)
    assert w._asleep == "gather"
    for n in range(1, 20):
        await w.append(event(n), mode="buffered")
        assert not w._bell.is_set(), "a buffered record woke the gathering writer"
    assert w.stats.batches == 0
    assert await w.settle()
    assert w.stats.batches == 1
    await w.aclose()
