"""Checkpoint keys (file store, rotation, algorithm pinning) and offline export verification."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from joserfc import jws
from joserfc.jwk import OctKey

from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.export import export_jsonl
from gateway.audit.keys import FileKeyStore, StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.verifier import ProblemKind, verify_export, verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.memory_audit import MemoryAuditStore

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def test_file_key_store_creates_private_file_and_reloads(tmp_path: Path) -> None:
    created = FileKeyStore.load_or_create(tmp_path)
    assert stat.S_IMODE(created.path.stat().st_mode) == 0o600
    loaded = FileKeyStore.load_or_create(tmp_path)
    assert loaded.signing_key().kid == created.signing_key().kid
    public = loaded.public_keys().as_dict()
    assert all("d" not in key for key in public["keys"])


async def test_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    keys = FileKeyStore.load_or_create(tmp_path)
    store = MemoryAuditStore()
    settings = WriterSettings(checkpoint_every=5, linger=0)
    for _ in range(2):
        w = AuditWriter(store, chain="gw", signer=CheckpointSigner(keys), settings=settings)
        await w.start()
        for n in range(5):
            await w.append(AuditEvent(type=EventType.LOGIN, request_id=str(n)))
        await w.aclose()
        keys.rotate()
    kids = {
        orjson.loads(base64.urlsafe_b64decode(c.jws.split(".")[0] + "==")).get("kid")
        for c in store.checkpoints_of("gw")
    }
    assert len(kids) == 2
    reloaded = FileKeyStore.load_or_create(tmp_path)
    assert (await verify_store(store, reloaded.public_keys())).ok
    # Without the old key, the old checkpoint is reported.
    report = await verify_store(store, StaticKeyStore([reloaded.signing_key()]).public_keys())
    assert report.first_problem is not None
    assert report.first_problem.kind == ProblemKind.BAD_SIGNATURE


async def test_hs256_forgery_with_public_key_bytes_is_refused() -> None:
    key = new_signing_key()
    store = MemoryAuditStore()
    w = AuditWriter(store, chain="gw", signer=CheckpointSigner(StaticKeyStore([key])))
    await w.start()
    await w.append(AuditEvent(type=EventType.LOGIN))
    await w.aclose()
    genuine = store.checkpoints_of("gw")[0]
    payload = jws.extract_compact(genuine.jws.encode()).payload
    secret = OctKey.import_key(json.dumps(key.as_dict(private=False)).encode())
    forged = jws.serialize_compact(
        {"alg": "HS256", "kid": key.kid}, payload, secret, algorithms=["HS256"]
    )
    store.checkpoints_of("gw")[0] = type(genuine)(
        genuine.chain, genuine.sequence, genuine.hash, genuine.time, genuine.kid, forged
    )
    report = await verify_store(store, StaticKeyStore([key]).public_keys())
    assert report.first_problem is not None
    assert report.first_problem.kind == ProblemKind.BAD_SIGNATURE


async def written_store(keys: StaticKeyStore, records: int = 40) -> MemoryAuditStore:
    store = MemoryAuditStore()
    minute = [0]

    def clock() -> datetime:
        return T0 + timedelta(minutes=minute[0])

    w = AuditWriter(
        store,
        chain="gw-e",
        signer=CheckpointSigner(keys),
        settings=WriterSettings(checkpoint_every=10, linger=0),
        clock=clock,
    )
    await w.start()
    for n in range(records):
        minute[0] = n
        await w.append(AuditEvent(type=EventType.CASE_TRANSITION, case_id=f"case-{n}"))
    await w.aclose()
    return store


async def test_export_window_is_widened_to_checkpoints(tmp_path: Path) -> None:
    keys = StaticKeyStore([new_signing_key()])
    store = await written_store(keys)
    out = tmp_path / "audit.jsonl"
    summary = await export_jsonl(
        store,
        out,
        since=T0 + timedelta(minutes=13),
        until=T0 + timedelta(minutes=25),
        public_keys=keys.public_keys(),
    )
    # Records 14..25 asked for; 11..30 exported: anchored on checkpoint 10, closed by 30.
    assert summary.chains == {"gw-e": (11, 30)}
    report = verify_export(out, keys.public_keys())
    assert report.ok, report.problems
    assert report.records == 20
    assert verify_export(out).ok  # embedded keys


async def test_export_without_anchor_is_reported(tmp_path: Path) -> None:
    keys = StaticKeyStore([new_signing_key()])
    store = await written_store(keys)
    out = tmp_path / "audit.jsonl"
    await export_jsonl(store, out, since=T0 + timedelta(minutes=13))
    lines = out.read_bytes().splitlines()
    kept = [ln for ln in lines if b'"sequence":10,"jws"' not in ln]
    out.write_bytes(b"\n".join(kept) + b"\n")
    report = verify_export(out, keys.public_keys())
    assert report.first_problem is not None
    assert report.first_problem.kind == ProblemKind.UNANCHORED


@pytest.mark.parametrize("tamper", ["byte", "delete", "swap", "cut", "signature", "drop_end"])
async def test_tampered_export_is_caught(tmp_path: Path, tamper: str) -> None:
    keys = StaticKeyStore([new_signing_key()])
    store = await written_store(keys)
    out = tmp_path / "audit.jsonl"
    await export_jsonl(store, out)
    lines = out.read_bytes().splitlines()
    index = {orjson.loads(ln).get("sequence"): i for i, ln in enumerate(lines) if b'"record"' in ln}
    i = index[17]
    expected: tuple[int, set[ProblemKind]]
    if tamper == "byte":
        lines[i] = lines[i].replace(b"case-16", b"case-61")
        expected = (17, {ProblemKind.CHANGED})
    elif tamper == "delete":
        del lines[i]
        expected = (17, {ProblemKind.MISSING})
    elif tamper == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        expected = (17, {ProblemKind.REORDERED})
    elif tamper == "cut":
        end = lines[-1]
        lines = [*lines[: index[36]], end.replace(b"40", b"35")]
        expected = (36, {ProblemKind.TRUNCATED})
    elif tamper == "signature":
        cps = [j for j, ln in enumerate(lines) if b'"checkpoint"' in ln]
        first, second = orjson.loads(lines[cps[0]]), orjson.loads(lines[cps[1]])
        second["jws"] = second["jws"].rsplit(".", 1)[0] + "." + first["jws"].rsplit(".", 1)[1]
        lines[cps[1]] = orjson.dumps(second)
        expected = (20, {ProblemKind.BAD_SIGNATURE})
    else:
        lines = lines[:-1]
        expected = (41, {ProblemKind.TRUNCATED})
    out.write_bytes(b"\n".join(lines) + b"\n")
    report = verify_export(out, keys.public_keys())
    assert not report.ok
    first = report.problems[0]
    assert (first.sequence, first.kind in expected[1]) == (expected[0], True), report.problems
