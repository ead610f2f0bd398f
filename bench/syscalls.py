"""System calls, event-loop turns and context switches per routed call: counts that do not
depend on the machine's load (nor on its speed, as CPU time does).

The back-end double and the server under test start as for ``bench/instructions.py`` (the same
modes: ``required``, ``buffered``, ``canned``, ``proxy``, ``soap``), without valgrind. This
script drives ``--warmup`` calls, waits ``--settle`` seconds (the audit's writer finishes the
warm-up's records), attaches the counter to every thread of the server, drives ``--calls``
calls with ``--in-flight`` of them at a time, waits ``--settle`` seconds again (the counted
calls' records are written) and stops the counter. It prints, per counted call:

- every system call of the server by kind (all threads), and their total;
- the loop's turns: ``epoll_wait`` on the loop's thread (the main thread);
- the voluntary and involuntary context switches of the loop's thread and of the other threads
  (``/proc/PID/task/*/status`` before and after).

    nice -n 19 .venv/bin/python bench/syscalls.py --mode required            # perf trace -s
    nice -n 19 .venv/bin/python bench/syscalls.py --mode proxy --tool strace # strace -f -c
    nice -n 19 .venv/bin/python bench/syscalls.py --mode buffered --tree /tmp/base --in-flight 1

``--tool perf`` (the default) counts with ``perf trace -s`` (per thread, in the kernel; it
slows each system call a little), ``--tool strace`` with ``strace -f -c`` (ptrace: far slower
per call, which may change how calls group, e.g. records per audit commit at ``--in-flight``
above 1). With ``--in-flight 1`` nothing depends on timing but the audit writer's linger; the
default of 8 is ``bench/instructions.py``'s. Needs perf (linux-perf) or strace, and the right
to trace (root, or ``kernel.perf_event_paranoid`` ≤ 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_routing as br  # noqa: E402
import instructions  # noqa: E402

_PERF_THREAD = re.compile(r"^\s*(.+?) \((\d+)\), \d+ events")
_PERF_ROW = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s")
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")


def parse_perf_summary(text: str) -> dict[int, tuple[str, Counter[str]]]:
    """``perf trace -s`` output: per thread id, its name and its system calls by kind."""
    out: dict[int, tuple[str, Counter[str]]] = {}
    current: Counter[str] | None = None
    for line in text.splitlines():
        thread = _PERF_THREAD.match(line)
        if thread is not None:
            current = Counter()
            out[int(thread.group(2))] = (thread.group(1).strip(), current)
            continue
        row = _PERF_ROW.match(line)
        if row is not None and current is not None:
            current[row.group(1)] += int(row.group(2))
    return out


def parse_strace_summary(text: str) -> Counter[str]:
    """``strace -c`` output: system calls by kind (all threads together)."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        row = _STRACE_ROW.match(line)
        if row is not None and row.group(3) != "total":
            out[row.group(3)] += int(row.group(1))
    return out


def thread_names(pid: int) -> dict[int, str]:
    names: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    return names


class Counting:
    """The counter attached to every thread of ``pid`` between ``start`` and ``stop``."""

    def __init__(self, tool: str, pid: int, out: Path, log: str = "") -> None:
        self.tool, self.pid, self.out, self.log = tool, pid, out, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.tool == "none":
            return
        if self.tool == "perf":
            argv = ["perf", "trace", "-s", "-p", str(self.pid), "-o", str(self.out)]
        elif self.log:  # every call in order, with its thread and time, instead of the sums
            argv = ["strace", "-f", "-tt", "-qq", "-o", self.log, "-p", str(self.pid)]
        else:
            argv = ["strace", "-f", "-c", "-qq", "-o", str(self.out), "-p", str(self.pid)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.5)  # noqa: TID251 - attached to every thread before the counted calls
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"{self.tool} stopped at once: {err[-1000:]}")

    def stop(self) -> dict[int, tuple[str, Counter[str]]]:
        if self.tool == "none":
            return {}
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.log:
            return {}
        text = self.out.read_text(errors="replace")
        if self.tool == "perf":
            return parse_perf_summary(text)
        return {self.pid: ("all threads", parse_strace_summary(text))}


