"""Benchmark of the audit trail: durable appends/s with group commit, verification records/s.

    .venv/bin/python bench/bench_audit.py --records 100000 --concurrency 1000

Prints, per store: append throughput, append latency p50/p99, verification throughput (store and
export file) and peak RSS. PostgreSQL runs in a fresh random schema that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from gateway.audit.canonical import HashAlg, content_digest
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.export import export_jsonl
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.store import AuditStore
from gateway.audit.verifier import verify_export, verify_store
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.postgres_audit import PostgresAuditStore
from gateway.stores.sqlite_audit import SqliteAuditStore


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def event(n: int) -> AuditEvent:
    return AuditEvent(
        type=EventType.SERVICE_CALL_COMPLETED,
        request_id=f"01JD{n:022d}",
        case_id=f"QH-2025-{n:08d}",
        principal="pw-5f0c2b9e41d7a3c8",
        identity_level="L3",
        client="portal-qinghai",
        service="hukou-move-in",
        receiving_province="63",
        handling_province="61",
        system="sn-hukou",
        operation="submit",
        purpose="户口迁入",
        outcome="ok",
        attempts=1,
        latency_ms=42,
        request_digest=content_digest("sha256", str(n).encode()),
        response_digest=content_digest("sha256", str(-n).encode()),
        extra={"mode": "online"},
    )


async def bench_appends(
    store: AuditStore, keys: StaticKeyStore, args: argparse.Namespace, alg: HashAlg
) -> tuple[float, list[float]]:
    settings = WriterSettings(
        batch_size=args.batch, linger=args.linger, buffer_limit=args.concurrency * 4
    )
    writer = AuditWriter(
        store, chain="bench-1", signer=CheckpointSigner(keys), alg=alg, settings=settings
    )
    await writer.start()
    events = [event(n) for n in range(args.records)]
    latencies: list[float] = []
    next_index = 0

    async def producer() -> None:
        nonlocal next_index
        while next_index < len(events):
            item = events[next_index]
            next_index += 1
            started = time.perf_counter()
            await writer.append(item)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    await writer.aclose()
    return args.records / elapsed, latencies


async def run_store(name: str, store: AuditStore, args: argparse.Namespace, workdir: Path) -> None:
    keys = StaticKeyStore([new_signing_key()])
    alg: HashAlg = args.alg
    await store.open()
    try:
        rate, latencies = await bench_appends(store, keys, args, alg)
        cuts = statistics.quantiles(latencies, n=100)
        print(
            f"{name:8} append   {rate:10,.0f} records/s durable   "
            f"p50 {cuts[49] * 1000:6.1f} ms   p99 {cuts[98] * 1000:6.1f} ms   "
            f"(batch ≤ {args.batch}, {args.concurrency} concurrent callers)"
        )
        passes = (
            (False, "first pass (default: hashes, links, signatures)"),
            (False, "again (default)"),
            (True, "again, strict: canonical form checked too"),
        )
        for strict, label in passes:
            report = await verify_store(store, keys.public_keys(), strict=strict)
            assert report.ok, report.problems
            print(
                f"{name:8} verify   {report.records / report.seconds:10,.0f} records/s from the"
                f" store: {label}"
            )
        out = workdir / f"{name}.jsonl"
        started = time.perf_counter()
        summary = await export_jsonl(store, out)
        export_rate = summary.records / (time.perf_counter() - started)
        report = await asyncio.to_thread(verify_export, out, keys.public_keys())
        assert report.ok, report.problems
        print(
            f"{name:8} export   {export_rate:10,.0f} records/s;  verify export "
            f"{report.records / report.seconds:10,.0f} records/s"
        )
        print(f"{name:8} peak RSS so far {peak_rss_mib():.0f} MiB")
    finally:
        await store.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--linger", type=float, default=0.001)
    parser.add_argument("--alg", choices=["sha256", "sm3"], default="sha256")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{args.records:,} records, {args.alg}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs, load average {load}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        workdir = Path(tmp)
        if "sqlite" in args.stores:
            await run_store("sqlite", SqliteAuditStore(workdir / "audit.db"), args, workdir)
        if "postgres" in args.stores:
            schema = f"bench_audit_{secrets.token_hex(4)}"
            try:
                await run_store(
                    "postgres", PostgresAuditStore(args.dsn, schema=schema), args, workdir
                )
            finally:
                conn = await asyncpg.connect(args.dsn)
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
