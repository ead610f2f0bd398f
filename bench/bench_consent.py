"""What a grant check costs: ``ConsentService.use()`` per call, CPU and wall time, on SQLite.

    .venv/bin/python bench/bench_consent.py                     # ~20 s
    .venv/bin/python bench/bench_consent.py --calls 20000 --concurrency 64 --postgres

Each variant gives a grant, then uses it ``--calls`` times, ``--concurrency`` at a time, on the
default event loop, and reports the process's CPU time per use (every thread: the store's
SQLite thread included) and the wall time per use. Variants:

- **unlimited**: a grant without a use count: one read of the grant (and of the delegation an
  agent gave it under) on the store's thread, the check in Python, the ``consent_used`` event
  made (collected in memory, as the audit writer would queue it);
- **counted**: a grant with a use count: the read, then the conditional UPDATE that spends the
  use, committed with ``synchronous=FULL`` (an fsync: wall time, little CPU);
- **refused**: another purpose: the read, the refusal and its ``consent_refused`` event.

``--postgres`` adds the same on PostgreSQL (127.0.0.1, a fresh schema, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.consent.book import ConsentService, Giver, GrantRequest, MemoryConsentAudit  # noqa: E402
from gateway.consent.contract import DataSubject, GrantAsk, GrantRefused, Requester  # noqa: E402
from gateway.consent.store import ConsentStore  # noqa: E402
from gateway.stores.postgres_consent import PostgresConsentStore  # noqa: E402
from gateway.stores.sqlite_consent import SqliteConsentStore  # noqa: E402

PG_DSN = os.environ.get("TONGBAN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SUBJECT = DataSubject("enterprise", "ek-bench")
BANK = Requester("bench-bank", province="61")


async def _variant(
    book: ConsentService, name: str, calls: int, concurrency: int
) -> tuple[str, float, float, int]:
    max_uses = calls if name == "counted" else None
    grant = await book.give(
        Giver(SUBJECT, "operator", grantor="pw-op"),
        GrantRequest(
            kind="consent",
            services=("credit",),
            purpose="贷款审批",
            requester_client=BANK.client_id,
            requester_province="61",
            expires_at=time.time() + 3600,
            max_uses=max_uses,
        ),
    )
    purpose = "营销" if name == "refused" else "贷款审批"
    ask = GrantAsk(grant.grant_id, SUBJECT, BANK, "credit", "summary", purpose)
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            await book.use(ask)
        except GrantRefused:
            refused += 1

    for _ in range(50):  # warm-up
        await one()
    refused = 0
    if max_uses is not None:  # the warm-up spent some: a fresh grant of the full count
        return await _variant_counted(book, calls, concurrency)
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, calls, concurrency):
        await asyncio.gather(*(one() for _ in range(min(concurrency, calls - start))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return name, cpu / calls * 1e6, wall / calls * 1e6, refused


async def _variant_counted(
    book: ConsentService, calls: int, concurrency: int
) -> tuple[str, float, float, int]:
    grant = await book.give(
        Giver(SUBJECT, "operator", grantor="pw-op"),
        GrantRequest(
            kind="consent",
            services=("credit",),
            purpose="贷款审批",
            requester_client=BANK.client_id,
            requester_province="61",
            expires_at=time.time() + 3600,
            max_uses=calls,
        ),
    )
    ask = GrantAsk(grant.grant_id, SUBJECT, BANK, "credit", "summary", "贷款审批")
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, calls, concurrency):
        await asyncio.gather(*(book.use(ask) for _ in range(min(concurrency, calls - start))))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return "counted", cpu / calls * 1e6, wall / calls * 1e6, 0


async def _run(store: ConsentStore, label: str, calls: int, concurrency: int) -> None:
    await store.open()
    try:
        book = ConsentService(store, MemoryConsentAudit())
        for name in ("unlimited", "counted", "refused"):
            n = calls if name != "counted" else max(calls // 10, 100)
            variant, cpu, wall, refused = await _variant(book, name, n, concurrency)
            print(
                f"{label:9} {variant:10} {n:7d} uses  CPU {cpu:7.1f} µs/use"
                f"  wall {wall:8.1f} µs/use  refused {refused}"
            )
    finally:
        await store.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await _run(
            SqliteConsentStore(Path(tmp) / "consent.db"), "sqlite", args.calls, args.concurrency
        )
    if args.postgres:
        import asyncpg  # noqa: PLC0415 - only for --postgres

        schema = f"bench_consent_{secrets.token_hex(4)}"
        try:
            await _run(
                PostgresConsentStore(PG_DSN, schema=schema),
                "postgres",
                args.calls,
                args.concurrency,
            )
        finally:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
