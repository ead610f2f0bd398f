"""Instructions of the outbound part of a routed REST call alone, layer by layer.

`bench/instructions.py` counts a whole routed call; this script counts only what the gateway
does towards the back-end, in one process (the client), against the bench's back-end double,
so that each layer's share can be read as the difference between two rows:

    minimal   a bare ``ClientSession.request`` (the minimal proxy's client: JSON body, one header)
    session   the same request on the REST adapter's session (``open_session``: its timeouts,
              default headers, no cookies, no decompression)
    no-read-timer  the session without its ``sock_read`` timeout (what aiohttp's timer, armed
              again for every piece of the answer, costs)
    read-timer  the session with its ``sock_read`` timeout whatever the attempt's cap (the
              session of an adapter opened without a cap, or of a system whose ``read`` is
              shorter than its ``attempt``; in a tree whose specs carry no cap, the same as
              ``session``)
    headers   the same again with the headers the adapter sends for the bench's call (the
              call context: request id, purpose, service, principal, subjects, ...)
    lean      the same request and headers on the same session, sent by the REST adapter's
              lean path (``adapters/lean_send.py``: the session's connector, request and
              response classes without ``ClientSession._request``; an answer that arrived
              whole read by ``LeanSender.fetch`` where the tree has it, the call's headers
              given apart by ``fetch_call`` where it has that); trees without it fail
    adapter   ``RestAdapter.call``: the request built from a ``Call``, the answer checked,
              parsed and digested
    stack     the route's stack without its audit: retry policy, breaker, slot, the attempt's
              deadline, then the adapter

The client runs under ``valgrind --tool=callgrind``; it makes ``--warmup`` calls, zeroes the
counters, makes ``--calls`` calls ``--in-flight`` at a time, dumps the counters and prints the
instructions per call (the client process only; the back-end is another process).

    nice -n 19 .venv/bin/python bench/outbound_instructions.py                 # every mode
    nice -n 19 .venv/bin/python bench/outbound_instructions.py --mode adapter --tree /tmp/base
"""

# The client imports the gateway inside its function: --tree must take effect first.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_routing as br  # noqa: E402
import instructions  # noqa: E402

MODES = (
    "minimal",
    "session",
    "no-read-timer",
    "read-timer",
    "headers",
    "lean",
    "adapter",
    "stack",
)


async def client(mode: str, backend: str, warmup: int, calls: int, in_flight: int) -> None:
    """The client role: ``calls`` calls of ``mode``, counted between a zero and a dump."""
    import aiohttp

    from adapters.rest import build_rest_adapter, open_session
    from gateway.adapter import Call, CallContext
    from gateway.breaker import CircuitBreaker
    from gateway.pipeline import CallTrace, SystemRuntime, build_stack
    from gateway.settings import SystemSettings

    system = br.bench_config(backend)["systems"]["bench-rest"]
    settings = SystemSettings.model_validate(system)
    spec = settings.spec("bench-rest", HERE)
    adapter = await build_rest_adapter.open(spec)
    # The context of the bench's routed call, as the gateway fills it (no identity assertion:
    # the bench's gateway has no signing key).
    context = CallContext(
        request_id="0f3c2a9b8d7e6f5a4b3c2d1e0f9a8b7c",
        purpose="benchmark",
        service=br.REST_SERVICE,
        receiving_province="63",
        handling_province="61",
        principal="bench-citizen",
        actor="bench-citizen",
        level="L2",
        client="dev-portal",
        subjects=("person:" + "0" * 64,),
        subject_hashes="person:" + "ab" * 32,
    )
    payload = {"zjhm": br.HOLDER_ID}
    url = backend + "/api/echo"
    body = br.REST_BODY
    bare = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    if mode == "no-read-timer":
        spec = dataclasses.replace(spec, read_timeout=0.0)  # aiohttp: no sock_read timer
    elif mode == "read-timer" and "attempt_timeout" in {f.name for f in dataclasses.fields(spec)}:
        spec = dataclasses.replace(spec, attempt_timeout=None)  # no cap: sock_read is set
    session = open_session(spec, headers={"Accept": "application/json"})
    prepared = adapter.prepare(Call("Echo", payload, context))
    plain = mode in ("session", "no-read-timer", "read-timer")
    headers = {"Content-Type": "application/json"} if plain else prepared.headers
    one: Callable[[], Awaitable[object]]

    async def one_bare() -> None:
        async with bare.request("POST", url, data=body, headers=br.JSON_HEADERS) as answer:
            await answer.read()

    async def one_session() -> None:
        async with session.request(
            "POST", url, data=body, headers=headers, allow_redirects=False
        ) as answer:
            await answer.read()

    async def one_lean() -> None:
        # The call's headers given apart where the tree takes them so (LeanSender.fetch_call),
        # else the read of a whole answer (fetch), else request.
        if fetch_call is not None:
            answer = await fetch_call("POST", target, headers, body)
        else:
            answer = await fetch("POST", target, sender.headers(headers), body)
        if not isinstance(answer, aiohttp.ClientResponse):
            return  # read whole, its connection released
        try:
            await answer.read()
        finally:
            answer.release()
            await answer.wait_for_close()

    if mode == "lean":
        from yarl import URL

        from adapters.lean_send import LeanSender

        target = URL(url)
        lean_sender = LeanSender.for_(session, target.origin(), headers)
        assert lean_sender is not None
        sender = lean_sender
        fetch = getattr(sender, "fetch", sender.request)
        fetch_call = getattr(sender, "fetch_call", None)

    runtime = SystemRuntime(
        "bench-rest",
        settings,
        adapter,
        CircuitBreaker(
            "bench-rest",
            failure_threshold=settings.breaker.failure_threshold,
            reset_timeout=settings.breaker.reset_timeout,
        ),
        asyncio.Semaphore(settings.concurrency_limit),
    )
    stack = build_stack(runtime, policy="safe")
    if mode == "minimal":
        one = one_bare
    elif mode in ("session", "no-read-timer", "read-timer", "headers"):
        one = one_session
    elif mode == "lean":
        one = one_lean
    elif mode == "adapter":
        one = lambda: adapter.call(Call("Echo", payload, context))  # noqa: E731
    else:
        one = lambda: stack(Call("Echo", payload, context), CallTrace())  # noqa: E731

    async def drive(count: int) -> None:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    try:
        await drive(warmup)
        instructions.callgrind_control("-z", os.getpid())
        await drive(calls)
        instructions.callgrind_control("-d", os.getpid())
    finally:
        await adapter.aclose()
        await bare.close()
        await session.close()


