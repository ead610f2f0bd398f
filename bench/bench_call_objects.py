"""Instructions to build one routed call's objects, counted under callgrind.

Builds ``--count`` times what a routed REST call of the benchmark builds besides the request
itself: its ``CallContext``, ``Call``, ``CallOutcome`` and ``CallResult``, and the two audit
events ``CallAuditor`` makes (handed to a writer that only keeps the last one). Each part can
be built alone (``--part``), so that one class's construction can be counted by itself.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out \\
        .venv/bin/python bench/bench_call_objects.py --count 21000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out \\
        .venv/bin/python bench/bench_call_objects.py --count 1000
    # (a - b) / 20000: instructions per call for the part, start-up cancelled out

``--callgrind`` does the two runs and prints the difference; ``--tree DIR`` imports
``gateway`` from another source tree (a copy of the tree before a change).
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PARTS = ("all", "events", "requested", "completed", "context", "call", "outcome", "result")


def build(count: int, part: str) -> None:
    from gateway.adapter import Call, CallContext, Reply
    from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
    from gateway.audit.record import AuditEvent
    from gateway.catalog import CallResult

    class KeepLast:
        last: AuditEvent | None = None

        async def append(self, event: AuditEvent, mode: str = "required") -> int:
            self.last = event
            return 1

    writer = KeepLast()
    auditor = CallAuditor(writer)  # type: ignore[arg-type]
    route = RouteAudit("bench-rest-echo", "lookup", "bench-rest", "Echo", "required")
    subject = "p-" + "3f9a1c" * 7
    fields: dict[str, Any] = {
        "request_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "purpose": "benchmark",
        "service": "bench-rest-echo",
        "receiving_province": "63",
        "handling_province": "61",
        "principal": "pw-" + "Zm9vYmFy" * 5,
        "actor": "pw-" + "Zm9vYmFy" * 5,
        "level": "L3",
        "client": "bench-client",
        "subjects": (subject,),
        "subject_hashes": "person:" + "ab" * 32,
        "identity_assertion": "eyJ" + "x" * 600,
    }
    context = CallContext(**fields)
    call = Call("Echo", {"zjhm": "x"}, context)
    reply = Reply({"ok": True}, 200, "sha256:" + "1" * 64, "sha256:" + "2" * 64)
    outcome = CallOutcome(1, 1.7, "closed", reply=reply)
    trace = object()

    def drive(coroutine: Any) -> None:
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    for _ in range(count):
        if part in ("all", "context"):
            context = CallContext(**fields)
        if part in ("all", "call"):
            call = Call("Echo", {"zjhm": "x"}, context)
        if part in ("all", "events", "requested"):
            drive(auditor.requested(call, route))
        if part in ("all", "outcome"):
            outcome = CallOutcome(1, 1.7, "closed", reply=reply)
        if part in ("all", "events", "completed"):
            drive(auditor.completed(call, route, outcome))
        if part in ("all", "result"):
            CallResult(reply.data, trace, reply.request_digest, reply.response_digest)  # type: ignore[arg-type]


_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def counted(count: int, part: str, tree: str | None, out: Path) -> int:
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--count", str(count), "--part", part,
    ]  # fmt: skip
    if tree:
        command += ["--tree", tree]
    subprocess.run(command, check=True, capture_output=True, timeout=1200)
    found = _TOTALS.search(out.read_text(errors="replace"))
    assert found, out
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--part", choices=PARTS, default="all")
    parser.add_argument("--tree", help="import gateway from this source tree")
    parser.add_argument("--callgrind", action="store_true", help="count, per object set")
    parser.add_argument("--out", default="/tmp/bench-call-objects", help="dumps' prefix")
    args = parser.parse_args()
    if args.callgrind:
        small = counted(1_000, args.part, args.tree, Path(f"{args.out}-small.out"))
        large = counted(1_000 + args.count, args.part, args.tree, Path(f"{args.out}-large.out"))
        print(f"{args.part}: {(large - small) / args.count:,.0f} instructions per call")
        return
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    build(args.count, args.part)


if __name__ == "__main__":
    main()