def count_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One run: a fresh back-end and server; the counts per counted call."""
    py = sys.executable
    routing = str(HERE / "bench_routing.py")
    life = ["--max-lifetime", str(args.max_lifetime)]
    workdir.mkdir(parents=True, exist_ok=True)
    kids = br.Children(workdir, pin=bool(args.pin))
    sut_cpu, load_cpu = args.pin.split(",") if args.pin else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {int(load_cpu)})  # the driver beside the back-end
    try:
        backend = kids.spawn("backend", [py, routing, "--role", "backend", *life], load_cpu)
        upstream = f"http://127.0.0.1:{backend.port}"
        role, path, body, headers = instructions.server_role(args, upstream, workdir)
        server = kids.spawn("server", role, sut_cpu, timeout=120)
        url = f"http://127.0.0.1:{server.port}{path}"
        drive = instructions.drive
        asyncio.run(drive(url, body, headers, args.warmup, args.in_flight, gap=args.gap))
        time.sleep(args.settle)  # noqa: TID251 - the orchestrator is synchronous
        counting = Counting(args.tool, server.pid, workdir / f"{args.tool}.txt", args.log)
        counting.start()
        switches_before = br.thread_switches(server.pid)
        cpu_before = br.cpu_split([server.pid])
        asyncio.run(drive(url, body, headers, args.calls, args.in_flight, gap=args.gap))
        time.sleep(args.settle)  # noqa: TID251
        switches_after = br.thread_switches(server.pid)
        user, system = br.cpu_split([server.pid])
        cpu = (user - cpu_before[0], system - cpu_before[1])
        names = thread_names(server.pid)
        by_thread = counting.stop()
    finally:
        kids.stop_all()
    result = summarise(args, server.pid, by_thread, switches_before, switches_after, names)
    result["user_us"], result["system_us"] = (seconds / args.calls * 1e6 for seconds in cpu)
    return result


def summarise(
    args: argparse.Namespace,
    pid: int,
    by_thread: dict[int, tuple[str, Counter[str]]],
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    names: dict[int, str],
) -> dict[str, Any]:
    calls = float(args.calls)
    every: Counter[str] = Counter()
    threads: dict[str, dict[str, float]] = {}
    for tid, (name, counts) in by_thread.items():
        every.update(counts)
        label = f"{names.get(tid, name)}/{'loop' if tid == pid else tid}"
        threads[label] = {"syscalls": sum(counts.values()) / calls}
    loop_calls = by_thread.get(pid, ("", Counter()))[1]
    cs = {"loop_voluntary": 0, "loop_involuntary": 0, "other_voluntary": 0, "other_involuntary": 0}
    for tid, (v, i) in after.items():
        v0, i0 = before.get(tid, (0, 0))
        side = "loop" if tid == pid else "other"
        cs[f"{side}_voluntary"] += v - v0
        cs[f"{side}_involuntary"] += i - i0
        label = f"{names.get(tid, '?')}/{'loop' if tid == pid else tid}"
        row = threads.setdefault(label, {"syscalls": 0.0})
        row["cs_voluntary"] = (v - v0) / calls
        row["cs_involuntary"] = (i - i0) / calls
    return {
        "mode": args.mode,
        "calls": args.calls,
        "in_flight": args.in_flight,
        "pin": args.pin,
        "tool": args.tool,
        "syscalls": sum(every.values()) / calls,
        "by_kind": {k: n / calls for k, n in every.most_common()},
        "epoll_wait": loop_calls.get("epoll_wait", 0) / calls
        if args.tool == "perf"
        else every.get("epoll_wait", 0) / calls,
        "cs": {k: n / calls for k, n in cs.items()},
        "threads": threads,
    }


def print_result(label: str, run: int, r: dict[str, Any]) -> None:
    cs = r["cs"]
    print(
        f"{label}: run {run}: {r['syscalls']:.2f} system calls per call, epoll_wait (loop) "
        f"{r['epoll_wait']:.2f}, context switches loop {cs['loop_voluntary']:.2f} voluntary + "
        f"{cs['loop_involuntary']:.2f}, other threads {cs['other_voluntary']:.2f} + "
        f"{cs['other_involuntary']:.2f}",
        flush=True,
    )
    print(
        f"  CPU per call: user {r['user_us']:.0f} µs, system {r['system_us']:.0f} µs (load "
        "and speed dependent; the tracer's own cost included unless --tool none)",
        flush=True,
    )
    kinds = ", ".join(f"{k} {n:.2f}" for k, n in r["by_kind"].items() if n >= 0.01)
    print(f"  by kind: {kinds}", flush=True)
    for name, row in sorted(r["threads"].items()):
        if any(v >= 0.01 for v in row.values()):
            shown = ", ".join(f"{k} {v:.2f}" for k, v in row.items())
            print(f"  thread {name}: {shown}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", default="required", choices=instructions.MODES, help="what is counted")
    p.add_argument("--tree", default="", help="import gateway and adapters from this tree")
    p.add_argument("--loop", default="asyncio", help="the gateway's event loop (asyncio, uvloop)")
    p.add_argument(
        "--tool",
        default="perf",
        choices=("perf", "strace", "none"),
        help="the counter (none: context switches and CPU time only)",
    )
    p.add_argument("--warmup", type=int, default=200, help="calls before the count")
    p.add_argument("--calls", type=int, default=1000, help="calls counted")
    p.add_argument("--in-flight", type=int, default=8, help="calls at a time")
    p.add_argument("--repeat", type=int, default=1, help="runs, each with a fresh server")
    instructions.add_gap_argument(p)
    p.add_argument(
        "--pin",
        default="",
        help="SUT,LOAD: the server on core SUT, the back-end and this driver on core LOAD "
        "(as bench_routing.py pins them), e.g. 0,1",
    )
    p.add_argument("--settle", type=float, default=1.0, help="seconds between the phases")
    p.add_argument("--max-lifetime", type=float, default=900.0, help="children stop after this")
    p.add_argument(
        "--log",
        default="",
        help="with --tool strace: write every system call (thread, time) to this file instead "
        "of counting (to read what one call does, with a few --calls and --in-flight 1)",
    )
    p.add_argument("--json-out", default="", help="append every run's figures to this file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tool != "none" and shutil.which(args.tool) is None:
        raise SystemExit(f"{args.tool} is missing")
    os.nice(19 - os.nice(0))  # lowest priority, inherited by the children
    label = f"{args.mode}, {args.in_flight} in flight"
    label += f", {args.gap * 1000:g} ms apart" if args.gap else ""
    label += f", tree {args.tree}" if args.tree else ""
    label += f", pinned {args.pin}" if args.pin else ""
    for run in range(1, max(args.repeat, 1) + 1):
        with tempfile.TemporaryDirectory(prefix="tongban-sys-") as tmp:
            result = count_once(args, Path(tmp))
        result["tree"] = args.tree
        print_result(label, run, result)
        if args.json_out:
            with Path(args.json_out).open("a") as out:
                out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
