"""The WAL's fsync through the kernel's asynchronous I/O: done before an append returns, its
errors fail the commit (and a required call) closed, and a thread where the kernel says no."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.adapter import Call, Reply
from gateway.audit.calls import CallAuditor, RouteAudit
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import AuditStoreUnavailable, StoredRecord, iter_records
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.errors import AuditUnavailable
from gateway.pipeline import CallTrace, with_audit
from gateway.stores.fsync import KernelFsync
from gateway.stores.sqlite_audit import SqliteAuditStore
from tests.calls import CONTEXT

pytestmark = pytest.mark.kernel_aio


def _event(n: int) -> AuditEvent:
    return AuditEvent(type=EventType.SERVICE_CALL_REQUESTED, request_id=f"r-{n}", service="s")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def syncer(tmp_path: Path) -> AsyncIterator[KernelFsync]:
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    opened = await KernelFsync.open(str(probe))
    if opened is None:
        pytest.skip("no asynchronous fsync in this kernel")
    yield opened
    await opened.aclose()


async def test_an_fsync_is_done_only_when_the_kernel_says_so(
    syncer: KernelFsync, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"record")
    loop = asyncio.get_running_loop()
    # The completion reaches the loop through the eventfd alone: while nobody watches it,
    # the fsync has not returned, however long the kernel has been done.
    loop.remove_reader(syncer._eventfd)
    pending = asyncio.create_task(syncer.fsync(str(data)))
    await asyncio.sleep(0.2)
    assert not pending.done()
    assert syncer.submitted == 2  # the probe at open, then this one
    loop.add_reader(syncer._eventfd, syncer._reap)
    await asyncio.wait_for(pending, 10)


async def test_the_kernels_refusal_is_the_callers_error(
    syncer: KernelFsync, tmp_path: Path
) -> None:
    before = _open_fds()
    # A file without fsync (procfs): the request is refused as fsync(2) would refuse it.
    with pytest.raises(OSError, match="Invalid argument") as refused:
        await syncer.fsync("/proc/self/status")
    assert refused.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        await syncer.fsync(str(tmp_path / "missing"))
    assert _open_fds() == before  # nothing left open
    # And a context whose probe is refused is not offered at all: the store keeps its thread.
    assert await KernelFsync.open("/proc/self/status") is None


async def test_a_caller_that_stops_waiting_leaves_its_fsync_to_complete(
    syncer: KernelFsync, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"record")
    before = _open_fds()
    loop = asyncio.get_running_loop()
    loop.remove_reader(syncer._eventfd)  # hold the completion back
    pending = asyncio.create_task(syncer.fsync(str(data)))
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert _open_fds() == before + 1  # the request still holds its descriptor
    loop.add_reader(syncer._eventfd, syncer._reap)
    await syncer.fsync(str(data))  # later requests are not disturbed
    await asyncio.wait_for(syncer.aclose(), 10)  # and closing waits for every request
    assert _open_fds() == before - 1  # the eventfd too


async def test_many_fsyncs_in_flight_each_complete(syncer: KernelFsync, tmp_path: Path) -> None:
    files = []
    for n in range(40):
        path = tmp_path / f"f{n}"
        path.write_bytes(b"x" * n)
        files.append(str(path))
    await asyncio.wait_for(asyncio.gather(*(syncer.fsync(f) for f in files)), 30)
    assert syncer.submitted == 41


# --- the store ---------------------------------------------------------------------------


class _Gate:
    """Holds every WAL fsync of the store until opened; notes what was synced and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> None:
        self.open = asyncio.Event()
        self.reached = asyncio.Event()
        self.synced: list[str] = []
        self.fail = fail
        real = KernelFsync.fsync
        gate = self

        async def held(syncer: KernelFsync, path: str) -> None:
            gate.reached.set()
            await gate.open.wait()
            if gate.fail is not None:
                raise gate.fail
            await real(syncer, path)
            gate.synced.append(path)

        monkeypatch.setattr(KernelFsync, "fsync", held)


@pytest.fixture
async def kernel_store(tmp_path: Path) -> AsyncIterator[SqliteAuditStore]:
    """An audit store on ``tmp_path / "audit.db"`` syncing its WAL through the kernel."""
    store = SqliteAuditStore(tmp_path / "audit.db")
    await store.open()
    try:
        if store._fsync is None:
            pytest.skip("no asynchronous fsync in this kernel")
        yield store
    finally:
        await store.aclose()


def _writer(
    store: SqliteAuditStore,
    *,
    commit_timeout: float = 5.0,
    retry_initial: float = 60.0,
    retry_max: float = 60.0,
) -> AuditWriter:
    signer = CheckpointSigner(StaticKeyStore([new_signing_key()]))
    settings = WriterSettings(
        linger=0,
        commit_timeout=commit_timeout,
        retry_initial=retry_initial,
        retry_max=retry_max,
    )
    return AuditWriter(store, chain="gw-a", signer=signer, settings=settings)


async def _records(path: Path) -> list[StoredRecord]:
    store = SqliteAuditStore(path, kernel_fsync=False)
    await store.open()
    try:
        return [r async for r in iter_records(store, "gw-a")]
    finally:
        await store.aclose()


