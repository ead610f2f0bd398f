"""Instructions of a routed call's audit records on the event loop, counted under callgrind.

The steps, each made ``--count`` times for one routed call as the pipeline's audit layer makes
them (``gateway.pipeline.with_audit`` around a back-end that answers at once, a call's context
as the bench's routed REST call has it: one data subject, a client, no grant):

- ``events``: the request and outcome events and the auditor's hand-offs, the writer replaced by
  one that keeps nothing (its ``append`` and ``append_nowait`` return at once);
- ``trail``: the same on a real ``AuditWriter`` (``required`` request, ``buffered`` outcome,
  eight calls in flight, no linger) whose store keeps nothing: the events, the writer's queue,
  the records' text, hashes and stored rows, without SQLite;
- ``stored``: one ``StoredRecord`` made as the writer makes it.

    .venv/bin/python bench/bench_audit_events.py --callgrind                  # every step
    .venv/bin/python bench/bench_audit_events.py --callgrind --tree /tmp/base --repeat 2

``--callgrind`` runs the script under valgrind once: each step is warmed (200 calls), then made
100 and 100 + ``--count`` times, the counters zeroed before and dumped after each
(``callgrind_control``); the difference divided by ``--count`` is the step's instructions per
call. ``--tree DIR`` imports ``gateway`` from another source tree.
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import callgrind_steps

HERE = Path(__file__).resolve().parent
STEPS = ("events", "trail", "stored")
IN_FLIGHT = 8


class _NullWriter:
    """A writer that keeps nothing."""

    async def append(self, event: Any, *, mode: str = "required") -> int:
        return 1

    def append_nowait(self, event: Any) -> None:
        return None


class _NullStore:
    """An audit store that keeps nothing (the writer's SQLite left out)."""

    async def register_chain(self, chain: str, created: str) -> None:
        return None

    async def head(self, chain: str) -> None:
        return None

    async def last_checkpoint(self, chain: str) -> None:
        return None

    async def heads(self) -> dict[str, Any]:
        return {}

    async def append(self, records: Sequence[Any], checkpoint: Any = None) -> None:
        return None

    async def append_checkpoint(self, checkpoint: Any) -> None:
        return None

    async def ping(self) -> None:
        return None


def _context() -> Any:
    from gateway.adapter import CallContext

    return CallContext(
        request_id="3f1c2a9e-6b7d-4c2e-9a51-0d3e8f7b6a21",
        purpose="social-insurance-transfer",
        service="svc",
        receiving_province="63",
        handling_province="61",
        principal="pw-7d1f3c",
        actor="pw-7d1f3c",
        level="L3",
        client="portal",
        subjects=("pk-4a9e0c1d",),
    )


async def _stack(writer: Any) -> Callable[[], Any]:
    from gateway.adapter import Call, Reply
    from gateway.audit.calls import CallAuditor, RouteAudit
    from gateway.pipeline import CallTrace, with_audit

    reply = Reply({"ok": True}, 200, "sha256:" + "1" * 64, "sha256:" + "2" * 64)

    async def backend(call: Call, trace: CallTrace) -> Reply:
        trace.attempts = 1
        return reply

    route = RouteAudit("svc", "lookup", "sys", "Lookup", "required")
    stack = with_audit(backend, CallAuditor(writer), route)
    call = Call("lookup", {}, _context())

    def one() -> Any:
        return stack(call, CallTrace())

    return one


async def _made(step: str, count: int) -> None:
    """``count`` of the step."""
    if step == "events":
        one = await _stack(_NullWriter())
        for _ in range(count):
            await one()
    elif step == "trail":
        writer = _WRITER
        one = await _stack(writer)
        for _ in range(count // IN_FLIGHT):
            await asyncio.gather(*[one() for _ in range(IN_FLIGHT)])
        await writer.flush()
    else:
        from gateway.audit.store import StoredRecord

        lookup = ("gw", 1, "t", "service_call_requested", "p", "a", None, "s", "63", "61", "y")
        subjects = ("pk-4a9e0c1d",)
        for n in range(count):
            StoredRecord("gw", n, "t", "{}", "00", lookup, subjects)


_WRITER: Any = None


async def _writer() -> Any:
    from gateway.audit.checkpoint import CheckpointSigner
    from gateway.audit.keys import StaticKeyStore, new_signing_key
    from gateway.audit.writer import AuditWriter, WriterSettings

    writer = AuditWriter(
        _NullStore(),  # type: ignore[arg-type]
        chain="gw-bench",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=WriterSettings(linger=0.0, checkpoint_every=10**9, checkpoint_interval=1e9),
    )
    await writer.start()
    return writer


_control = callgrind_steps.control


async def run(steps: list[str], counts: list[int], *, control: bool) -> None:
    global _WRITER  # noqa: PLW0603 - one writer for the process
    _WRITER = await _writer()
    for step in steps:
        await _made(step, 200)
        for count in counts:
            if control:
                _control("-z")
            await _made(step, count)
            if control:
                _control("-d")
    await _WRITER.aclose()


def counted(args: argparse.Namespace, steps: list[str], out: Path) -> dict[str, float]:
    """Instructions per call of each step, in one process under callgrind
    (``callgrind_steps.counted``)."""
    return callgrind_steps.counted(
        __file__, steps, small=104, count=args.count, out=out, extra=(), tree=args.tree
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    callgrind_steps.add_arguments(parser, STEPS)
    args = parser.parse_args()
    steps = args.step or list(STEPS)
    if args.count % IN_FLIGHT:
        parser.error(f"--count must be a multiple of {IN_FLIGHT}")
    if args.callgrind:
        label = f"tree {args.tree}" if args.tree else "this tree"
        for number in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory(prefix="tongban-audit-events-cg-") as tmp:
                figures = counted(args, steps, Path(tmp) / "callgrind.out")
            shown = ", ".join(f"{step} {n / 1000:,.1f} k" for step, n in figures.items())
            print(f"{label}: run {number}: instructions per call: {shown}", flush=True)
        return
    tree = Path(args.tree).resolve() if args.tree else HERE.parent
    sys.path.insert(0, str(tree))
    if args.inner:
        counts = [int(n) for n in args.counts.split(",")]
        asyncio.run(run(args.steps.split(","), counts, control=True))
    else:
        asyncio.run(run(steps, [args.count], control=False))


if __name__ == "__main__":
    main()
