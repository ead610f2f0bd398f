"""Instructions per routed call: a count that does not depend on the machine's load.

The benchmark's back-end double starts as in ``bench/bench_routing.py``; then the server under
test (the gateway, or the minimal aiohttp proxy for scale) runs under ``valgrind
--tool=callgrind``. This script drives ``--warmup`` calls, zeroes callgrind's counters
(``callgrind_control -z``), drives ``--calls`` calls with ``--in-flight`` of them at a time,
dumps the counters (``callgrind_control -d``) and prints the instructions of every thread of
the server (the audit's SQLite thread too; not the kernel's work in system calls) divided by
the calls counted. Between the phases it waits a moment, so that the audit's writer finishes
the warm-up's records before the zero and the counted calls' records before the dump.

    nice -n 19 .venv/bin/python bench/instructions.py                     # `required`, this tree
    nice -n 19 .venv/bin/python bench/instructions.py --mode proxy        # the minimal proxy
    nice -n 19 .venv/bin/python bench/instructions.py --tree /tmp/base --mode buffered --repeat 3

Modes: ``required`` and ``buffered`` (the audit mode of the routed REST service), ``canned``
(``required``, the adapter replaced by a canned answer: no outbound call) and ``proxy`` (the
minimal aiohttp proxy of bench_routing). ``--tree`` imports ``gateway`` and ``adapters`` from
another source tree (a checkout before a change, or one built with ``make compiled``).

The process lowers its own priority (``nice`` 19, its children inherit it): the count does not
depend on the load, and other benchmarks on the machine are not disturbed. Runs of the same
tree differ by about ±2 %. Needs valgrind (``callgrind_control`` comes with it).

``--workers N`` counts ``tongban serve --workers N`` instead (the configuration
``bench_routing.py --only-workers`` serves: rate limits in memory for one worker, in
``ratelimits.sqlite`` for several): callgrind follows the supervisor into every worker it starts
(``--trace-children=yes``, one dump per process), the counters of all of them are zeroed and
dumped together, and the instructions are summed over the workers, with the supervisor's own
share reported apart. ``--persons N`` spreads the calls over N persons in turn (each a
development token naming its person, as a portal's traffic; one person: the printed token);
with many persons the warm-up should show each of them to every worker (each keeps its own
cache of verified tokens: some thousands of calls for 1,000 persons and two workers).
``--strace`` counts system calls per call instead (``strace -c -f`` attached to the supervisor
and the workers for the counted calls, no callgrind); ``--rate-limits-store sqlite`` makes
one worker draw on the file several share.

    nice -n 19 .venv/bin/python bench/instructions.py --workers 2 --persons 1000 \\
        --warmup 1000 --calls 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import aiohttp  # noqa: E402
import bench_routing as br  # noqa: E402

MODES = ("required", "buffered", "canned", "proxy", "soap")
_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


async def drive(
    url: str,
    body: bytes,
    headers: dict[str, str],
    calls: int,
    in_flight: int,
    authorizations: Sequence[str] = (),
    *,
    tolerate: bool = False,
    gap: float = 0.0,
) -> None:
    """``calls`` POSTs to ``url``, ``in_flight`` at a time; each must answer 200 (``tolerate``:
    a warm-up's refusal is let pass; ``serve``'s audit writer keeps its 2 s cap on a commit,
    which a loaded machine under callgrind may exceed). With ``authorizations`` the calls take
    their Authorization header from it in turn (one person after another, as a portal's
    traffic), going on where the last ``drive`` stopped. ``gap``: seconds each of the
    ``in_flight`` callers pauses after every answer (with one in flight: a call, then a pause,
    as an open loop at a moderate rate, where the server goes idle between calls)."""
    remaining = calls

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent = headers
            if authorizations:
                sent = {**headers, "Authorization": authorizations[_turn[0] % len(authorizations)]}
                _turn[0] += 1
            async with session.post(url, data=body, headers=sent) as answer:
                text = await answer.read()
                if answer.status != 200 and not tolerate:
                    raise RuntimeError(f"{url} answered {answer.status}: {text[:500]!r}")
            if gap > 0:
                await asyncio.sleep(gap)

    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))


_turn = [0]
"""The next person of ``drive``'s turn (kept between the warm-up and the counted calls)."""


