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

``--prefill N`` starts every run on a trail that already holds about N records of the same
chain (written once, before any counted run, by the same writer and store without fsyncs, then
copied into each run's directory): the cost of an insert grows with the depth of the records'
B-tree. ``--wal`` counts what the run's commits wrote to the WAL instead (no callgrind): the
frames of each commit, by table and page kind (``dbstat``), for the commits the writer waits
for (records) and those of the lookup thread (lookup and subject rows), frame by frame from the
WAL file after each commit of records. ``strace -c -f`` on a ``--wal`` run gives the system
calls (the WAL's fsyncs go through ``io_submit``); ``--fsync-bytes TRACE`` reads such a trace
(``strace -f -y -e trace=pwrite64,fsync,fdatasync,io_submit -o TRACE``) and prints how many
bytes had been written to the WAL since its last sync when each durable fsync was asked for:
what that fsync has to write.
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


async def run(
    calls: int,
    in_flight: int,
    mode: str,
    directory: Path,
    *,
    template: Path | None = None,
    wal: bool = False,
    synchronous: str = "FULL",
    commit_timeout: float = 2.0,
) -> None:
    from gateway.adapter import Call, CallContext, Reply
    from gateway.audit.calls import CallAuditor, CallOutcome, RouteAudit
    from gateway.audit.checkpoint import CheckpointSigner
    from gateway.audit.keys import StaticKeyStore, new_signing_key
    from gateway.audit.writer import AuditWriter, WriterSettings
    from gateway.stores.sqlite_audit import SqliteAuditStore

    path = directory / "audit.sqlite"
    if template is not None:
        shutil.copyfile(template, path)
    store = SqliteAuditStore(path, synchronous=synchronous)  # type: ignore[arg-type]
    await store.open()
    frames = WalFrames(Path(f"{path}-wal")) if wal else None
    if frames is not None:
        on_loop = store._write_on_loop

        def write_on_loop(write: Any) -> bool:
            done = on_loop(write)
            frames.read()
            return done

        store._write_on_loop = write_on_loop  # type: ignore[method-assign]
    writer = AuditWriter(
        store,
        chain="bench-instance",
        signer=CheckpointSigner(StaticKeyStore([new_signing_key()])),
        settings=WriterSettings(commit_timeout=commit_timeout),
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

    try:  # closed on a failure too: the store's threads would keep the process alive
        try:
            await asyncio.gather(*(caller(n) for n in range(in_flight)))
        finally:
            await writer.aclose()
        if frames is not None:
            await store._flush_lookups()
            frames.read()
            pages = await store._fetch("SELECT pageno, name, pagetype FROM dbstat", ())
            frames.report({int(n): f"{name} {kind}" for n, name, kind in pages}, calls)
    finally:
        await store.aclose()


class WalFrames:
    """The frames of each commit in a WAL file, read as they are appended (a WAL restarted
    after a checkpoint is seen by its new salts and read from its start)."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.salts = b""
        self.offset = 32
        self.page_size = 0
        self.pending: list[int] = []
        self.commits: list[list[int]] = []
        """The pages of each commit's frames."""

    def read(self) -> None:
        data = self.wal.read_bytes()
        if len(data) < 32:
            return
        self.page_size = struct.unpack(">I", data[8:12])[0]
        if data[16:24] != self.salts:
            self.salts, self.offset, self.pending = data[16:24], 32, []
        frame = 24 + self.page_size
        while self.offset + frame <= len(data):
            header = data[self.offset : self.offset + 24]
            if header[8:16] != self.salts:
                break
            page, size = struct.unpack(">II", header[:8])
            self.pending.append(page)
            self.offset += frame
            if size:  # the commit's last frame
                self.commits.append(self.pending)
                self.pending = []

    def report(self, kinds: dict[int, str], calls: int) -> None:
        frame = 24 + self.page_size

        def of_records(pages: list[int]) -> bool:  # the writer's commits: records, checkpoints
            return any(
                kinds.get(p, "").startswith(("audit_records", "audit_checkp")) for p in pages
            )

        for records, label in ((True, "records (durable)"), (False, "lookup thread")):
            commits = [pages for pages in self.commits if of_records(pages) == records]
            count = sum(len(p) for p in commits)
            print(
                f"{label}: {len(commits)} commits, {count} frames, "
                f"{count / max(len(commits), 1):.2f} frames and "
                f"{count * frame / max(len(commits), 1):,.0f} bytes a commit, "
                f"{count / calls:.2f} frames a call"
            )
            by: dict[str, int] = {}
            for pages in commits:
                for page in pages:
                    name = kinds.get(page, "other")
                    by[name] = by.get(name, 0) + 1
            for name, n in sorted(by.items(), key=lambda item: -item[1]):
                print(f"    {name}: {n / max(len(commits), 1):.2f} a commit")


_WAL_WRITE = re.compile(r'pwrite64\(\d+<([^>]+-wal)>, ".*?"(?:\.\.\.)?, (\d+), \d+')
_WAL_SYNC = re.compile(
    r"IOCB_CMD_FSYNC, aio_fildes=\d+<([^>]+-wal)>|f(?:data)?sync\(\d+<([^>]+-wal)>"
)


def fsync_bytes(trace: Path) -> None:
    """Bytes written to the run's WAL between one sync of it and each durable fsync (the
    store's, through ``io_submit``); the WAL of the prefill, synced by SQLite, is left out."""
    lines = trace.read_text(errors="replace").splitlines()
    durable = [m.group(1) for line in lines if (m := _WAL_SYNC.search(line)) and m.group(1)]
    if not durable:
        raise SystemExit("no durable fsync of a WAL in the trace")
    wal, pending, each, others = durable[0], 0, [], 0
    for line in lines:
        if (m := _WAL_WRITE.search(line)) and m.group(1) == wal:
            pending += int(m.group(2))
        elif (m := _WAL_SYNC.search(line)) and wal in (m.group(1), m.group(2)):
            if m.group(1):
                each.append(pending)
            else:
                others += 1
            pending = 0
    each.sort()
    n = len(each)
    print(
        f"{n} durable fsyncs, {others} other syncs of the WAL; WAL bytes each durable fsync"
        f" writes: mean {sum(each) / n:,.0f}, p50 {each[n // 2]:,}, p90 {each[n * 9 // 10]:,},"
        f" p99 {each[n * 99 // 100]:,}, max {each[-1]:,}"
    )


def counted(args: argparse.Namespace, calls: int, out: Path) -> int:
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--calls", str(calls), "--in-flight", str(args.in_flight),
        "--mode", args.mode, "--commit-timeout", str(args.commit_timeout),
    ]  # fmt: skip
    if args.template:
        command += ["--template", args.template]
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
    parser.add_argument("--prefill", type=int, default=0, help="records in the trail at start")
    parser.add_argument("--template", default="", help=argparse.SUPPRESS)
    parser.add_argument("--wal", action="store_true", help="count the WAL's frames per commit")
    parser.add_argument("--fsync-bytes", default="", help="read a strace of a run (see above)")
    parser.add_argument(
        "--commit-timeout",
        type=float,
        default=2.0,
        help="the writer's commit_timeout (default 2 s; more under callgrind on a busy machine)",
    )
    args = parser.parse_args()
    if args.fsync_bytes:
        fsync_bytes(Path(args.fsync_bytes))
        return
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    with tempfile.TemporaryDirectory() as scratch:
        if args.prefill and not args.template:
            args.template = str(Path(scratch) / "template.sqlite")
            filled = Path(scratch) / "fill"
            filled.mkdir()
            asyncio.run(
                run(args.prefill // 2, 64, "buffered", filled, synchronous="NORMAL")
            )  # two records a call; the store's close checkpoints the WAL into the file
            shutil.copyfile(filled / "audit.sqlite", args.template)
        measure(args)


def measure(args: argparse.Namespace) -> None:
    template = Path(args.template) if args.template else None
    if args.callgrind:
        with tempfile.TemporaryDirectory() as scratch:
            prefix = args.keep or f"{scratch}/trail"
            small = counted(args, args.base, Path(f"{prefix}-small.out"))
            large = counted(args, args.base + args.calls, Path(f"{prefix}-large.out"))
        print(f"{args.mode}: {(large - small) / args.calls:,.0f} instructions per call")
        return
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(
            run(
                args.calls,
                args.in_flight,
                args.mode,
                Path(directory),
                template=template,
                wal=args.wal,
                commit_timeout=args.commit_timeout,
            )
        )


if __name__ == "__main__":
    main()
