"""Instructions of the audit trail of routed calls on the embedded store, counted under callgrind.

Runs what the audit does for ``--calls`` routed REST calls of the benchmark's shape, and
nothing else: ``CallAuditor`` makes each call's two events (``requested``, appended as the
route's ``--mode`` says, then ``completed``, buffered), ``--in-flight`` calls at a time, on an
``AuditWriter`` with its default settings over a ``SqliteAuditStore`` (``synchronous=FULL``,
the WAL's fsync through the kernel where it can) in a fresh directory; the lookup thread's
flushes run as in the gateway, and the run ends with the store's last flush and close. Every
thread of the process is counted (the lookup thread's too).

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out \\
        .venv/bin/python bench/bench_audit_trail.py --calls 3000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out \\
        .venv/bin/python bench/bench_audit_trail.py --calls 1000
    # (a - b) / 2000: instructions per call, start-up and close cancelled out

``--callgrind`` does the two runs and prints the difference (``--keep`` keeps the dumps for
``callgrind_annotate``); ``--tree DIR`` imports ``gateway`` from another source tree (a copy
of the tree before a change). The writer's batches follow the timing (the fsync's), so runs
of one tree differ a little; repeat.
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


async def run(calls: int, in_flight: int, mode: str, directory: Path) -> None:
    from gateway.adapter import Call, CallContext, Reply
    from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
    from gateway.audit.checkpoint import CheckpointSigner
    from gateway.audit.keys import StaticKeyStore, new_signing_key
    from gateway.audit.writer import AuditWriter
    from gateway.stores.sqlite_audit import SqliteAuditStore

    store = SqliteAuditStore(directory / "audit.sqlite")
    await store.open()
    writer = AuditWriter(
        store, chain="bench-instance", signer=CheckpointSigner(StaticKeyStore([new_signing_key()]))
    )
    await writer.start()
    auditor = CallAuditor(writer)
    route = RouteAudit("bench-rest-echo", "lookup", "bench-rest", "Echo", mode)  # type: ignore[arg-type]
    subject = "p-" + "3f9a1c" * 7
    fields: dict[str, Any] = {
        "purpose": "benchmark",
        "service": "bench-rest-echo",
        "receiving_province": "63",
        "handling_province": "61",
        "principal": "pw-" + "Zm9vYmFy" * 5,
        "actor": "pw-" + "Zm9vYmFy" * 5,
        "level": "L3",
        "client": "bench-client",
        "subjects": (subject,),
    }
    reply = Reply({"ok": True}, 200, "sha256:" + "1" * 64, "sha256:" + "2" * 64)
    remaining = calls

    async def caller(number: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            context = CallContext(request_id=f"{number:04x}{remaining:028x}", **fields)
            call = Call("Echo", {"zjhm": "x"}, context)
            await auditor.requested(call, route)
            await asyncio.sleep(0)  # the back-end's answer comes on a later turn
            await auditor.completed(call, route, CallOutcome(1, 1.7, "closed", reply=reply))

    await asyncio.gather(*(caller(n) for n in range(in_flight)))
    await writer.aclose()
    await store.aclose()


def counted(args: argparse.Namespace, calls: int, out: Path) -> int:
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--calls", str(calls), "--in-flight", str(args.in_flight),
        "--mode", args.mode,
    ]  # fmt: skip
    if args.tree:
        command += ["--tree", args.tree]
    subprocess.run(command, check=True, capture_output=True, timeout=3000)
    found = _TOTALS.search(out.read_text(errors="replace"))
    assert found, out
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls (the larger run's extra)")
    parser.add_argument("--base", type=int, default=1_000, help="calls of the smaller run")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--mode", choices=("required", "buffered"), default="required")
    parser.add_argument("--tree", help="import gateway from this source tree")
    parser.add_argument("--callgrind", action="store_true", help="count, per call")
    parser.add_argument("--keep", default="", help="write the dumps with this prefix")
    args = parser.parse_args()
    if args.callgrind:
        with tempfile.TemporaryDirectory() as scratch:
            prefix = args.keep or f"{scratch}/trail"
            small = counted(args, args.base, Path(f"{prefix}-small.out"))
            large = counted(args, args.base + args.calls, Path(f"{prefix}-large.out"))
        print(f"{args.mode}: {(large - small) / args.calls:,.0f} instructions per call")
        return
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(args.calls, args.in_flight, args.mode, Path(directory)))


if __name__ == "__main__":
    main()