def callgrind_control(option: str, pid: int, *values: str) -> None:
    done = subprocess.run(
        ["callgrind_control", option, *values, str(pid)],
        capture_output=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control {option} {pid}: {done.stderr.decode()[-2000:]}")


def dumped_instructions(out_file: Path) -> int:
    """Instructions (Ir) in the dumps callgrind wrote on request (``OUT.1``, or one file per
    thread with ``--separate-threads=yes``): the counts since the last zeroing."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump next to {out_file}")
    total = 0
    for dump in dumps:
        found = _TOTALS.search(dump.read_bytes())
        if found is None:
            raise RuntimeError(f"no totals line in {dump}")
        total += int(found.group(1))
    return total


def server_role(
    args: argparse.Namespace, upstream: str, workdir: Path
) -> tuple[list[str], str, bytes, dict[str, str]]:
    """The command line of the server ``args.mode`` names (``args.loop``, ``args.tree`` and
    ``args.max_lifetime`` too), and the path, body and headers of one call to it."""
    py = sys.executable
    routing = str(HERE / "bench_routing.py")
    life = ["--max-lifetime", str(args.max_lifetime)]
    if args.mode == "proxy":
        role = [py, routing, "--role", "minproxy", "--backend", upstream, *life]
        return role, "/api/echo", br.REST_BODY, br.JSON_HEADERS
    role = [py, routing, "--role", "gateway", "--backend", upstream, *life]
    role += ["--log-mode", "warning", "--config-dir", str(workdir / "config")]
    role += ["--loop", args.loop]
    role += ["--audit-mode", "buffered"] if args.mode == "buffered" else []
    role += ["--canned"] if args.mode == "canned" else []
    role += ["--tree", str(Path(args.tree).resolve())] if args.tree else []
    timeout = getattr(args, "commit_timeout", 0.0)
    role += ["--commit-timeout", str(timeout)] if timeout > 0 else []
    service = br.SOAP_SERVICE if args.mode == "soap" else br.REST_SERVICE
    return role, f"/api/v1/services/{service}/calls", br.CALL_BODY, br.holder_call_headers()


def count_once(args: argparse.Namespace, workdir: Path) -> float:
    """One run: a fresh back-end and server under callgrind; instructions per counted call."""
    py = sys.executable
    routing = str(HERE / "bench_routing.py")
    life = ["--max-lifetime", str(args.max_lifetime)]
    workdir.mkdir(parents=True, exist_ok=True)
    kids = br.Children(workdir, pin=False)
    try:
        backend = kids.spawn("backend", [py, routing, "--role", "backend", *life], None)
        upstream = f"http://127.0.0.1:{backend.port}"
        out_file = workdir / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
        role, path, body, headers = server_role(args, upstream, workdir)
        server = kids.spawn("server", [*valgrind, *role], None, timeout=args.start_timeout)
        url = f"http://127.0.0.1:{server.port}{path}"
        asyncio.run(drive(url, body, headers, args.warmup, args.in_flight, gap=args.gap))
        time.sleep(args.settle)  # noqa: TID251 - the orchestrator is synchronous
        callgrind_control("-z", server.pid)
        asyncio.run(drive(url, body, headers, args.calls, args.in_flight, gap=args.gap))
        time.sleep(args.settle)  # noqa: TID251
        callgrind_control("-d", server.pid)
        return dumped_instructions(out_file) / int(args.calls)
    finally:
        kids.stop_all()


@dataclass
class ServedCount:
    """One run of ``tongban serve --workers N`` under callgrind: instructions per counted call,
    of the workers together and of the supervisor."""

    workers: float
    supervisor: float
    per_worker: list[float]

    def __float__(self) -> float:
        return self.workers


def _process_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def spawn_served(
    args: argparse.Namespace, workdir: Path, upstream: str, *, valgrind: bool = True
) -> tuple[subprocess.Popen[bytes], int, str]:
    """``tongban serve --workers N --insecure-dev-tokens`` under callgrind, following the
    workers (``--trace-children=yes``, a dump per process, ``callgrind.out.<pid>``); the
    process, its port and the development token it printed. The development tokens are signed
    with ``bench_routing.TOKEN_SECRET`` so that ``served_person_tokens`` can mint the persons'."""
    config = br.write_config_dir(workdir / "config", upstream, audit_mode=_audit_mode(args))
    if args.rate_limits_store:
        import yaml  # noqa: PLC0415

        gateway_yaml = config / "gateway.yaml"
        settings = yaml.safe_load(gateway_yaml.read_text("utf-8"))
        settings["rate_limits"]["store"] = args.rate_limits_store
        gateway_yaml.write_text(yaml.safe_dump(settings, allow_unicode=True), "utf-8")
    port = br.free_port()
    out_dir = workdir / "dumps"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Instrumentation off until the workers are up (``callgrind_control -i on``): under full
    # instrumentation a worker's start (imports, every WSDL) outlasts the supervisor's bound.
    grind = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no"]
    grind += [f"--callgrind-out-file={out_dir}/callgrind.out.%p"]
    argv = [*(grind if valgrind else []), sys.executable, "-m", "gateway.cli", "serve"]
    argv += ["--config", str(config)]
    argv += ["--port", str(port), "--workers", str(args.workers), "--insecure-dev-tokens"]
    env = {**os.environ, "TONGBAN_DEV_TOKEN_SECRET": br.TOKEN_SECRET.hex()}
    tree = Path(args.tree).resolve() if args.tree else br.ROOT
    # The audit writer's cap on a commit (2 s) as bench_routing's --commit-timeout sets it, in
    # every process of `serve` (a sitecustomize ahead of the tree): under callgrind on a busy
    # machine a commit can outlast 2 s, and the call is then refused, as it must be.
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    seconds = args.commit_timeout if args.commit_timeout > 0 else SERVED_COMMIT_TIMEOUT
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(seconds=seconds), "utf-8")
    env["PYTHONPATH"] = f"{site}{os.pathsep}{tree}"
    out = workdir / "serve.out"
    log = workdir / "serve.log"
    with out.open("wb") as stdout, log.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=stdout,
            stderr=err,
            cwd=tree,
            env=env,
            preexec_fn=br._die_with_parent,  # noqa: PLW1509 - no threads here
        )
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        for line in out.read_text().splitlines():
            if line.startswith("dev token L1:"):
                return proc, port, line.split(":", 1)[1].strip()
        time.sleep(0.5)  # noqa: TID251 - the orchestrator is synchronous
    proc.kill()
    tail = log.read_text()[-3000:]
    raise RuntimeError(f"serve did not start in {args.start_timeout:g} s:\n{tail}")


