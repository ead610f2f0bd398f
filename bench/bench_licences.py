"""Licence verification benchmark: gateway CPU per verification, uncached and cached, beside a
plain routed call through the same call stack, against the demo Shaanxi e-licence system on
loopback (in its own process, so its CPU is not counted).

    .venv/bin/python bench/bench_licences.py            # ~20 s on 2 cores
    .venv/bin/python bench/bench_licences.py --calls 500

Per path: calls, wall time, this process's CPU per call (user + system) and what that makes per
core (1 / CPU per call). ``uncached`` searches, downloads, checks the seal and verifies (three
HTTP calls); ``by number`` skips the search; ``cached`` answers from the verification cache;
``routed call`` is one download through the same stack, the baseline of a routed call.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API_KEY = "bench-only-licence-key-0123456789"
PORT_FILE_TIMEOUT = 10.0


def _issuer(port_queue: multiprocessing.Queue[int]) -> None:
    from aiohttp import web

    from gateway.demo.licence_system import build_licence_system_app, shaanxi_licence_system

    async def run() -> None:
        app = build_licence_system_app(shaanxi_licence_system(API_KEY))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_queue.put(runner.addresses[0][1])
        await asyncio.sleep(120)  # stops itself if the parent forgets it

    asyncio.run(run())


async def _measure(name: str, calls: int, op: object) -> dict[str, float | str | int]:
    assert callable(op)
    for _ in range(min(20, calls)):
        await op()  # warm up: connections, caches
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await op()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_call = cpu / calls
    return {
        "path": name,
        "calls": calls,
        "wall_s": round(wall, 2),
        "cpu_us_per_call": round(per_call * 1e6, 1),
        "per_core_per_s": round(1 / per_call) if per_call else 0,
    }


async def bench(calls: int, port: int) -> list[dict[str, float | str | int]]:
    from pydantic import SecretStr

    from gateway.adapter import Call, CallContext, load_adapter_factory
    from gateway.breaker import CircuitBreaker
    from gateway.demo.residents import MA_WENHUA
    from gateway.identity.subject_keys import SubjectKeys
    from gateway.licences.issuers import StackIssuerCall
    from gateway.licences.verify import LicenceVerifier
    from gateway.pipeline import CallTrace, SystemRuntime, build_stack
    from gateway.settings import load_settings

    os.environ.setdefault("TONGBAN_SECRET_SX_LICENCE_API_KEY", API_KEY)
    settings = load_settings(ROOT / "config", resolve_secrets=False, check_contracts=False)
    system = settings.systems["shaanxi-licence"].model_copy(
        update={
            "address": f"http://127.0.0.1:{port}",
            "auth": {
                "type": "api_key",
                "header": "X-API-Key",
                "key": {"env": "TONGBAN_SECRET_SX_LICENCE_API_KEY"},
            },
        }
    )
    adapter = await load_adapter_factory("rest").open(
        system.spec("shaanxi-licence", settings.config_dir)
    )
    runtime = SystemRuntime(
        "shaanxi-licence",
        system,
        adapter,
        CircuitBreaker("shaanxi-licence", failure_threshold=5, reset_timeout=30.0),
        asyncio.Semaphore(64),
    )
    catalogue = settings.licences.model_copy(update={"cache_seconds": 0.0})
    cached_catalogue = settings.licences.model_copy(update={"cache_seconds": 3600.0})
    calls_ = StackIssuerCall(
        catalogue, {"shaanxi-licence": runtime, "qinghai-licence": runtime}, auditor=None
    )
    keyer = SubjectKeys(pairwise_secret=SecretStr("p" * 40), link_secret=SecretStr("k" * 40))
    uncached = LicenceVerifier(catalogue, calls_, keyer)
    cached = LicenceVerifier(cached_catalogue, calls_, keyer)
    holder = uncached.holder("person", "111", MA_WENHUA.id_number)
    context = CallContext(
        request_id="bench",
        purpose="bench",
        service="bench",
        receiving_province="63",
        handling_province="61",
        principal="bench",
        actor="bench",
        level="L3",
    )
    plain = build_stack(runtime, policy="safe")
    payload = {"licenceType": "birth-medical-certificate", "number": "S610000102"}

    async def find() -> None:
        await uncached.find("birth-medical-certificate", "61", holder, context)

    async def by_number() -> None:
        await uncached.find("birth-medical-certificate", "61", holder, context, number="S610000102")

    async def from_cache() -> None:
        await cached.find("birth-medical-certificate", "61", holder, context, number="S610000102")

    async def routed() -> None:
        await plain(Call("get_licence", payload, context), CallTrace())

    try:
        return [
            await _measure("routed call (1 download)", calls, routed),
            await _measure("uncached (search+fetch+seal+verify)", calls, find),
            await _measure("by number (fetch+seal+verify)", calls, by_number),
            await _measure("cached", calls * 20, from_cache),
        ]
    finally:
        await adapter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    child = multiprocessing.Process(target=_issuer, args=(queue,), daemon=True)
    child.start()
    try:
        port = queue.get(timeout=PORT_FILE_TIMEOUT)
        rows = asyncio.run(bench(args.calls, port))
    finally:
        child.terminate()
        child.join(5)
    width = max(len(str(r["path"])) for r in rows)
    print(
        f"{'path':<{width}}  {'calls':>6}  {'wall s':>7}  {'CPU µs/call':>11}  {'per core/s':>10}"
    )
    for r in rows:
        print(
            f"{r['path']!s:<{width}}  {r['calls']:>6}  {r['wall_s']:>7}  {r['cpu_us_per_call']:>11}"
            f"  {r['per_core_per_s']:>10}"
        )


if __name__ == "__main__":
    main()
