"""The audit files of a data directory read as one store (gateway/stores/sqlite_audit_files.py).

Workers' chains written into files of their own answer queries, verification and exports as the
same records in one file do; tampering in any file is found; a chain that moved from
``audit.sqlite`` into its worker's file reads as one chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.export import export_jsonl
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery, QueryPage
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import AuditStore, StoredRecord
from gateway.audit.verifier import ProblemKind, verify_export, verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.sqlite_audit import SqliteAuditStore
from gateway.stores.sqlite_audit_files import (
    SqliteAuditFiles,
    audit_file_for,
    audit_files,
    backup_audit_files,
    merged_pages,
)
from tests.stores.backends import SqliteBackend

SETTINGS = WriterSettings(checkpoint_every=7, linger=0, witness=True)
CHAINS = ("gw-1.w1", "gw-1.w2", "gw-1.w3")


def event(n: int) -> AuditEvent:
    return AuditEvent(
        type=EventType.SERVICE_CALL_COMPLETED if n % 3 else EventType.SERVICE_CALL_REQUESTED,
        request_id=f"req-{n:04d}",
        principal=f"pw-{n % 4}",
        service="hukou-move" if n % 2 else "marriage",
        receiving_province="63",
        handling_province="61" if n % 5 else "62",
        outcome="ok",
        extra={"subjects": [f"subject-{n % 3}"]},
    )


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


async def _write(store: AuditStore, keys: StaticKeyStore, chain: str, numbers: range) -> None:
    writer = AuditWriter(store, chain=chain, signer=CheckpointSigner(keys), settings=SETTINGS)
    await writer.start()
    for n in numbers:
        await writer.append(event(n))
    await writer.aclose()


async def _started(
    data_dir: Path, keys: StaticKeyStore
) -> tuple[list[SqliteAuditFiles], list[AuditWriter]]:
    """Three workers' stores, each a SqliteAuditFiles of its own chain, opened, and their
    writers started."""
    stores = [SqliteAuditFiles(data_dir, chain) for chain in CHAINS]
    writers = [
        AuditWriter(store, chain=chain, signer=CheckpointSigner(keys), settings=SETTINGS)
        for store, chain in zip(stores, CHAINS, strict=True)
    ]
    for store, writer in zip(stores, writers, strict=True):
        await store.open()
        await writer.start()
    return stores, writers


async def _interleaved(data_dir: Path, keys: StaticKeyStore) -> None:
    """Three workers' writers, each on its own SqliteAuditFiles, appending in turns (the
    checkpoints of each witness the others' heads in their files)."""
    stores, writers = await _started(data_dir, keys)
    for n in range(60):
        await writers[n % 3 if n % 7 else 0].append(event(n))
    for store, writer in zip(stores, writers, strict=True):
        await writer.aclose()
        await store.aclose()


async def _all_records(store: AuditStore) -> list[StoredRecord]:
    return [r for chain in await store.chains() async for p in store.read_pages(chain) for r in p]


async def _one_file_copy(files: SqliteAuditFiles, path: Path) -> SqliteAuditStore:
    """The same records and checkpoints in one file."""
    single = SqliteAuditStore(path)
    await single.open()
    for chain in await files.chains():
        await single.register_chain(chain, "2026-12-07T00:00:00Z")
        async for page in files.read_pages(chain):
            await single.append(page)
        for checkpoint in await files.checkpoints(chain):
            await single.append_checkpoint(checkpoint)
    return single


async def _pages(store: AuditStore, query: AuditQuery) -> list[QueryPage]:
    pages = [await store.query(query)]
    while pages[-1].next is not None:
        pages.append(await store.query(dataclasses.replace(query, after=pages[-1].next)))
    return pages


