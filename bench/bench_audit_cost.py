"""What the audit layer costs a routed call: the gateway with and without it, same everything else.

    .venv/bin/python bench/bench_audit_cost.py                       # ~2 minutes on 2 cores
    .venv/bin/python bench/bench_audit_cost.py --stores sqlite,postgres --rounds 3 --duration 10

Each run starts the gateway (``create_app``, a REST route to an in-process canned adapter, so no
outbound HTTP and nothing but the gateway's own work is measured) in a child process pinned to
core 0 and drives ``POST /api/v1/services/bench-audit/calls`` with ``wrk`` pinned to core 1.

- **with audit**: the app exactly as built (the route's stack starts with ``with_audit``: a
  ``service_call_requested`` record durably committed before the adapter is called and a
  ``service_call_completed`` record before the answer leaves; the service is ``audit: required``);
- **without audit**: the same app whose route stacks are rebuilt after start-up without the audit
  tuple (``build_stack(..., audit=None)``): the benchmark does this from the outside, with the
  public ``Catalog.build`` / ``build_stack``; production code has no switch for it.

Variants alternate (without, with, without, with, ...) so drift of the shared machine hits both.
``--paired`` runs the two side by side instead, both gateways on core 0 over the same seconds,
each with its own wrk, and compares their CPU per call round by round (a shared VM that drifts
by ±15 % between runs hits both alike). ``--postgres-core 1`` keeps the local PostgreSQL server
off the gateway's core for the run (as if it had a machine of its own) and restores it after.
The report gives req/s, gateway CPU µs per request (from /proc), latency and the ratio; after
each "with" run the trail is verified (every record, every checkpoint signature) and counted.
PostgreSQL runs in a fresh random schema, dropped afterwards. Needs ``wrk`` and ``taskset``.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN_SECRET = b"bench-audit-cost-secret-0123456789"  # dev tokens, only for this run


def bench_subject_keys() -> Any:
    """Subject keys from bench-only secrets (a deployment derives them from its identity block)."""
    from pydantic import SecretStr

    from gateway.identity.subject_keys import SubjectKeys

    return SubjectKeys(
        pairwise_secret=SecretStr("bench-only-pairwise-secret-0123456789"),
        link_secret=SecretStr("bench-only-link-secret-0123456789abcd"),
    )


SERVICE = "bench-audit"
PG_DSN = os.environ.get("TONGBAN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CALL_BODY = {
    "receiving_province": "63",
    "handling_province": "61",
    "purpose": "benchmark",
    "data": {"holder_id": "61010219900101123X"},
}


# === the gateway child ===========================================================================


def settings(
    config_dir: Path, data_dir: Path, store: str, schema: str | None, backend_url: str = ""
) -> Any:
    from pydantic import SecretStr

    from gateway.ratelimit.config import RateLimitSettings
    from gateway.settings import (
        AuditSettings,
        GatewaySettings,
        RouteSettings,
        ServiceSettings,
        Settings,
        SystemSettings,
    )

    system = SystemSettings.model_validate(
        {
            "name": {"zh": "基准", "en": "Bench"},
            "province": "61",
            "protocol": "rest",
            # Canned: never called (the adapter answers in-process); http: the loopback back-end.
            "address": backend_url or "http://127.0.0.1:9",
            "operations": {"Echo": {"method": "POST", "path": "/api/echo"}},
        }
    )
    service = ServiceSettings.model_validate(
        {
            "name": {"zh": "基准核验", "en": "Bench"},
            "modes": ["query"],
            "min_level": "L1",
            "audit": "required",
            "subject": [{"person": "holder_id"}],
            "operations": {
                "verify": {
                    "name": {"zh": "核验", "en": "Verify"},
                    "kind": "verify",
                    "retry": "safe",
                    "input_schema": {
                        "type": "object",
                        "required": ["holder_id"],
                        "properties": {"holder_id": {"type": "string"}},
                    },
                }
            },
        }
    )
    route = RouteSettings.model_validate(
        {
            "service": SERVICE,
            "operation": "verify",
            "receiving": "*",
            "handling": "61",
            "system": "bench-rest",
            "system_operation": "Echo",
            "request": {"zjhm": "holder_id"},
            "response": {"valid": "yxbz"},
        }
    )
    audit = AuditSettings()
    if store == "postgres":
        audit = AuditSettings(store="postgres", dsn=SecretStr(PG_DSN), schema_name=schema)
    # Counted like any call (the limiter's cost is part of the path) but never reached.
    never = RateLimitSettings(client="1000000/second", person="1000000/second")
    gateway = GatewaySettings(data_dir=data_dir, audit=audit, rate_limits=never)
    return Settings(config_dir, gateway, {"bench-rest": system}, {SERVICE: service}, (route,))


class CannedAdapter:
    """The back-end in-process, with the digests a real adapter computes over the wire bytes."""

    async def call(self, call: Any) -> Any:
        from gateway.adapter import Reply, digest

        raw = json.dumps(call.payload).encode()
        return Reply({"yxbz": True}, request_digest=digest(raw), response_digest=digest(b"{}"))

    async def aclose(self) -> None:
        return None


async def run_gateway(args: argparse.Namespace) -> None:
    from aiohttp import web

    from gateway.adapter import Adapter, SystemSpec
    from gateway.app import create_app
    from gateway.catalog import Catalog
    from gateway.http.keys import METRICS, SETTINGS, STATE
    from gateway.identity.devtokens import DevTokenIssuer
    from gateway.logs import configure_logging
    from gateway.pipeline import build_stack
    from gateway.settings import SystemSettings

    async def canned(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return CannedAdapter()

    devnull = open(os.devnull, "wb")  # noqa: SIM115, ASYNC230 - lives as long as the process
    configure_logging("warning", "json", stream=devnull)
    built = settings(
        Path(args.config_dir), Path(args.data_dir), args.store, args.schema, args.backend_url
    )
    if args.backend_url:  # the REST adapter as shipped, over loopback HTTP
        app = create_app(
            built, verifier=DevTokenIssuer(TOKEN_SECRET), subjects=bench_subject_keys()
        )
    else:
        app = create_app(
            built,
            verifier=DevTokenIssuer(TOKEN_SECRET),
            open_adapter=canned,
            subjects=bench_subject_keys(),
        )

    async def without_audit(app: web.Application) -> AsyncIterator[None]:
        # Runs after the systems context: the same runtimes, stacks without the audit tuple.
        state, metrics = app[STATE], app[METRICS]
        state.opened_catalog = Catalog.build(
            app[SETTINGS],
            lambda route, operation: build_stack(
                state.systems[route.system], policy=operation.retry, observer=metrics
            ),
        )
        yield

    if args.variant == "without":
        app.cleanup_ctx.append(without_audit)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(args.max_lifetime, stop.set)
    await stop.wait()
    writer = app[STATE].audit
    if writer is not None and args.variant == "with":
        stats = writer.stats
        print(
            f"audit writer: {stats.records} records in {stats.batches} batches "
            f"({stats.records / max(stats.batches, 1):.1f} per batch)",
            file=sys.stderr,
            flush=True,
        )
    await runner.cleanup()


async def run_backend(args: argparse.Namespace) -> None:
    """The provincial system of ``--backend http``: answers every call at once."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"yxbz": True})

    app = web.Application()
    app.router.add_post("/api/echo", echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().call_later(args.max_lifetime, stop.set)
    await stop.wait()
    await runner.cleanup()


def start_child(argv: list[str], core: int) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, __file__, *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith("PORT "):
        child.kill()
        raise RuntimeError(f"child {argv[:2]} did not start: {line!r}")
    return child, int(line.split()[1])


def stop_child(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)


# === the parent ==================================================================================


@dataclass
class Run:
    store: str
    variant: str
    rps: float
    cpu_us: float
    p50_ms: float
    p99_ms: float
    errors: int
    records: int | None = None
    verified: bool | None = None


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of the process (all its threads)


def _ms(text: str) -> float:
    found = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        return float("nan")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(port: int, script: Path, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
         "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/api/v1/services/{SERVICE}/calls"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total, "errors": errors}


async def _verify_now(store: Any, keys: Any) -> tuple[int, bool]:
    from gateway.audit.verifier import verify_store

    report = await verify_store(store, keys.public_keys())
    return report.records, report.ok


def wrk_script(data_dir: Path) -> Path:
    from gateway.identity.devtokens import DevTokenIssuer

    holder = str(CALL_BODY["data"]["holder_id"])  # type: ignore[index]
    token = DevTokenIssuer(TOKEN_SECRET).issue(
        "pw-bench-0001",
        "L3",
        client_id="bench-portal",
        person=bench_subject_keys().person(holder).key,
    )
    script = data_dir / "call.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{json.dumps(CALL_BODY)}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return script


def one_run(args: argparse.Namespace, store: str, variant: str, workdir: Path) -> Run:
    return runs_at_once(args, store, (variant,), workdir)[0]


def runs_at_once(
    args: argparse.Namespace, store: str, variants: Sequence[str], workdir: Path
) -> list[Run]:
    """Run the variants' gateways side by side on core 0, each driven by its own wrk on core 1
    over the same seconds: with two, the core's drift on a shared machine hits both alike."""
    lifetime = str(args.duration * 4 + 60)
    backend: subprocess.Popen[str] | None = None
    backend_url = ""
    if args.backend == "http":  # on core 1 with wrk: the gateway's core does only the gateway
        backend, backend_port = start_child(
            ["--role", "backend", "--max-lifetime", lifetime], core=1
        )
        backend_url = f"http://127.0.0.1:{backend_port}"
    started: list[tuple[str, Path, str | None, Path, subprocess.Popen[str], int]] = []
    try:
        for variant in variants:
            data_dir = Path(tempfile.mkdtemp(prefix=f"{store}-{variant}-", dir=workdir))
            schema = f"bench_audit_{secrets.token_hex(5)}" if store == "postgres" else None
            child, port = start_child(
                ["--role", "gateway", "--variant", variant, "--store", store,
                 "--schema", schema or "", "--config-dir", str(data_dir),
                 "--data-dir", str(data_dir), "--max-lifetime", lifetime,
                 "--backend-url", backend_url],
                core=0,
            )  # fmt: skip
            started.append((variant, data_dir, schema, wrk_script(data_dir), child, port))
        with ThreadPoolExecutor(len(started)) as pool:

            def drive(seconds: float) -> list[dict[str, float]]:
                jobs = [
                    pool.submit(wrk, port, script, seconds, args.connections)
                    for _, _, _, script, _, port in started
                ]
                return [job.result() for job in jobs]

            drive(args.warmup)
            before = [cpu_ticks(child.pid) for *_, child, _ in started]
            results = drive(args.duration)
            after = [cpu_ticks(child.pid) for *_, child, _ in started]
            ticks = [a - b for a, b in zip(after, before, strict=True)]
    finally:
        for *_, child, _ in started:
            stop_child(child)
        if backend is not None:
            stop_child(backend)
    runs: list[Run] = []
    for (variant, data_dir, schema, *_), result, used in zip(started, results, ticks, strict=True):
        cpu_us = used / os.sysconf("SC_CLK_TCK") * 1e6 / max(result["requests"], 1)
        run = Run(store, variant, result["rps"], cpu_us, result["p50"], result["p99"],
                  int(result["errors"]))  # fmt: skip
        if variant == "with":
            run.records, run.verified = asyncio.run(_verify_fresh(store, data_dir, schema))
        if schema:
            asyncio.run(_drop(schema))
        runs.append(run)
    return runs


async def _verify_fresh(store: str, data_dir: Path, schema: str | None) -> tuple[int, bool]:
    from gateway.audit.keys import FileKeyStore
    from gateway.audit.setup import audit_store_for

    built = settings(data_dir, data_dir, store, schema)
    audit = audit_store_for(built.gateway.audit, data_dir)
    await audit.open()
    try:
        keys = FileKeyStore.load_or_create(data_dir)
        return await _verify_now(audit, keys)
    finally:
        await audit.aclose()


async def _drop(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def report(runs: Sequence[Run], args: argparse.Namespace) -> None:
    print(
        f"\nmachine: {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.2f}; {args.rounds} rounds × {args.duration:g} s, "
        f"{args.connections} connections, wrk on core 1, gateway on core 0, "
        f"back-end: {args.backend}"
    )
    print(
        f"\n{'store':<9} {'variant':<8} {'req/s':>8} {'CPU µs/req':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6}  trail"
    )
    for r in runs:
        trail = "" if r.records is None else f"{r.records} records, verified={r.verified}"
        print(
            f"{r.store:<9} {r.variant:<8} {r.rps:>8,.0f} {r.cpu_us:>11,.0f} {r.p50_ms:>7.1f} "
            f"{r.p99_ms:>7.1f} {r.errors:>6}  {trail}"
        )
    for store in dict.fromkeys(r.store for r in runs):
        without = [r for r in runs if r.store == store and r.variant == "without"]
        with_ = [r for r in runs if r.store == store and r.variant == "with"]
        rps0, rps1 = (statistics.median(r.rps for r in rs) for rs in (without, with_))
        cpu0, cpu1 = (statistics.median(r.cpu_us for r in rs) for rs in (without, with_))
        if args.paired:
            # Side by side on one core: a CPU-bound core serves calls in inverse proportion to
            # their CPU, so the throughput the layer costs is 1 - cpu_without / cpu_with,
            # taken per round (both variants saw the same seconds) and then the median.
            costs = sorted(
                (1 - a.cpu_us / b.cpu_us) * 100 for a, b in zip(without, with_, strict=True)
            )
            print(
                f"\n{store} (side by side): median CPU per call without {cpu0:,.0f} µs, with "
                f"{cpu1:,.0f} µs (+{cpu1 - cpu0:,.0f} µs); throughput cost per round "
                + ", ".join(f"{c:.1f}" for c in costs)
                + f" %: median {statistics.median(costs):.1f} % (target ≤ 15 %)"
            )
            continue
        print(
            f"\n{store}: median without {rps0:,.0f} req/s ({cpu0:,.0f} µs/req), with "
            f"{rps1:,.0f} req/s ({cpu1:,.0f} µs/req): throughput cost "
            f"{(1 - rps1 / rps0) * 100:.1f} %, CPU per call +{(cpu1 / cpu0 - 1) * 100:.1f} % "
            f"(target ≤ 15 %)"
        )


@contextlib.contextmanager
def postgres_on_core(core: int | None) -> Iterator[None]:
    """Keep the local PostgreSQL server off the gateway's core for the run (as if it had a
    machine of its own): its processes, and the backends it forks, go to ``core``; each gets
    its old affinity back afterwards. Needs the right to change them (root, or their owner)."""
    if core is None:
        yield
        return
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True, check=False)
    pids = [int(pid) for pid in found.stdout.split()]
    if not pids:
        raise SystemExit("--postgres-core: no process named postgres on this machine")
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    try:
        for pid in pids:
            os.sched_setaffinity(pid, {core})
        yield
    finally:
        for pid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stores", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--postgres-core",
        type=int,
        default=None,
        help="pin the local PostgreSQL server to this core for the run (1: beside wrk, off "
        "the gateway's core 0), restoring its affinity afterwards",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="run both variants at once, side by side on core 0 (each with its own wrk), and "
        "compare their CPU per call over the same seconds: robust to a drifting shared machine",
    )
    # the child's role
    parser.add_argument(
        "--backend",
        choices=["canned", "http"],
        default="canned",
        help="canned: in-process adapter (the gateway's own work only); http: the REST adapter "
        "calling a loopback back-end process, i.e. a whole routed call",
    )
    parser.add_argument("--role", choices=["parent", "gateway", "backend"], default="parent")
    parser.add_argument("--backend-url", default="")
    parser.add_argument("--variant", choices=["with", "without"], default="with")
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--schema", default="")
    parser.add_argument("--config-dir", default="")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--max-lifetime", type=float, default=120.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "gateway":
        args.schema = args.schema or None
        asyncio.run(run_gateway(args))
        return 0
    if args.role == "backend":
        asyncio.run(run_backend(args))
        return 0
    runs: list[Run] = []
    with (
        postgres_on_core(args.postgres_core),
        tempfile.TemporaryDirectory(prefix="bench-audit-cost-") as tmp,
    ):
        for store in args.stores.split(","):
            for round_ in range(args.rounds):
                if args.paired:
                    pair = runs_at_once(args, store, ("without", "with"), Path(tmp))
                    print(
                        f"{store} round {round_ + 1} side by side: "
                        + ", ".join(f"{r.variant} {r.cpu_us:,.0f} µs/req" for r in pair),
                        flush=True,
                    )
                    runs.extend(pair)
                    continue
                for variant in ("without", "with"):
                    run = one_run(args, store, variant, Path(tmp))
                    print(f"{store} round {round_ + 1} {variant}: {run.rps:,.0f} req/s", flush=True)
                    runs.append(run)
    report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