def count(args: argparse.Namespace, mode: str, workdir: Path) -> float:
    """One run of ``mode`` under callgrind against a fresh back-end: instructions per call."""
    py = sys.executable
    workdir.mkdir(parents=True, exist_ok=True)
    kids = br.Children(workdir, pin=False)
    try:
        life = ["--max-lifetime", "1800"]
        backend = kids.spawn(
            "backend", [py, str(HERE / "bench_routing.py"), "--role", "backend", *life], None
        )
        out_file = workdir / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            py,
            __file__,
            "--role",
            "client",
            "--mode",
            mode,
            "--backend",
            f"http://127.0.0.1:{backend.port}",
            "--warmup",
            str(args.warmup),
            "--calls",
            str(args.calls),
            "--in-flight",
            str(args.in_flight),
        ]
        argv += ["--tree", str(Path(args.tree).resolve())] if args.tree else []
        with (workdir / "client.log").open("wb") as log:
            subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=1800)
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for dump in sorted(out_file.parent.glob(out_file.name + ".*")):
                shutil.copy(dump, keep / f"callgrind.{mode}.{dump.name.rsplit('.', 1)[1]}")
        return instructions.dumped_instructions(out_file) / int(args.calls)
    finally:
        kids.stop_all()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", default="", choices=("", *MODES), help="one mode (default: all)")
    p.add_argument("--tree", default="", help="import gateway and adapters from this tree")
    p.add_argument("--warmup", type=int, default=150, help="calls before the counters are zeroed")
    p.add_argument("--calls", type=int, default=1000, help="calls counted")
    p.add_argument("--in-flight", type=int, default=8, help="calls at a time")
    p.add_argument(
        "--keep", default="", help="copy each mode's callgrind.out into this folder (annotate)"
    )
    p.add_argument("--role", default="", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "client":
        if args.tree:
            br._import_from_tree(Path(args.tree))
        asyncio.run(client(args.mode, args.backend, args.warmup, args.calls, args.in_flight))
        return 0
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y valgrind")
    os.nice(19 - os.nice(0))  # lowest priority, inherited by the children
    label = f" (tree {args.tree})" if args.tree else ""
    for mode in [args.mode] if args.mode else MODES:
        with tempfile.TemporaryDirectory(prefix="tongban-out-") as tmp:
            per_call = count(args, mode, Path(tmp))
        print(f"{mode}{label}: {per_call / 1000:,.0f} k instructions per call", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
