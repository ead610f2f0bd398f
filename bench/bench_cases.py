"""Durable case submissions per second: `tongban serve` processes taking POST /api/v1/cases.

    .venv/bin/python bench/bench_cases.py                      # sqlite×1, postgres×1, postgres×2
    .venv/bin/python bench/bench_cases.py --cases 5000 --concurrency 64 --only postgres:2

Each accepted submission is a committed audit record (fail-closed) and a committed
transaction (case, parts, timeline line, outbox entry, intake event) before the 202 is
sent. The delivery worker is switched off so the figure is the
intake alone; the load generator runs in this process. PostgreSQL runs in a fresh schema,
dropped afterwards (PG_DSN, default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TONGBAN = Path(sys.executable).parent / "tongban"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


AUDIT_DSN_ENV = "TONGBAN_BENCH_AUDIT_DSN"


def write_config(root: Path, backend: str, schema: str, instance: str) -> Path:
    """One configuration per instance (own audit chain), sharing data dir and stores."""
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
  worker: false
  events: {{kind: none}}
# One token files every case as fast as it can: a benchmark, not a citizen.
rate_limits: {{client: null, person: null}}
"""
    )
    (config / "systems.yaml").write_text(
        """
systems:
  bench-province:
    name: {zh: 基准测试系统, en: Bench province}
    province: "61"
    protocol: rest
    address: http://127.0.0.1:9
    operations:
      submit_filing: {method: POST, path: /api/filings}
"""
    )
    (config / "services" / "bench-filing.yaml").write_text(
        """
name: {zh: 基准测试事项, en: Bench filing}
modes: [online]
min_level: L1
operations:
  file:
    name: {zh: 提交, en: File}
    kind: submit
    retry: idempotent-with-key
    input_schema: {type: object}
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


async def start(config: Path) -> Instance:
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


async def run(backend: str, count: int, cases: int, concurrency: int) -> float:
    schema = f"bench_cases_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        instances: list[Instance] = []
        try:
            for number in range(count):
                config = write_config(Path(tmp), backend, schema, f"gw-{number + 1}")
                instances.append(await start(config))
            return await load(instances, cases, concurrency, f"{backend}{count}")
        finally:
            await stop(instances)
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
    args = parser.parse_args()
    plan = args.only or ["sqlite:1", "postgres:1", "postgres:2"]
    results: dict[str, float] = {}
    for item in plan:
        backend, count = item.split(":")
        rate = await run(backend, int(count), args.cases, args.concurrency)
        results[item] = rate
        print(f"{item:<12} {rate:8.0f} durable submissions/s", flush=True)
    if "postgres:1" in results and "postgres:2" in results:
        print(f"postgres two/one: {results['postgres:2'] / results['postgres:1']:.2f}×")
    print(f"cpus: {os.cpu_count()}  cases per run: {args.cases}  concurrency: {args.concurrency}")


if __name__ == "__main__":
    asyncio.run(main())
