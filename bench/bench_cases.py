"""Durable cases per second and CPU per case: `tongban serve` processes taking POST /api/v1/cases.

    .venv/bin/python bench/bench_cases.py                      # sqlite×1, postgres×1, postgres×2
    .venv/bin/python bench/bench_cases.py --cases 5000 --concurrency 64 --only postgres:2
    .venv/bin/python bench/bench_cases.py --deliver --only postgres:1 --only postgres:2

Each accepted submission is a committed audit record (fail-closed) and a committed
transaction (case, parts, timeline line, outbox entry, intake event) before the 202 is
sent. Without ``--deliver`` the delivery worker is switched off so the figure is the intake
alone; with it every instance also delivers (one worker each, sharing the PostgreSQL outbox)
to a loopback back-end process that accepts at once, and a run ends when every case is closed.
Besides the rate, each run reports the CPU seconds the gateway processes (each `tongban
serve` with its worker processes; ``--workers`` sets how many) and, on
PostgreSQL, the database server's processes spent per 1,000 cases, read from /proc over the
measured window: the contention tax of a second instance shows there even where the machine
has no spare core for it. The load generator runs in this process. PostgreSQL runs in a fresh
schema, dropped afterwards (PG_DSN, default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TONGBAN = Path(os.environ.get("TONGBAN_BENCH_EXE") or Path(sys.executable).parent / "tongban")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


AUDIT_DSN_ENV = "TONGBAN_BENCH_AUDIT_DSN"


def write_config(
    root: Path, backend: str, schema: str, instance: str, province: str | None = None
) -> Path:
    """One configuration per instance (own audit chain), sharing data dir and stores;
    ``province``: the back-end's address, and the worker on (delivering) when given."""
    config = root / f"config-{instance}"
    (config / "services").mkdir(parents=True)
    store = (
        f'{{backend: postgres, dsn: "{PG_DSN}", schema: {schema}, pool_size: 16}}'
        if backend == "postgres"
        else "{backend: sqlite}"
    )
    audit = (
        f"{{store: postgres, dsn: {{env: {AUDIT_DSN_ENV}}}, schema_name: {schema}}}"
        if backend == "postgres"
        else "{store: sqlite}"
    )
    (config / "gateway.yaml").write_text(
        f"""
instance_id: {instance}
logging: {{level: warning, format: json}}
data_dir: {root / "data"}
audit: {audit}
cases:
  store: {store}
  worker: {"true" if province else "false"}
  delivery: {{batch: 64, poll_interval: 0.05, initial_backoff: 0.2, jitter: 0.1}}
  events: {{kind: none}}
# One token files every case as fast as it can: a benchmark, not a citizen.
rate_limits: {{client: null, person: null}}
"""
    )
    (config / "systems.yaml").write_text(
        f"""
systems:
  bench-province:
    name: {{zh: 基准测试系统, en: Bench province}}
    province: "61"
    protocol: rest
    address: {province or "http://127.0.0.1:9"}
    concurrency_limit: 128
    operations:
      submit_filing: {{method: POST, path: /api/filings}}
"""
    )
    (config / "services" / "bench-filing.yaml").write_text(
        """
name: {zh: 基准测试事项, en: Bench filing}
modes: [online]
min_level: L1
subject: caller  # the filing names no one
operations:
  file:
    name: {zh: 提交, en: File}
    kind: submit
    retry: idempotent-with-key
    input_schema: {type: object}
    case: {status_field: status, status_values: {DONE: done}}
"""
    )
    (config / "routes.yaml").write_text(
        """
routes:
  - {service: bench-filing, operation: file, receiving: ["63"], handling: "61",
     system: bench-province, system_operation: submit_filing}
"""
    )
    return config


@dataclass
class Instance:
    process: asyncio.subprocess.Process
    url: str
    token: str


