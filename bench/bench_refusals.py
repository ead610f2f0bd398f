"""What one refusal costs a worker at its admission bound: counts, not times.

A server child runs the gateway's admission as ``serve`` wires it (``admission_middleware``
outermost, ``refuse_at_the_door``, ``limit_connections``) in front of a small app: ``/hold``
answers only when the server stops (it keeps the bound's slots taken), ``/work`` is an
admitted call of ten awaits, anything else answers 200 at once. The driver fills the bound with
``/hold`` calls, then sends POSTs of a small JSON body on ``--connections`` keep-alive
connections, one at a time on each (the open-loop raw client's shape in bench_routing), each
answered 503 ``gateway.overloaded``; the answer is checked and the connection reused when the
server keeps it alive (a new one is opened when it closes).

    nice -n 19 .venv/bin/python bench/bench_refusals.py --tool callgrind  # instructions per refusal
    nice -n 19 .venv/bin/python bench/bench_refusals.py --tool strace     # system calls per refusal
    nice -n 19 .venv/bin/python bench/bench_refusals.py --tool loop        # loop turns, callbacks
    nice -n 19 .venv/bin/python bench/bench_refusals.py --server middleware --tree /tmp/base

``--server``: ``door`` (as ``serve`` runs), ``middleware`` (the middleware refuses, no door),
``plain`` (no admission: an aiohttp handler answering the same 503 from a prepared
``web.Response``: aiohttp's own request path for a plain 503). ``--tree`` imports ``gateway``
from another source tree.

- ``callgrind``: the server under ``valgrind --tool=callgrind``; after ``--warmup`` refusals its
  counters are zeroed, ``--refusals`` are driven, and the instructions of the whole process
  divided by them are printed.
- ``strace``: ``strace -f -c`` attached for the counted refusals: system calls per refusal by
  kind, ``epoll_wait`` being the loop's turns.
- ``loop``: the server counts its loop's turns and the callbacks (``Handle._run``) it runs,
  and an admitted call's wait: with the bound one short of full, ``--admitted`` ``/work`` calls
  run one after another beside the refusals, and for each of their ten ``await
  asyncio.sleep(0)`` the server counts the callbacks and turns that ran before the call went on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_routing import _RawCall  # noqa: E402 - one keep-alive connection, as the generator's

ROOT = HERE.parent
BODY = b'{"service": "demo", "operation": "get", "params": {"id": "42"}}'
_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")


# === the server =================================================================================


class LoopCounts:
    """Turns of the loop and callbacks run, counted by patching the loop (``--tool loop``)."""

    def __init__(self) -> None:
        self.turns = 0
        self.callbacks = 0
        self.waits = 0
        self.waited_callbacks = 0
        self.waited_turns = 0
        self.work = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio.events as events  # noqa: PLC0415 - patched only when counting

        run_once = loop._run_once  # type: ignore[attr-defined]

        def counted_turn() -> None:
            self.turns += 1
            run_once()

        loop._run_once = counted_turn  # type: ignore[attr-defined]
        run = events.Handle._run

        def counted_run(handle: Any) -> None:
            self.callbacks += 1
            run(handle)

        events.Handle._run = counted_run  # type: ignore[method-assign,assignment]

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def zero(self) -> None:
        self.__init__()  # type: ignore[misc]


async def serve(args: argparse.Namespace) -> None:
    # Imported here: ``--tree`` puts another source tree first on the path before.
    from aiohttp import web  # noqa: PLC0415

    from gateway.http.admission import (  # noqa: PLC0415
        ADMISSION,
        Admission,
        admission_middleware,
        limit_connections,
        refuse_at_the_door,
    )
    from gateway.serve import freeze_startup_objects  # noqa: PLC0415
    from gateway.settings import AdmissionSettings  # noqa: PLC0415

    counts = LoopCounts()
    loop = asyncio.get_running_loop()
    if args.count_loop:
        counts.install(loop)
    stop = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await stop.wait()
        return web.Response(text="held")

    async def work(request: web.Request) -> web.Response:
        counts.work += 1
        for _ in range(10):
            callbacks, turns = counts.callbacks, counts.turns
            await asyncio.sleep(0)
            counts.waits += 1
            counts.waited_callbacks += counts.callbacks - callbacks - 1  # not its own step
            counts.waited_turns += counts.turns - turns
        return web.Response(text="done")

    async def other(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    settings = AdmissionSettings(
        max_in_flight=args.bound, min_in_flight=args.bound, queue_delay_target_ms=0
    )
    middlewares = [] if args.server == "plain" else [admission_middleware]
    app = web.Application(middlewares=middlewares)
    admission = app[ADMISSION] = Admission(settings, 1 << 20)
    if args.server == "plain":
        body = b"".join((admission._body_head, b"0" * 22, admission._body_tail))

        async def refuse(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(
                body=body,
                status=503,
                content_type="application/problem+json",
                headers={"X-Request-ID": "0" * 22, "Retry-After": "1"},
            )

        app.router.add_route("*", "/hold", hold)
        app.router.add_route("*", "/{tail:.*}", refuse)
    else:
        app.router.add_route("*", "/hold", hold)
        app.router.add_route("*", "/work", work)
        app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=15.0)
    await runner.setup()
    assert runner.server is not None
    if args.server == "door":
        refuse_at_the_door(runner.server, admission)
    if args.server != "plain":
        limit_connections(runner.server, 1024, lambda: None, admission)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    freeze_startup_objects()
    port = runner.addresses[0][1]
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR2, counts.zero)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: print(json.dumps(counts.as_dict()), file=sys.stderr, flush=True)
    )
    print(port, flush=True)
    await stop.wait()
    await runner.cleanup()


# === the driver =================================================================================


class Driver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self.closed_by_server = 0
        self.statuses: dict[int, int] = {}
        self.held: list[_RawCall] = []
        self.work_statuses: dict[int, int] = {}

    async def connect(self) -> _RawCall:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_RawCall, "127.0.0.1", self.port)
        self.opened += 1
        return conn

    def request(self, path: str) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer x.y.z\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    async def hold(self, count: int) -> None:
        for _ in range(count):
            conn = await self.connect()
            assert conn.transport is not None
            conn.transport.write(self.request("/hold"))
            self.held.append(conn)
        await asyncio.sleep(0.5)

    async def refusals(self, total: int, connections: int) -> None:
        remaining = total
        request = self.request("/api/v1/calls")

        async def one_connection() -> None:
            nonlocal remaining
            conn = await self.connect()
            while remaining > 0:
                remaining -= 1
                assert conn.transport is not None
                conn.answer = asyncio.get_running_loop().create_future()
                conn.transport.write(request)
                status, body, keep = await conn.answer
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 503 and b'"gateway.overloaded"' not in body:
                    raise RuntimeError(f"unexpected 503: {body!r}")
                if not keep or conn.lost:
                    self.closed_by_server += 1
                    conn.transport.close()
                    conn = await self.connect()
            assert conn.transport is not None
            conn.transport.close()

        await asyncio.gather(*(one_connection() for _ in range(connections)))

    async def admitted(self, calls: int) -> None:
        request = self.request("/work")
        conn = await self.connect()
        assert conn.transport is not None
        for _ in range(calls):
            conn.answer = asyncio.get_running_loop().create_future()
            conn.transport.write(request)
            status, _, keep = await conn.answer
            self.work_statuses[status] = self.work_statuses.get(status, 0) + 1
            if not keep or conn.lost:
                conn.transport.close()
                conn = await self.connect()
                assert conn.transport is not None
        if conn.transport is not None:
            conn.transport.close()

    def close(self) -> None:
        for conn in self.held:
            if conn.transport is not None:
                conn.transport.close()


def _server_command(args: argparse.Namespace, count_loop: bool) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, __file__, "--role", "server", "--server", args.server]
    argv += ["--bound", str(args.bound)]
    if count_loop:
        argv.append("--count-loop")
    env = dict(os.environ)
    tree = args.tree or str(ROOT)
    env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    return argv, env


def _callgrind_total(out_file: Path) -> int:
    total = 0
    for path in sorted(out_file.parent.glob(out_file.name + ".*")):
        if match := _TOTALS.search(path.read_bytes()):
            total += int(match.group(1))
    return total


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="refusals-"))
    out_file = tmp / "callgrind.out"
    argv, env = _server_command(args, args.tool == "loop")
    if args.tool == "callgrind":
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert server.stdout is not None
    assert server.stderr is not None
    port = int(server.stdout.readline())
    result: dict[str, Any] = {"server": args.server, "tool": args.tool, "tree": args.tree or "."}
    tracer: subprocess.Popen[bytes] | None = None
    try:

        async def drive() -> None:
            driver = Driver(port)
            holds = args.bound - (1 if args.tool == "loop" and args.server != "plain" else 0)
            await driver.hold(holds)
            await driver.refusals(args.warmup, args.connections)
            nonlocal tracer
            if args.tool == "callgrind":
                # Blocking on purpose: nothing else runs in the driver meanwhile.
                subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True,  # noqa: ASYNC221
                               capture_output=True, timeout=600)  # fmt: skip
            elif args.tool == "strace":
                tracer = subprocess.Popen(  # noqa: ASYNC220
                    ["strace", "-f", "-c", "-o", str(tmp / "strace.txt"), "-p", str(server.pid)],
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1.0)
            else:
                os.kill(server.pid, signal.SIGUSR2)
                await asyncio.sleep(0.2)
            driver.opened = driver.closed_by_server = 0
            driver.statuses.clear()
            jobs = [driver.refusals(args.refusals, args.connections)]
            if args.tool == "loop" and args.server != "plain":
                jobs.append(driver.admitted(args.admitted))
            await asyncio.gather(*jobs)
            if args.tool == "callgrind":
                subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True,  # noqa: ASYNC221
                               capture_output=True, timeout=600)  # fmt: skip
            elif args.tool == "strace":
                assert tracer is not None
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=60)
            else:
                os.kill(server.pid, signal.SIGUSR1)
                await asyncio.sleep(0.5)
            result.update(
                refusals=args.refusals,
                statuses=driver.statuses,
                connections_opened=driver.opened,
                closed_by_server=driver.closed_by_server,
                work_statuses=driver.work_statuses,
            )
            driver.close()

        asyncio.run(drive())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    refused = args.refusals
    if args.tool == "callgrind":
        total = _callgrind_total(out_file)
        result["instructions_per_refusal"] = round(total / refused)
    elif args.tool == "strace":
        calls: dict[str, int] = {}
        for line in (tmp / "strace.txt").read_text().splitlines():
            if (match := _STRACE_ROW.match(line)) and match.group(3) != "total":
                calls[match.group(3)] = int(match.group(1))
        result["syscalls_per_refusal"] = {
            name: round(count / refused, 3) for name, count in sorted(calls.items())
        }
        result["syscalls_total_per_refusal"] = round(sum(calls.values()) / refused, 3)
    else:
        line = [x for x in err.decode().splitlines() if x.startswith("{")][-1]
        counts = json.loads(line)
        result["loop"] = counts
        result["turns_per_refusal"] = round(counts["turns"] / refused, 3)
        result["callbacks_per_refusal"] = round(counts["callbacks"] / refused, 3)
        if counts["waits"]:
            result["admitted_await_waits_callbacks"] = round(
                counts["waited_callbacks"] / counts["waits"], 2
            )
            result["admitted_await_waits_turns"] = round(
                counts["waited_turns"] / counts["waits"], 2
            )
        result["admitted_calls"] = counts["work"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("driver", "server"), default="driver")
    parser.add_argument("--server", choices=("door", "middleware", "plain"), default="door")
    parser.add_argument("--tool", choices=("callgrind", "strace", "loop"), default="callgrind")
    parser.add_argument("--tree", help="import gateway from this source tree")
    parser.add_argument("--bound", type=int, default=4, help="admission.max_in_flight")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--refusals", type=int, default=20000)
    parser.add_argument("--admitted", type=int, default=200, help="/work calls (--tool loop)")
    parser.add_argument("--count-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        if args.tree:
            sys.path.insert(0, args.tree)
        asyncio.run(serve(args))
        return
    os.nice(0)
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
