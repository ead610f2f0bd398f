"""Tamper tests on both stores: every change made behind the triggers is found and located."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from joserfc.jwk import KeySet

from gateway.audit.canonical import chain_hash
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.export import export_jsonl
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.query import AuditQuery
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import AuditStore, iter_records
from gateway.audit.verifier import Problem, ProblemKind, VerificationReport, verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from tests.stores.backends import Backend, SqliteBackend

CHAIN = "gw-1"
SETTINGS = WriterSettings(checkpoint_every=20, linger=0, witness=True)


def full_event(n: int) -> AuditEvent:
    return AuditEvent(
        type=EventType.SERVICE_CALL_COMPLETED,
        request_id=f"req-{n:04d}",
        case_id=f"case-{n:04d}",
        actor="clerk-17",
        principal="pw-9c1e77",
        identity_level="L3",
        client="portal-qh",
        service="hukou-move",
        receiving_province="63",
        handling_province="61",
        system="sn-hukou",
        operation="submit",
        purpose="apply",
        outcome="ok",
        error_code="none",
        attempts=2,
        latency_ms=137,
        request_digest="sha256:" + "ab" * 32,
        response_digest="sha256:" + "cd" * 32,
        extra={"mode": "online"},
    )


@pytest.fixture
def keys() -> StaticKeyStore:
    return StaticKeyStore([new_signing_key()])


async def write_chain(
    store: AuditStore, keys: StaticKeyStore, chain: str = CHAIN, count: int = 60
) -> None:
    writer = AuditWriter(store, chain=chain, signer=CheckpointSigner(keys), settings=SETTINGS)
    await writer.start()
    for n in range(1, count + 1):
        await writer.append(full_event(n))
    await writer.aclose()  # checkpoints at 20, 40, 60


async def row(store: AuditStore, sequence: int, chain: str = CHAIN) -> tuple[str, str]:
    [found] = [r async for r in iter_records(store, chain, sequence, sequence)]
    return found.text, found.hash


async def first_problem(store: AuditStore, keys: KeySet) -> Problem:
    report: VerificationReport = await verify_store(store, keys)
    assert not report.ok, "tampering went unnoticed"
    assert report.first_problem is not None
    return report.first_problem


def flip(text: str, key: str) -> str:
    """Change one byte of the value of top-level ``key``."""
    start = text.index(f'"{key}":') + len(key) + 3
    target = start + (1 if text[start] == '"' else 2 if text[start] == "{" else 0)
    old = text[target]
    new = str((int(old) + 1) % 10) if old.isdigit() else old.swapcase() if old.isalpha() else "X"
    assert new != old
    return text[:target] + new + text[target + 1 :]


UPDATE_TEXT = "UPDATE audit_records SET record = ? WHERE chain_id = ? AND sequence = ?"
UPDATE_HASH = "UPDATE audit_records SET hash = ? WHERE chain_id = ? AND sequence = ?"


async def test_untouched_chain_verifies(store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    report = await verify_store(store, keys.public_keys())
    assert report.ok, report.problems
    summary = report.chains[CHAIN]
    assert (summary.records, summary.checkpoints, summary.unsigned_tail) == (60, 3, 0)


async def test_one_byte_of_any_field_or_the_hash(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_chain(store, keys)
    text, hash_ = await row(store, 30)
    fields = list(orjson.loads(text))
    assert len(fields) >= 26
    for field in fields:
        await backend.tamper([(UPDATE_TEXT, (flip(text, field), CHAIN, 30))])
        problem = await first_problem(store, keys.public_keys())
        assert problem.sequence == 30, (field, problem)
        assert problem.kind in {ProblemKind.CHANGED, ProblemKind.REORDERED}, (field, problem)
        await backend.tamper([(UPDATE_TEXT, (text, CHAIN, 30))])
    await backend.tamper(
        [(UPDATE_HASH, (hash_[:-1] + ("0" if hash_[-1] != "0" else "1"), CHAIN, 30))]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (30, ProblemKind.CHANGED)


async def test_deleted_record(backend: Backend, store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    await backend.tamper(
        [("DELETE FROM audit_records WHERE chain_id = ? AND sequence = ?", (CHAIN, 33))]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (33, ProblemKind.MISSING)


async def test_swapped_records(backend: Backend, store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    text_a, hash_a = await row(store, 30)
    text_b, hash_b = await row(store, 31)
    await backend.tamper(
        [
            (
                "UPDATE audit_records SET record = ?, hash = ? WHERE chain_id = ? AND sequence = ?",
                (text_b, hash_b, CHAIN, 30),
            ),
            (
                "UPDATE audit_records SET record = ?, hash = ? WHERE chain_id = ? AND sequence = ?",
                (text_a, hash_a, CHAIN, 31),
            ),
        ]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (30, ProblemKind.REORDERED)


async def test_truncated_tail(backend: Backend, store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    await backend.tamper(
        [("DELETE FROM audit_records WHERE chain_id = ? AND sequence > ?", (CHAIN, 45))]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (46, ProblemKind.TRUNCATED)
    assert "60" in problem.detail


async def test_replaced_checkpoint_signature(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_chain(store, keys)
    cps = await store.checkpoints(CHAIN)
    forged = cps[1].jws.rsplit(".", 1)[0] + "." + cps[0].jws.rsplit(".", 1)[1]
    await backend.tamper(
        [
            (
                "UPDATE audit_checkpoints SET jws = ? WHERE chain_id = ? AND sequence = ?",
                (forged, CHAIN, 40),
            )
        ]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (40, ProblemKind.BAD_SIGNATURE)


async def test_signed_by_an_unknown_key(store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    problem = await first_problem(store, StaticKeyStore([new_signing_key()]).public_keys())
    assert (problem.sequence, problem.kind) == (20, ProblemKind.BAD_SIGNATURE)
    assert "unknown key" in problem.detail


async def test_rewritten_record_with_recomputed_hash(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    # An intruder who knows the algorithm rewrites record 30 and its hash consistently.
    await write_chain(store, keys)
    text, _ = await row(store, 30)
    forged = text.replace('"outcome":"ok"', '"outcome":"no"')
    prev = orjson.loads(text)["prev_hash"]
    await backend.tamper(
        [
            (
                "UPDATE audit_records SET record = ?, hash = ? WHERE chain_id = ? AND sequence = ?",
                (forged, chain_hash("sha256", prev, forged.encode()), CHAIN, 30),
            ),
        ]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.sequence, problem.kind) == (31, ProblemKind.LINK_BROKEN)
    assert "30" in problem.detail


async def test_rewritten_signed_record(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    # The same at a checkpointed position: the signature disagrees.
    await write_chain(store, keys)
    text, _ = await row(store, 60)
    forged = text.replace('"outcome":"ok"', '"outcome":"no"')
    prev = orjson.loads(text)["prev_hash"]
    new_hash = chain_hash("sha256", prev, forged.encode())
    await backend.tamper(
        [
            (
                "UPDATE audit_records SET record = ?, hash = ? WHERE chain_id = ? AND sequence = ?",
                (forged, new_hash, CHAIN, 60),
            ),
            (
                "UPDATE audit_checkpoints SET hash = ? WHERE chain_id = ? AND sequence = ?",
                (new_hash, CHAIN, 60),
            ),
        ]
    )
    report = await verify_store(store, keys.public_keys())
    assert not report.ok
    assert [(p.sequence, p.kind) for p in report.problems] == [
        (60, ProblemKind.CHECKPOINT_MISMATCH)
    ]


async def test_vanished_chain_is_caught_by_another_chains_witness(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_chain(store, keys, chain="gw-a", count=40)
    await write_chain(store, keys, chain="gw-b", count=20)  # its checkpoints witness gw-a at 40
    await backend.tamper(
        [
            ("DELETE FROM audit_records WHERE chain_id = ? AND sequence > ?", ("gw-a", 25)),
            ("DELETE FROM audit_checkpoints WHERE chain_id = ? AND sequence > ?", ("gw-a", 25)),
        ]
    )
    problem = await first_problem(store, keys.public_keys())
    assert (problem.chain, problem.sequence, problem.kind) == ("gw-a", 26, ProblemKind.TRUNCATED)
    assert "another chain" in problem.detail


async def test_sqlite_file_edited_with_a_hex_editor(tmp_path: Path, keys: StaticKeyStore) -> None:
    backend = SqliteBackend(tmp_path / "audit.db")
    store = backend.new_store()
    await store.open()
    await write_chain(store, keys)
    await store.aclose()
    conn = sqlite3.connect(backend.path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    path = Path(backend.path)
    data = bytearray(await asyncio.to_thread(path.read_bytes))
    # The record's own text (the lookup table of migration 2 holds the bare case id too).
    needle = b'"case_id":"case-0042"'
    where = data.find(needle)
    assert where > 0
    assert data.find(needle, where + 1) == -1
    data[where + len(b'"case_id":"') + 5] = ord("9")
    await asyncio.to_thread(path.write_bytes, bytes(data))
    await store.open()
    try:
        problem = await first_problem(store, keys.public_keys())
    finally:
        await store.aclose()
    assert (problem.sequence, problem.kind) == (42, ProblemKind.CHANGED)


@pytest.mark.parametrize("where", [3, 28, 29, 59])
async def test_page_boundaries_do_not_matter(
    backend: Backend, store: AuditStore, keys: StaticKeyStore, where: int
) -> None:
    await write_chain(store, keys)
    clean = await verify_store(store, keys.public_keys(), page_size=7)
    assert clean.ok, clean.problems
    assert clean.records == 60
    text, _ = await row(store, where)
    await backend.tamper([(UPDATE_TEXT, (flip(text, "request_id"), CHAIN, where))])
    one_page = await verify_store(store, keys.public_keys())
    small_pages = await verify_store(store, keys.public_keys(), page_size=7)
    assert small_pages.problems == one_page.problems
    assert small_pages.first_problem is not None
    assert (small_pages.first_problem.sequence, small_pages.first_problem.kind) == (
        where,
        ProblemKind.CHANGED,
    )


async def test_small_pages_see_gaps_and_truncation(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_chain(store, keys)
    await backend.tamper(
        [
            ("DELETE FROM audit_records WHERE chain_id = ? AND sequence = ?", (CHAIN, 14)),
            ("DELETE FROM audit_records WHERE chain_id = ? AND sequence > ?", (CHAIN, 50)),
        ]
    )
    report = await verify_store(store, keys.public_keys(), page_size=7)
    assert report.first_problem is not None
    assert (report.first_problem.sequence, report.first_problem.kind) == (14, ProblemKind.MISSING)
    await backend.tamper(
        [("DELETE FROM audit_records WHERE chain_id = ? AND sequence > ?", (CHAIN, 13))]
    )
    report = await verify_store(store, keys.public_keys(), page_size=4)
    assert report.first_problem is not None
    assert (report.first_problem.sequence, report.first_problem.kind) == (
        14,
        ProblemKind.TRUNCATED,
    )


# --- derived data: what queries, exports and the access log find records by -----------------


async def write_indexed_chain(store: AuditStore, keys: StaticKeyStore) -> None:
    """A chain whose lookup rows are all written (on SQLite they trail by a second; a query
    writes the pending ones first)."""
    await write_chain(store, keys)
    await store.query(AuditQuery(limit=1))


async def derived_problems(store: AuditStore, keys: KeySet) -> list[tuple[int, ProblemKind]]:
    report = await verify_store(store, keys)
    assert report.derived_checked
    assert not report.ok, "tampering with the derived data went unnoticed"
    return [(p.sequence, p.kind) for p in report.problems]


async def test_untouched_derived_data_verifies(store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain(store, keys)
    report = await verify_store(store, keys.public_keys())
    assert report.ok, report.problems
    assert report.derived_checked


async def test_a_moved_stored_time(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_indexed_chain(store, keys)
    moved = "2001-01-01T00:00:00.000000Z"
    await backend.tamper(
        [
            (
                "UPDATE audit_records SET recorded_at = ? WHERE chain_id = ? AND sequence = ?",
                (moved, CHAIN, 30),
            ),
            (
                "UPDATE audit_index SET recorded_at = ? WHERE chain_id = ? AND sequence = ?",
                (moved, CHAIN, 31),
            ),
        ]
    )
    assert await derived_problems(store, keys.public_keys()) == [
        (30, ProblemKind.TIME_MOVED),
        (31, ProblemKind.LOOKUP_MISMATCH),
    ]


async def test_a_deleted_or_changed_lookup_row(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_indexed_chain(store, keys)
    await backend.tamper(
        [
            ("DELETE FROM audit_index WHERE chain_id = ? AND sequence = ?", (CHAIN, 33)),
            (
                "UPDATE audit_index SET principal = ? WHERE chain_id = ? AND sequence = ?",
                ("pw-someone-else", CHAIN, 35),
            ),
            (
                "INSERT INTO audit_index (chain_id, sequence, recorded_at, type)"
                " VALUES (?, ?, ?, ?)",
                (CHAIN, 999, "2026-01-01T00:00:00.000000Z", "login"),
            ),
        ]
    )
    problems = await derived_problems(store, keys.public_keys())
    assert problems == [
        (33, ProblemKind.LOOKUP_MISSING),
        (35, ProblemKind.LOOKUP_MISMATCH),
        (999, ProblemKind.LOOKUP_ORPHAN),
    ]


async def write_chain_with_subjects(store: AuditStore, keys: StaticKeyStore) -> None:
    """Records 1-20 each name the data subjects they touched (two for even numbers)."""
    writer = AuditWriter(store, chain=CHAIN, signer=CheckpointSigner(keys), settings=SETTINGS)
    await writer.start()
    for n in range(1, 21):
        subjects = [f"subj-{n:02d}", "subj-shared"] if n % 2 == 0 else [f"subj-{n:02d}"]
        await writer.append(replace(full_event(n), extra={"subjects": subjects}))
    await writer.aclose()
    await store.query(AuditQuery(limit=1))


async def test_untouched_subject_rows_verify(store: AuditStore, keys: StaticKeyStore) -> None:
    await write_chain_with_subjects(store, keys)
    report = await verify_store(store, keys.public_keys())
    assert report.ok, report.problems


async def test_tampered_subject_rows_are_found(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    """The citizen's access log reads the subject rows alone: a row removed hides a record
    from its subject, a row added shows it to someone it did not touch, a moved time files it
    elsewhere in the log."""
    await write_chain_with_subjects(store, keys)
    await backend.tamper(
        [
            (
                "DELETE FROM audit_subjects WHERE chain_id = ? AND sequence = ? AND subject = ?",
                (CHAIN, 4, "subj-shared"),
            ),
            (
                "INSERT INTO audit_subjects VALUES (?, ?, ?, ?)",
                ("subj-victim", "2026-01-01T00:00:00.000000Z", CHAIN, 7),
            ),
            (
                "UPDATE audit_subjects SET recorded_at = ?"
                " WHERE chain_id = ? AND sequence = ? AND subject = ?",
                ("2001-01-01T00:00:00.000000Z", CHAIN, 9, "subj-09"),
            ),
            (
                "INSERT INTO audit_subjects VALUES (?, ?, ?, ?)",
                ("subj-ghost", "2026-01-01T00:00:00.000000Z", CHAIN, 999),
            ),
        ]
    )
    problems = await derived_problems(store, keys.public_keys())
    assert problems == [
        (4, ProblemKind.SUBJECTS_MISMATCH),
        (7, ProblemKind.SUBJECTS_MISMATCH),
        (9, ProblemKind.SUBJECTS_MISMATCH),
        (999, ProblemKind.SUBJECTS_ORPHAN),
    ]


async def test_an_export_over_a_moved_stored_time_says_so(
    backend: Backend, store: AuditStore, keys: StaticKeyStore
) -> None:
    await write_indexed_chain(store, keys)
    assert (await export_jsonl(store, io.BytesIO())).moved_times == []
    await backend.tamper(
        [
            (
                "UPDATE audit_records SET recorded_at = ? WHERE chain_id = ? AND sequence = ?",
                ("2001-01-01T00:00:00.000000Z", CHAIN, 30),
            )
        ]
    )
    assert (await export_jsonl(store, io.BytesIO())).moved_times == [(CHAIN, 30)]