async def start(config: Path, workers: int | None) -> Instance:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env[AUDIT_DSN_ENV] = PG_DSN
    process = await asyncio.create_subprocess_exec(
        str(TONGBAN),
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--insecure-dev-tokens",
        *(("--workers", str(workers)) if workers else ()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    token = ""
    async with asyncio.timeout(30):
        while not token:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise RuntimeError("tongban serve exited early")
            if line.startswith("dev token L3: "):
                token = line.split(": ", 1)[1].strip()
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(30):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return Instance(process, url, token)
            await asyncio.sleep(0.1)


async def stop(instances: list[Instance]) -> None:
    for instance in instances:
        if instance.process.returncode is None:
            instance.process.send_signal(signal.SIGTERM)
    for instance in instances:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await instance.process.wait()
        if instance.process.returncode is None:
            instance.process.kill()
            await instance.process.wait()


async def load(instances: list[Instance], cases: int, concurrency: int, tag: str) -> float:
    counter = iter(range(cases))
    connector = aiohttp.TCPConnector(limit=concurrency * 2)

    async def client(session: aiohttp.ClientSession, lane: int) -> None:
        instance = instances[lane % len(instances)]
        headers = {"Authorization": f"Bearer {instance.token}"}
        for n in counter:
            body = {
                "service": "bench-filing",
                "receiving_province": "63",
                "handling_province": "61",
                "purpose": "bench",
                "data": {"n": n},
            }
            async with session.post(
                f"{instance.url}/api/v1/cases",
                json=body,
                headers={**headers, "Idempotency-Key": f"bench-{tag}-{n:08d}"},
            ) as response:
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"submission {n}: HTTP {response.status}")

    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: connections and code paths.
        warm = [f"warm-{i}" for i in range(50)]
        for key in warm:
            for instance in instances:
                async with session.post(
                    f"{instance.url}/api/v1/cases",
                    json={
                        "service": "bench-filing",
                        "receiving_province": "63",
                        "handling_province": "61",
                        "purpose": "bench",
                        "data": {},
                    },
                    headers={
                        "Authorization": f"Bearer {instance.token}",
                        "Idempotency-Key": f"{tag}-{key}-{instance.url[-5:]}",
                    },
                ) as response:
                    await response.read()
        started = time.perf_counter()
        await asyncio.gather(*(client(session, lane) for lane in range(concurrency)))
        return cases / (time.perf_counter() - started)


BACKEND = """
import sys
from aiohttp import web

async def filing(request):
    await request.read()
    return web.json_response({"ref": request.headers.get("Idempotency-Key"), "status": "DONE"})

app = web.Application()
app.router.add_post("/api/filings", filing)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them: `tongban serve` forks its worker processes
    (one per core unless --workers says otherwise), which do the work."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc). Measure living
    processes: a process that ended is no longer counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this host (its share of each case's work)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    found.append(int(entry.name))
    return found


@dataclass
class Figures:
    rate: float
    gateway_cpu: float
    """CPU seconds of the gateway processes per 1,000 cases."""
    database_cpu: float | None
    """CPU seconds of the database server per 1,000 cases (PostgreSQL on this host)."""


async def closed_count(backend: str, schema: str, data_dir: Path) -> int:
    if backend == "postgres":
        conn = await asyncpg.connect(PG_DSN)
        try:
            return int(
                await conn.fetchval(f"SELECT count(*) FROM {schema}.cases WHERE status = 'closed'")
            )
        finally:
            await conn.close()
    with contextlib.closing(sqlite3.connect(data_dir / "cases.db")) as conn:
        return int(conn.execute("SELECT count(*) FROM cases WHERE status = 'closed'").fetchone()[0])


async def run(
    backend: str, count: int, cases: int, concurrency: int, deliver: bool, workers: int | None
) -> Figures:
    schema = f"bench_cases_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        instances: list[Instance] = []
        province: asyncio.subprocess.Process | None = None
        address = None
        try:
            if deliver:
                port = free_port()
                province = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", BACKEND, str(port)
                )
                address = f"http://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as session, asyncio.timeout(30):
                    while True:
                        with contextlib.suppress(aiohttp.ClientError):
                            async with session.post(f"{address}/api/filings", data=b"{}"):
                                break
                        await asyncio.sleep(0.1)
            for number in range(count):
                config = write_config(Path(tmp), backend, schema, f"gw-{number + 1}", address)
                instances.append(await start(config, workers))
            pids = with_descendants([i.process.pid for i in instances])
            database = postgres_pids() if backend == "postgres" else []
            before = cpu_seconds(pids), cpu_seconds(database)
            started = time.perf_counter()
            tag = f"{backend}{count}{'d' if deliver else ''}"
            rate = await load(instances, cases, concurrency, tag)
            if deliver:
                warm = 50 * count  # the warm-up's cases are delivered too
                async with asyncio.timeout(300):
                    # Polling the store is the point: the workers of other processes close them.
                    while await closed_count(backend, schema, Path(tmp) / "data") < cases + warm:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                rate = cases / (time.perf_counter() - started)
            after = cpu_seconds(pids), cpu_seconds(database)
            per = 1000 / cases
            return Figures(
                rate,
                (after[0] - before[0]) * per,
                (after[1] - before[1]) * per if database else None,
            )
        finally:
            await stop(instances)
            if province is not None:
                province.terminate()
                await province.wait()
            if backend == "postgres":
                conn = await asyncpg.connect(PG_DSN)
                try:
                    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                finally:
                    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000, help="submissions per run")
    parser.add_argument("--concurrency", type=int, default=64, help="clients in flight")
    parser.add_argument(
        "--only",
        action="append",
        help="backend:instances to run (sqlite:1, postgres:1, postgres:2); repeatable",
    )
    parser.add_argument(
        "--deliver",
        action="store_true",
        help="run the delivery workers too, to a loopback back-end; a run ends when all closed",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes per instance (tongban serve --workers; default: one per core)",
    )
    args = parser.parse_args()
    plan = args.only or ["sqlite:1", "postgres:1", "postgres:2"]
    results: dict[str, Figures] = {}
    what = "delivered cases/s" if args.deliver else "durable submissions/s"
    for item in plan:
        backend, count = item.split(":")
        figures = await run(
            backend, int(count), args.cases, args.concurrency, args.deliver, args.workers
        )
        results[item] = figures
        database = (
            f"  database {figures.database_cpu:6.2f} CPU s/1000"
            if figures.database_cpu is not None
            else ""
        )
        print(
            f"{item:<12} {figures.rate:8.0f} {what}"
            f"  gateway {figures.gateway_cpu:6.2f} CPU s/1000{database}",
            flush=True,
        )
    if "postgres:1" in results and "postgres:2" in results:
        one, two = results["postgres:1"], results["postgres:2"]
        print(f"postgres two/one: throughput {two.rate / one.rate:.2f}×", end="")
        print(f", gateway CPU per case {two.gateway_cpu / one.gateway_cpu:.2f}×", end="")
        if one.database_cpu and two.database_cpu:
            print(f", database CPU per case {two.database_cpu / one.database_cpu:.2f}×", end="")
        print()
    load = os.getloadavg()[0]
    print(
        f"cpus: {os.cpu_count()}  cases per run: {args.cases}  concurrency: {args.concurrency}"
        f"  workers per instance: {args.workers or 'one per core'}"
        f"  load average at the end: {load:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