async def test_a_required_record_is_acknowledged_only_after_its_wal_fsync(
    kernel_store: SqliteAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = kernel_store.path
    gate = _Gate(monkeypatch)
    writer = _writer(kernel_store)
    await writer.start()
    try:
        pending = asyncio.create_task(writer.append(_event(1)))
        await asyncio.wait_for(gate.reached.wait(), 10)
        await asyncio.sleep(0.05)
        assert not pending.done()  # committed on the loop, not yet synced: not acknowledged
        assert gate.synced == []
        gate.open.set()
        assert await asyncio.wait_for(pending, 10) == 1
        assert gate.synced == [f"{path}-wal"]
    finally:
        gate.open.set()
        await writer.aclose()


async def test_a_failed_wal_fsync_fails_the_required_call_closed(
    kernel_store: SqliteAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(monkeypatch, fail=OSError(errno.EIO, "I/O error"))
    gate.open.set()
    writer = _writer(kernel_store)
    await writer.start()
    called: list[Call] = []

    async def backend(call: Call, trace: CallTrace) -> Reply:
        called.append(call)
        return Reply({"ok": True})

    route = RouteAudit("svc", "Op", "sys", "SysOp", mode="required")
    stack = with_audit(backend, CallAuditor(writer), route)
    try:
        with pytest.raises(AuditUnavailable):
            await stack(Call("Op", {}, CONTEXT), CallTrace())
        assert called == []  # no durable request record, no call
        assert writer.readiness().state == "degraded"
        with pytest.raises(AuditUnavailable):  # and the next one is refused at once
            await writer.append(_event(2))
    finally:
        await writer.aclose()


async def test_a_failed_wal_fsync_is_a_store_failure(
    kernel_store: SqliteAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(monkeypatch, fail=OSError(errno.EIO, "I/O error"))
    gate.open.set()
    record = StoredRecord("gw-a", 1, "2026-01-01T00:00:00.000000Z", "{}", "00" * 32)
    with pytest.raises(AuditStoreUnavailable):
        await kernel_store.append([record])


async def test_the_thread_syncs_where_the_kernel_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(probe: str) -> None:
        return None

    monkeypatch.setattr(KernelFsync, "open", unavailable)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "audit.db"
    store = SqliteAuditStore(path)
    await store.open()
    writer = _writer(store)
    await writer.start()
    try:
        assert store._fsync is None
        assert await writer.append(_event(1)) == 1
        assert synced == [f"{path}-wal"]
    finally:
        await writer.aclose()
        await store.aclose()
    assert [r.sequence for r in await _records(path)] == [1]


async def test_an_fsync_that_outlasts_the_commit_timeout_fails_closed_then_recovers(
    kernel_store: SqliteAuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = kernel_store.path
    gate = _Gate(monkeypatch)
    writer = _writer(kernel_store, commit_timeout=0.2, retry_initial=0.05, retry_max=0.1)
    await writer.start()
    try:
        with pytest.raises(AuditUnavailable):  # the disk hangs: no acknowledgement
            await writer.append(_event(1))
        assert writer.readiness().state == "degraded"
        gate.open.set()  # the disk comes back
        for _ in range(200):
            if writer.readiness().ready:
                break
            await asyncio.sleep(0.02)
        assert writer.readiness().ready
        # The unacknowledged record may be in the file (its COMMIT went through on the loop);
        # the chain goes on after whatever is there, without a gap or a fork.
        sequence = await writer.append(_event(2))
        assert sequence in (1, 2)
    finally:
        gate.open.set()
        await writer.aclose()
    assert [r.sequence for r in await _records(path)] == list(range(1, sequence + 1))


async def test_request_blocks_are_made_once_and_used_again_only_when_done(
    syncer: KernelFsync, tmp_path: Path
) -> None:
    """A request's block (its ``struct iocb``) is kept and used again, but never while the
    kernel has not reported it: each of forty requests in flight at once has its own, and a
    second round of forty uses the same forty blocks. Each submission carries the command
    asked for (fsync or fdatasync) and its own descriptor."""
    submitted: list[tuple[int, int, int]] = []
    real = syncer._syscall

    def syscall(number: int, *args: object) -> int:
        if number == syncer._submit_number:
            iocb = args[2][0].contents  # type: ignore[index]
            submitted.append((iocb.aio_data, iocb.aio_lio_opcode, iocb.aio_fildes))
        return int(real(number, *args))

    syncer._syscall = syscall  # type: ignore[assignment]
    files = []
    for n in range(40):
        path = tmp_path / f"f{n}"
        path.write_bytes(b"x" * n)
        files.append(str(path))
    for _ in range(2):
        waits = [syncer.fdatasync(f) if n % 2 else syncer.fsync(f) for n, f in enumerate(files)]
        await asyncio.wait_for(asyncio.gather(*waits), 30)
    assert len(submitted) == 80
    first, second = submitted[:40], submitted[40:]
    assert len({data for data, _, _ in first}) == 40  # one block each while in flight
    assert {data for data, _, _ in second} <= {data for data, _, _ in first} | {1}
    assert [op for _, op, _ in submitted] == [3 if n % 2 else 2 for n in range(40)] * 2
    assert len({fd for _, _, fd in first}) == 40
    assert not syncer._pending
    with pytest.raises(OSError, match="Invalid argument") as refused:  # as fdatasync(2)
        await syncer.fdatasync("/proc/self/status")
    assert refused.value.errno == errno.EINVAL