def test_workers_files_answer_as_one_file(tmp_path: Path, keys: StaticKeyStore) -> None:
    async def run() -> None:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        await _interleaved(data_dir, keys)
        assert [p.name for p in audit_files(data_dir)] == [
            f"audit.{chain}.sqlite" for chain in CHAINS
        ]
        files = SqliteAuditFiles(data_dir)
        await files.open()
        single = await _one_file_copy(files, tmp_path / "one.sqlite")
        try:
            assert await files.chains() == await single.chains() == list(CHAINS)
            assert await files.heads() == await single.heads()
            assert await _all_records(files) == await _all_records(single)
            rng = random.Random(7)
            queries = [AuditQuery(limit=limit, oldest_first=oldest) for limit in (1, 4, 500)
                       for oldest in (False, True)]  # fmt: skip
            queries += [
                AuditQuery(principal="pw-1", limit=3),
                AuditQuery(service="marriage", oldest_first=True, limit=5),
                AuditQuery(province="62", limit=2),
                AuditQuery(subject="subject-2", limit=4, oldest_first=True),
                AuditQuery(types=("service_call_requested",), limit=rng.randint(1, 6)),
            ]
            for query in queries:
                got, want = await _pages(files, query), await _pages(single, query)
                assert got == want, query
                assert sum(len(p.records) for p in got) > 0
            for chain in CHAINS:
                assert await files.checkpoints(chain) == await single.checkpoints(chain)
                assert await files.last_checkpoint(chain) == await single.last_checkpoint(chain)
                assert await files.sequence_range(chain, None, None) == (
                    await single.sequence_range(chain, None, None)
                )
            assert await files.lookup_gaps() == {}
            report = await verify_store(files, keys.public_keys())
            assert report.ok, report.problems
            assert report.derived_checked
            assert set(report.chains) == set(CHAINS)
            assert report.records == 60
        finally:
            await files.aclose()
            await single.aclose()

    asyncio.run(run())


def test_export_of_several_files_verifies(tmp_path: Path, keys: StaticKeyStore) -> None:
    async def run() -> None:
        await _interleaved(tmp_path, keys)
        files = SqliteAuditFiles(tmp_path)
        await files.open()
        out = tmp_path / "export.jsonl"
        try:
            summary = await export_jsonl(files, out, public_keys=keys.public_keys())
        finally:
            await files.aclose()
        assert set(summary.chains) == set(CHAINS)
        assert summary.records == 60
        report = verify_export(out)
        assert report.ok, report.problems
        assert report.records == 60

    asyncio.run(run())


@pytest.mark.parametrize("victim", CHAINS)
def test_tampering_in_any_file_is_found(tmp_path: Path, keys: StaticKeyStore, victim: str) -> None:
    async def run() -> None:
        await _interleaved(tmp_path, keys)
        await SqliteBackend(audit_file_for(tmp_path, victim)).tamper(
            [
                (
                    "UPDATE audit_records SET record = replace(record, 'req-', 'REQ-')"
                    " WHERE chain_id = ? AND sequence = 5",
                    (victim,),
                )
            ]
        )
        files = SqliteAuditFiles(tmp_path)
        await files.open()
        try:
            report = await verify_store(files, keys.public_keys())
        finally:
            await files.aclose()
        assert not report.ok
        assert report.first_problem is not None
        assert (report.first_problem.chain, report.first_problem.sequence) == (victim, 5)

    asyncio.run(run())


def test_a_deleted_worker_file_is_found_by_the_others_witnesses(
    tmp_path: Path, keys: StaticKeyStore
) -> None:
    async def run() -> None:
        await _interleaved(tmp_path, keys)
        audit_file_for(tmp_path, "gw-1.w2").unlink()
        files = SqliteAuditFiles(tmp_path)
        await files.open()
        try:
            report = await verify_store(files, keys.public_keys())
        finally:
            await files.aclose()
        assert not report.ok
        assert [(p.chain, p.kind) for p in report.problems] == [("gw-1.w2", ProblemKind.TRUNCATED)]

    asyncio.run(run())


def test_a_chain_moves_from_the_shared_file_into_its_workers_file(
    tmp_path: Path, keys: StaticKeyStore
) -> None:
    """A data directory whose workers wrote ``audit.sqlite``: the worker goes on in its own
    file, the chain reads as one and verifies, and no lookup row counts as missing."""

    async def run() -> None:
        shared = SqliteAuditStore(tmp_path / "audit.sqlite")
        await shared.open()
        await _write(shared, keys, "gw-1.w1", range(1, 11))
        await _write(shared, keys, "gw-1", range(1, 4))
        await shared.aclose()

        worker = SqliteAuditFiles(tmp_path, "gw-1.w1")
        await worker.open()
        await _write(worker, keys, "gw-1.w1", range(11, 21))
        await worker.aclose()
        assert [p.name for p in audit_files(tmp_path)] == ["audit.sqlite", "audit.gw-1.w1.sqlite"]

        files = SqliteAuditFiles(tmp_path)
        await files.open()
        try:
            sequences = [r.sequence async for p in files.read_pages("gw-1.w1", page_size=3)
                         for r in p]  # fmt: skip
            assert sequences == list(range(1, 21))
            head = await files.head("gw-1.w1")
            assert head is not None
            assert head.sequence == 20
            assert await files.lookup_gaps() == {}
            report = await verify_store(files, keys.public_keys())
            assert report.ok, report.problems
            assert report.chains["gw-1.w1"].records == 20
            page = await files.query(AuditQuery(limit=500, oldest_first=True))
            assert len(page.records) == 23
        finally:
            await files.aclose()

    asyncio.run(run())


