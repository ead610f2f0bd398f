"""Chaos: two gateway processes share one PostgreSQL outbox; clients retry with the same keys;
the back-end goes down for a few seconds; one gateway is killed with SIGKILL mid-run.

Afterwards every case is delivered exactly once at the back-end (one stored submission per
case, whatever the resends), none is lost, none is doubled, and nothing is dead-lettered.
Bounded (N submissions, deadlines everywhere) and loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from gateway.cases.model import delivery_key
from tests.stores.backends import PG_DSN, drop_schema, postgres_or_skip, run_private

pytestmark = pytest.mark.postgres

N = int(os.environ.get("TONGBAN_CHAOS_CASES", "1000"))
OUTAGE_SECONDS = float(os.environ.get("TONGBAN_CHAOS_OUTAGE", "10"))
BUDGET = 90.0 + N * 0.06  # seconds for the submissions, and again for delivery to settle
TONGBAN = Path(sys.executable).parent / "tongban"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Province:
    """The handling province's system: stores each submission once per Idempotency-Key."""

    created: dict[str, str] = field(default_factory=dict)
    sends: int = 0

    async def submit(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return web.json_response({"error": "idempotency_key_required"}, status=400)
        await request.read()
        self.sends += 1
        status = 200 if key in self.created else 201
        ref = self.created.setdefault(key, f"F{len(self.created) + 1:06d}")
        return web.json_response({"ref": ref, "status": "DONE"}, status=status)


class Backend:
    def __init__(self, province: Province, port: int) -> None:
        self.province = province
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/filings", self.province.submit)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


AUDIT_DSN_ENV = "TONGBAN_CHAOS_AUDIT_DSN"


def write_config(root: Path, backend_port: int, schema: str, instance: str) -> Path:
    """One configuration per instance (its own instance id, so its own audit chain); both
    share the data directory (one set of checkpoint keys), the case store and the audit store."""
    config = root / f"config-{instance}"
    (config / "services").mkdir(parents=True)
    (config / "gateway.yaml").write_text(
        f"""
instance_id: {instance}
logging: {{level: warning, format: json}}
data_dir: {root / "data"}
audit: {{store: postgres, dsn: {{env: {AUDIT_DSN_ENV}}}, schema_name: {schema}}}
cases:
  store: {{backend: postgres, dsn: "{PG_DSN}", schema: {schema}, pool_size: 8}}
  delivery:
    max_attempts: 60
    initial_backoff: 0.2
    max_backoff: 1.0
    jitter: 0.2
    lease: 3.0
    batch: 64
    poll_interval: 0.1
  events: {{kind: none}}
# One token files every case within seconds: rate limits are not what this test is about.
rate_limits: {{client: null, person: null}}
"""
    )
    (config / "systems.yaml").write_text(
        f"""
systems:
  chaos-province:
    name: {{zh: 混沌测试系统, en: Chaos province}}
    province: "61"
    protocol: rest
    address: http://127.0.0.1:{backend_port}
    operations:
      submit_filing: {{method: POST, path: /api/filings}}
    timeouts: {{connect: 1.0, read: 2.0, attempt: 2.0, deadline: 3.0}}
    retry: {{max_attempts: 1}}
    breaker: {{failure_threshold: 5, reset_timeout: 0.5}}
    concurrency_limit: 64
"""
    )
    (config / "services" / "chaos-filing.yaml").write_text(
        """
name: {zh: 混沌测试事项, en: Chaos filing}
modes: [online]
min_level: L1
subject: caller  # the filing names no one
operations:
  file:
    name: {zh: 提交, en: File}
    kind: submit
    retry: idempotent-with-key
    input_schema: {type: object, required: [n], properties: {n: {type: integer}}}
    case: {status_field: status, status_values: {DONE: done}}
"""
    )
    (config / "routes.yaml").write_text(
        """
routes:
  - service: chaos-filing
    operation: file
    receiving: ["63"]
    handling: "61"
    system: chaos-province
    system_operation: submit_filing
"""
    )
    return config


@dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    token: str


async def start_gateway(config: Path, port: int) -> Gateway:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env[AUDIT_DSN_ENV] = PG_DSN
    with (config / "serve.stderr").open("ab") as stderr:  # the child keeps its own copy
        process = await asyncio.create_subprocess_exec(
            str(TONGBAN),
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--insecure-dev-tokens",
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    assert process.stdout is not None
    token = ""
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(20):
            while not token:
                line = (await process.stdout.readline()).decode()
                if not line:
                    said = (config / "serve.stderr").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"tongban serve exited before printing its tokens: {said}")
                if line.startswith("dev token L3: "):
                    token = line.split(": ", 1)[1].strip()
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
    except BaseException:
        await end_instance(process)  # a start that failed leaves no processes behind
        raise
    return Gateway(process, url, token)


async def end_instance(process: asyncio.subprocess.Process) -> None:
    """Kill an instance that is still running, supervisor and workers, and reap it."""
    if process.returncode is None:
        with contextlib.suppress(OSError):
            kill_instance(process.pid)
        await process.wait()


def kill_instance(pid: int) -> None:
    """SIGKILL a `tongban serve` instance whole: its supervisor and its worker processes (a
    supervisor killed alone would have its workers stop gracefully)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)


@pytest.fixture
def schema() -> Iterator[str]:
    postgres_or_skip()
    name = f"t_chaos_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        run_private(drop_schema(name))


async def test_two_instances_an_outage_and_a_kill_lose_and_double_nothing(
    tmp_path: Path, schema: str
) -> None:
    started = time.monotonic()
    province = Province()
    backend = Backend(province, free_port())
    await backend.start()
    configs = [write_config(tmp_path, backend.port, schema, name) for name in ("gw-a", "gw-b")]
    gateways: list[Gateway] = []
    try:
        gateways.append(await start_gateway(configs[0], free_port()))
        gateways.append(await start_gateway(configs[1], free_port()))
    except BaseException:
        for gateway in gateways:
            await end_instance(gateway.process)
        await backend.stop()
        raise
    victim, survivor = gateways
    killed = asyncio.Event()
    milestones = {0.25: asyncio.Event(), 0.6: asyncio.Event()}
    submitted = 0
    client_retries = 0
    case_ids: dict[int, str] = {}
    rng = random.Random(5)

    async def submit(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal submitted, client_retries
        body = {
            "service": "chaos-filing",
            "operation": "file",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "chaos test",
            "data": {"n": n},
        }
        key = f"chaos-key-{n:06d}"
        target = gateways[n % 2]
        for attempt in range(100):
            if target is victim and killed.is_set():
                target = survivor
            try:
                async with session.post(
                    f"{target.url}/api/v1/cases",
                    json=body,
                    headers={"Authorization": f"Bearer {target.token}", "Idempotency-Key": key},
                ) as response:
                    answer = await response.json(content_type=None)
                    if response.status == 202:
                        case_ids[n] = answer["case_id"]
                        # Some clients never learn they succeeded and send again anyway.
                        if rng.random() < 0.05 and attempt == 0:
                            client_retries += 1
                            continue
                        submitted += 1
                        for share, reached in milestones.items():
                            if submitted >= N * share:
                                reached.set()
                        return
                    assert response.status >= 500, answer
            except (aiohttp.ClientError, TimeoutError):
                pass
            client_retries += 1
            await asyncio.sleep(0.05)
        raise AssertionError(f"submission {n} never accepted")

    async def chaos() -> None:
        await milestones[0.25].wait()
        await backend.stop()  # the province goes down...
        await asyncio.sleep(OUTAGE_SECONDS)
        await backend.start()  # ...and comes back
        await milestones[0.6].wait()
        kill_instance(victim.process.pid)
        killed.set()

    limit = asyncio.Semaphore(32)

    async def bounded(session: aiohttp.ClientSession, n: int) -> None:
        async with limit:
            await submit(session, n)

    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.timeout(BUDGET):
            await asyncio.gather(chaos(), *(bounded(session, n) for n in range(N)))
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
        try:
            async with asyncio.timeout(BUDGET):
                while True:
                    open_cases = await conn.fetchval(
                        "SELECT count(*) FROM cases WHERE status <> 'closed'"
                    )
                    pending = await conn.fetchval(
                        "SELECT count(*) FROM case_outbox WHERE state = 'pending'"
                    )
                    if open_cases == 0 and pending == 0:
                        break
                    await asyncio.sleep(0.2)
            total = await conn.fetchval("SELECT count(*) FROM cases")
            dead = await conn.fetchval("SELECT count(*) FROM case_outbox WHERE state = 'dead'")
            rows = await conn.fetch("SELECT case_id FROM cases")
            deferred = await conn.fetchval(
                "SELECT count(*) FROM case_outbox WHERE kind = 'deliver' AND attempts > 1"
            )
        finally:
            await conn.close()
    finally:
        for gateway in gateways:
            if gateway.process.returncode is None:
                gateway.process.send_signal(signal.SIGTERM)
        for gateway in gateways:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await gateway.process.wait()
            if gateway.process.returncode is None:
                gateway.process.kill()
                await gateway.process.wait()
        await backend.stop()

    verify = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from gateway.audit.commands import verify_command;"
        f" sys.exit(verify_command(config_dir=Path({str(configs[1])!r}), data_dir=None,"
        " file=None, strict=False))",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")},
            AUDIT_DSN_ENV: PG_DSN,
        },
    )
    report, _ = await verify.communicate()
    assert verify.returncode == 0, report.decode()[-2000:]
    print("\n" + report.decode().strip().splitlines()[-1])

    assert len(case_ids) == N
    assert total == N, "one case per application: none lost, none doubled"
    assert {r["case_id"] for r in rows} == set(case_ids.values())
    assert dead == 0
    expected = {delivery_key(case_id, 0) for case_id in case_ids.values()}
    assert set(province.created) == expected, "every case delivered, exactly once"
    assert province.sends >= N
    assert deferred > 0, "the outage made some deliveries wait for a later attempt"
    elapsed = time.monotonic() - started
    print(
        f"\nchaos: {N} cases, {client_retries} client retries, {province.sends} sends for "
        f"{len(province.created)} stored submissions, {deferred} deliveries retried after "
        f"the outage, {elapsed:.1f} s"
    )
