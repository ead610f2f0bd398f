"""The audit commit a `required` call waits for, at a fixed rate: the writer and its SQLite
store alone, without HTTP, so that a change to the writer can be told apart from the rest of
the call path (and from a loaded machine's noise on the HTTP rows of bench_routing).

    .venv/bin/python bench/bench_audit_rate.py --rates 500,1000 --seconds 8 --rounds 3 \\
        --tree /path/to/tree-before

Each simulated call appends its request record (``required``: the call waits for the commit),
waits ``--backend-ms`` (the back-end), then queues its outcome record (``buffered``), as
`gateway/audit/calls.py` does for a `required` service. Calls are started on a fixed schedule
(an open loop); the latency is from the call's due time to the commit's acknowledgement, so a
late start counts. Each round runs in a fresh process with a fresh store in ``--dir`` (on the
data disk: ``/tmp`` may be a tmpfs); with ``--tree`` the rounds alternate between this tree
and that one (``gateway`` imported from it), so both see the same machine.

Prints, per tree and rate, the p50 / p90 / p99 / p99.9 of the wait in ms, the commits per
call, and the process's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A round's process imports ``gateway`` from the tree on its PYTHONPATH (this one or --tree).
from gateway.audit.checkpoint import CheckpointSigner
from gateway.audit.keys import StaticKeyStore, new_signing_key
from gateway.audit.record import AuditEvent, EventType
from gateway.audit.writer import AuditWriter, WriterSettings
from gateway.stores.sqlite_audit import SqliteAuditStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def worker(rate: float, seconds: float, backend: float, directory: str) -> dict[str, float]:
    store = SqliteAuditStore(Path(directory) / "audit.sqlite")
    await store.open()
    signer = CheckpointSigner(StaticKeyStore([new_signing_key()]))
    writer = AuditWriter(store, chain="bench", signer=signer, settings=WriterSettings())
    await writer.start()
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def call(n: int, due: float) -> None:
        await writer.append(
            AuditEvent(
                type=EventType.SERVICE_CALL_REQUESTED,
                request_id=f"req-{n:08d}",
                principal="pw-3f2a9c",
                service="hukou-move",
                receiving_province="63",
                handling_province="61",
            )
        )
        waits.append(loop.time() - due)
        await asyncio.sleep(backend)
        await writer.append(
            AuditEvent(
                type=EventType.SERVICE_CALL_COMPLETED,
                request_id=f"req-{n:08d}",
                principal="pw-3f2a9c",
                service="hukou-move",
                outcome="ok",
                attempts=1,
                latency_ms=1,
            ),
            mode="buffered",
        )

    warmup = int(rate)  # one second
    total = warmup + int(rate * seconds)
    start = loop.time() + 0.05
    cpu_before = 0.0
    for n in range(total):
        due = start + n / rate
        if n == warmup:
            waits.clear()
            cpu_before = time.process_time()
            batches_before = writer.stats.batches
        ahead = due - loop.time()
        if ahead > 0:
            await asyncio.sleep(ahead)
        task = asyncio.create_task(call(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    await writer.settle()
    cpu = time.process_time() - cpu_before
    batches = writer.stats.batches - batches_before
    await writer.aclose()
    await store.aclose()
    waits.sort()
    calls = total - warmup
    return {
        "p50": percentile(waits, 0.5) * 1000,
        "p90": percentile(waits, 0.9) * 1000,
        "p99": percentile(waits, 0.99) * 1000,
        "p99.9": percentile(waits, 0.999) * 1000,
        "commits_per_call": batches / calls,
        "cpu_us_per_call": cpu / calls * 1e6,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_round(tree: Path, rate: float, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="audit-rate-") as directory:
        env = dict(os.environ, PYTHONPATH=str(tree))
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                "--rates",
                str(rate),
                "--seconds",
                str(args.seconds),
                "--backend-ms",
                str(args.backend_ms),
                "--dir",
                directory,
            ],
            env=env,
            cwd=str(tree),
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000", help="calls per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend-ms", type=float, default=0.5)
    parser.add_argument("--tree", type=Path, help="a second source tree, rounds alternating")
    parser.add_argument("--dir", default=str(Path.cwd()), help="a directory on the data disk")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.worker:
        figures = asyncio.run(worker(rates[0], args.seconds, args.backend_ms / 1000, args.dir))
        print(json.dumps(figures))
        return
    trees = [("this tree", ROOT)] + ([("other tree", args.tree.resolve())] if args.tree else [])
    load = os.getloadavg()[0]
    print(
        f"audit commit of a required call at a fixed rate; {args.rounds} rounds of "
        f"{args.seconds:g} s, back-end {args.backend_ms:g} ms, store in {args.dir} "
        f"(load average {load:.2f})"
    )
    results: dict[tuple[str, float], list[dict[str, float]]] = {}
    for n in range(args.rounds):
        for rate in rates:
            for name, tree in trees if n % 2 == 0 else list(reversed(trees)):
                figures = run_round(tree, rate, args)
                results.setdefault((name, rate), []).append(figures)
                print(
                    f"  round {n + 1}  {name:<10} {rate:6.0f}/s  p50 {figures['p50']:6.3f}  "
                    f"p90 {figures['p90']:6.3f}  p99 {figures['p99']:6.3f}  "
                    f"p99.9 {figures['p99.9']:6.3f} ms  commits/call "
                    f"{figures['commits_per_call']:.2f}  CPU {figures['cpu_us_per_call']:.0f} µs"
                    f"  (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    print("median of the rounds:")
    for (name, rate), rounds in results.items():

        def med(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"  {name:<10} {rate:6.0f}/s  p50 {med('p50'):6.3f}  p90 {med('p90'):6.3f}  "
            f"p99 {med('p99'):6.3f}  p99.9 {med('p99.9'):6.3f} ms  commits/call "
            f"{med('commits_per_call'):.2f}  CPU {med('cpu_us_per_call'):.0f} µs"
        )


if __name__ == "__main__":
    main()