def test_a_record_in_two_files_is_read_twice_and_named(
    tmp_path: Path, keys: StaticKeyStore
) -> None:
    async def run() -> None:
        await _interleaved(tmp_path, keys)
        copy = SqliteAuditStore(tmp_path / "audit.sqlite")
        await copy.open()
        files = SqliteAuditFiles(tmp_path)
        await files.open()
        try:
            [first] = [p async for p in files.read_pages("gw-1.w3", 4, 4)]
            await copy.append(first)
            report = await verify_store(files, keys.public_keys())
        finally:
            await files.aclose()
            await copy.aclose()
        assert not report.ok
        assert report.first_problem is not None
        assert report.first_problem.chain == "gw-1.w3"

    asyncio.run(run())


def test_merged_pages_keep_sequence_order_and_page_size() -> None:
    async def source(rows: list[int], size: int) -> AsyncIterator[list[int]]:
        for start in range(0, len(rows), size):
            yield rows[start : start + size]

    async def run() -> None:
        rng = random.Random(3)
        for _ in range(200):
            rows = sorted(rng.sample(range(100), rng.randint(0, 40)))
            parts: list[list[int]] = [[] for _ in range(rng.randint(1, 4))]
            for row in rows:
                parts[rng.randrange(len(parts))].append(row)
            size = rng.randint(1, 7)
            pages = [
                page
                async for page in merged_pages(
                    [source(part, rng.randint(1, 5)) for part in parts], lambda r: r, size
                )
            ]
            assert [r for page in pages for r in page] == rows
            if len(parts) > 1:
                assert all(len(page) == size for page in pages[:-1])
                assert all(page for page in pages)

    asyncio.run(run())


def test_a_backup_taken_while_workers_write_verifies(tmp_path: Path, keys: StaticKeyStore) -> None:
    """`tongban audit backup`: the files copied as of one moment, while three writers append and
    sign checkpoints that witness each other's files; every copy verifies."""

    async def run() -> None:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        await _interleaved(data_dir, keys)  # every file exists
        stores, writers = await _started(data_dir, keys)
        stop = asyncio.Event()

        async def write(writer: AuditWriter) -> int:
            n = 0
            while not stop.is_set():
                n += 1
                await writer.append(event(n))
            return n

        tasks = [asyncio.create_task(write(writer)) for writer in writers]
        backups = []
        for number in range(4):
            target = tmp_path / f"backup-{number}"
            copies = await asyncio.to_thread(backup_audit_files, data_dir, target)
            assert [copy.name for copy in copies] == [p.name for p in audit_files(data_dir)]
            backups.append(target)
            await asyncio.sleep(0.05)
        stop.set()
        written = await asyncio.gather(*tasks)
        assert all(n > 1 for n in written)
        for store, writer in zip(stores, writers, strict=True):
            await writer.aclose()
            await store.aclose()
        for target in backups:
            copy = SqliteAuditFiles(target)
            await copy.open()
            try:
                report = await verify_store(copy, keys.public_keys())
            finally:
                await copy.aclose()
            assert report.ok, (target.name, report.problems)
            assert report.records >= 60

    asyncio.run(run())


def test_only_the_shared_file_and_workers_files_are_the_trail(tmp_path: Path) -> None:
    names = [
        "audit.sqlite",
        "audit.gw-1.w1.sqlite",
        "audit.gw-1.w12.sqlite",
        "audit.old.sqlite",
        "audit.gw-1.w0.sqlite",
        "audit.gw-1.w1.sqlite-wal",
        "audit..sqlite",
        "identity.sqlite",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in audit_files(tmp_path)] == [
        "audit.sqlite",
        "audit.gw-1.w1.sqlite",
        "audit.gw-1.w12.sqlite",
    ]