SERVED_COMMIT_TIMEOUT = 30.0
"""``--workers``: the audit writer's cap on a commit unless ``--commit-timeout`` is given."""

_SITECUSTOMIZE = """\
import functools

try:
    from gateway.audit import setup, writer
except ImportError:
    pass
else:
    setup.WriterSettings = functools.partial(writer.WriterSettings, commit_timeout={seconds})
"""


def _audit_mode(args: argparse.Namespace) -> str:
    return "buffered" if args.mode == "buffered" else "required"


def _stop_served(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        for pid in _process_children(proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


class _Served(NamedTuple):
    """A running ``tongban serve`` and what a call to its routed REST service sends."""

    proc: subprocess.Popen[bytes]
    url: str
    headers: dict[str, str]
    body: bytes
    persons: tuple[str, ...]


@contextlib.contextmanager
def _serving(args: argparse.Namespace, workdir: Path, *, valgrind: bool) -> Iterator[_Served]:
    """A fresh back-end and ``tongban serve --workers N`` before it (under callgrind or not),
    stopped on the way out."""
    py = sys.executable
    routing = str(HERE / "bench_routing.py")
    life = ["--max-lifetime", str(args.max_lifetime)]
    workdir.mkdir(parents=True, exist_ok=True)
    kids = br.Children(workdir, pin=False)
    proc: subprocess.Popen[bytes] | None = None
    try:
        backend = kids.spawn("backend", [py, routing, "--role", "backend", *life], None)
        proc, port, token = spawn_served(
            args, workdir, f"http://127.0.0.1:{backend.port}", valgrind=valgrind
        )
        yield _Served(
            proc,
            f"http://127.0.0.1:{port}/api/v1/services/{br.REST_SERVICE}/calls",
            {**br.JSON_HEADERS, "Authorization": f"Bearer {token}"},
            br.SERVED_CALL_BODY,
            br.served_person_tokens(args.persons),
        )
    finally:
        if proc is not None:
            _stop_served(proc)
        kids.stop_all()


def count_served_once(args: argparse.Namespace, workdir: Path) -> ServedCount:
    """One run of ``--workers N``: a fresh back-end and ``tongban serve`` under callgrind;
    instructions per counted call summed over the workers, the supervisor's apart."""
    if args.mode not in ("required", "buffered"):
        raise SystemExit("--workers counts the routed REST call: --mode required or buffered")
    with _serving(args, workdir, valgrind=True) as served:
        proc, url, headers, body, persons = served
        workers = _process_children(proc.pid)
        if len(workers) != args.workers:
            raise RuntimeError(f"{len(workers)} workers under the supervisor, not {args.workers}")
        for pid in [proc.pid, *workers]:
            callgrind_control("--instr=on", pid)
        _turn[0] = 0
        warmup = drive(url, body, headers, args.warmup, args.in_flight, persons, tolerate=True)
        asyncio.run(warmup)
        time.sleep(args.settle)  # noqa: TID251 - the orchestrator is synchronous
        for pid in [proc.pid, *workers]:
            callgrind_control("-z", pid)
        asyncio.run(drive(url, body, headers, args.calls, args.in_flight, persons))
        time.sleep(args.settle)  # noqa: TID251
        for pid in [proc.pid, *workers]:
            callgrind_control("-d", pid)
        dumps = workdir / "dumps"
        calls = int(args.calls)
        per_worker = [dumped_instructions(dumps / f"callgrind.out.{p}") / calls for p in workers]
        supervisor = dumped_instructions(dumps / f"callgrind.out.{proc.pid}") / calls
        return ServedCount(sum(per_worker), supervisor, per_worker)


def strace_served_once(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """``--strace``: ``tongban serve --workers N`` without callgrind; after the warm-up
    ``strace -c -f`` is attached to the supervisor and every worker (all their threads) for
    the counted calls. System calls per counted call, by name (``total`` too)."""
    with _serving(args, workdir, valgrind=False) as served:
        proc, url, headers, body, persons = served
        _turn[0] = 0
        asyncio.run(drive(url, body, headers, args.warmup, args.in_flight, persons))
        time.sleep(args.settle)  # noqa: TID251 - the orchestrator is synchronous
        out = workdir / "strace.txt"
        attach = ["strace", "-c", "-f", "-o", str(out)]
        for pid in [proc.pid, *_process_children(proc.pid)]:
            attach += ["-p", str(pid)]
        tracer = subprocess.Popen(attach, stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # noqa: TID251 - strace attaches every thread
        asyncio.run(drive(url, body, headers, args.calls, args.in_flight, persons))
        time.sleep(args.settle)  # noqa: TID251
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=120)
        counts: dict[str, float] = {}
        for line in out.read_text().splitlines():
            cells = line.split()
            if len(cells) >= 5 and cells[0][0].isdigit() and cells[3].isdigit():
                counts[cells[-1]] = int(cells[3]) / int(args.calls)
        return counts


def count_with_retries(args: argparse.Namespace, workdir: Path) -> float:
    """``count_once``, again after a failed call: under valgrind a busy machine can hold the
    audit's commit past the writer's timeout (2 s), and the gateway then refuses the call with
    ``gateway.audit_unavailable``, as it must. That run counts nothing; the next one starts
    afresh."""
    for attempt in range(args.retries + 1):
        try:
            if args.workers > 0:
                return count_served_once(args, workdir / f"attempt-{attempt}")  # type: ignore[return-value]
            return count_once(args, workdir / f"attempt-{attempt}")
        except RuntimeError as exc:
            if attempt == args.retries:
                raise
            print(f"run failed, starting again: {str(exc)[-1500:]}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def add_gap_argument(parser: argparse.ArgumentParser) -> None:
    """``--gap-ms`` (``args.gap`` in seconds): the pause of each caller after every answer."""
    parser.add_argument(
        "--gap-ms",
        dest="gap",
        type=lambda ms: float(ms) / 1000,
        default=0.0,
        help="each caller pauses this many ms after every answer (--in-flight 1 --gap-ms 2: "
        "one call, then a pause, as an open loop at a moderate rate; the server goes idle "
        "between calls)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", default="required", choices=MODES, help="what is counted")
    p.add_argument("--tree", default="", help="import gateway and adapters from this tree")
    p.add_argument("--loop", default="asyncio", help="the gateway's event loop (asyncio, uvloop)")
    p.add_argument("--warmup", type=int, default=150, help="calls before the counters are zeroed")
    p.add_argument("--calls", type=int, default=400, help="calls counted")
    p.add_argument("--in-flight", type=int, default=8, help="calls at a time")
    p.add_argument("--repeat", type=int, default=1, help="runs, each with a fresh server")
    add_gap_argument(p)
    p.add_argument("--settle", type=float, default=1.0, help="seconds between the phases")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the start")
    p.add_argument("--max-lifetime", type=float, default=1800.0, help="children stop after this")
    p.add_argument("--retries", type=int, default=2, help="new runs after a failed call")
    p.add_argument(
        "--commit-timeout",
        type=float,
        default=0.0,
        help="the audit writer's cap on one commit, in seconds (default: the writer's 2 s, "
        "30 s with --workers; longer keeps a busy machine from refusing calls under callgrind)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="count `tongban serve --workers N` (all its workers summed, the supervisor apart) "
        "instead of one gateway process",
    )
    p.add_argument(
        "--strace",
        action="store_true",
        help="with --workers: system calls per call (strace -c -f on the supervisor and every "
        "worker during the counted calls) instead of instructions",
    )
    p.add_argument(
        "--rate-limits-store",
        default="",
        help="--workers: the served configuration's rate_limits.store (sqlite: one worker on "
        "the file that several share)",
    )
    p.add_argument("--strace-top", type=int, default=14, help="--strace: system calls shown")
    p.add_argument(
        "--persons", type=int, default=1, help="the calls come from this many persons in turn"
    )
    p.add_argument("--keep", default="", help="copy the callgrind dumps into this directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y valgrind")
    os.nice(19 - os.nice(0))  # lowest priority, inherited by the children
    label = f"{args.mode}" + (f", tree {args.tree}" if args.tree else "")
    label += f", {args.in_flight} in flight"
    label += f", {args.gap * 1000:g} ms apart" if args.gap else ""
    if args.strace:
        if args.workers < 1:
            raise SystemExit("--strace counts `serve --workers N`: give --workers")
        with tempfile.TemporaryDirectory(prefix="tongban-sc-") as tmp:
            counts = strace_served_once(args, Path(tmp))
        label += f", serve --workers {args.workers}, {args.persons} person(s)"
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        cells = "  ".join(f"{name} {n:.2f}" for name, n in top[: args.strace_top])
        print(f"{label}: system calls per call: {cells}", flush=True)
        return 0
    if args.workers > 0:
        label += f", serve --workers {args.workers}, {args.persons} person(s)"
    figures: list[float] = []
    for run in range(1, max(args.repeat, 1) + 1):
        with tempfile.TemporaryDirectory(prefix="tongban-ir-") as tmp:
            counted = count_with_retries(args, Path(tmp))
            if args.keep:
                keep = Path(args.keep) / f"{args.mode}-w{args.workers}-p{args.persons}-{run}"
                keep.mkdir(parents=True, exist_ok=True)
                for dump in sorted(Path(tmp).glob("attempt-*/**/callgrind.out*")):
                    shutil.copy(dump, keep / dump.name)
        per_call = float(counted)
        figures.append(per_call)
        print(f"{label}: run {run}: {per_call / 1000:,.0f} k instructions per call", flush=True)
        if isinstance(counted, ServedCount):
            each = ", ".join(f"{w / 1000:,.0f} k" for w in counted.per_worker)
            print(
                f"{label}: run {run}: workers {each}; supervisor "
                f"{counted.supervisor / 1000:,.1f} k per call (apart)",
                flush=True,
            )
    if len(figures) > 1:
        print(f"{label}: median {statistics.median(figures) / 1000:,.0f} k", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
