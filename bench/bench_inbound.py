"""Instructions of the inbound side of a routed REST call, counted under callgrind in one process.

The bench's app (``create_app`` with its settings, development tokens, subject keys and the
canned adapter) is started as ``tongban serve`` starts it (``app_runner``, the door on its
server) but not bound to a socket: one connection of its server is fed the bytes of the
bench's call (the request ``bench/instructions.py`` sends, as aiohttp's client writes it) and
its answer is taken from a stand-in transport, call after call, kept alive. What is counted is
everything from the connection's ``data_received`` to the answer's write: aiohttp's parser,
the request, the door, the middlewares, the call handler, the subject rule, the rate limit,
metrics, the access line and the answer; the route's stack (the audit records and the adapter)
is replaced by one that answers at once (``--stack`` keeps the real one, with its audit), and
the socket, the loop's polling and the kernel are not in it.

    .venv/bin/python bench/bench_inbound.py --callgrind                   # this tree
    .venv/bin/python bench/bench_inbound.py --callgrind --tree /tmp/base  # another tree

The steps: ``call`` (the call as above), ``refused`` (the same call with a malformed body: the
400 problem+json of the error path), ``get`` (``GET /healthz``: aiohttp's general dispatch),
``bare`` (for scale: the same call's bytes to a bare aiohttp app on another connection, its
handler reading the body and answering ``web.json_response`` of a small dict, no middleware).
Each step is warmed (200 calls), then made 100 and 100 + ``--count`` times between a zeroing
and a dump of callgrind's counters (``callgrind_steps.counted``); the difference over
``--count`` is the step's instructions per call, the cyclic garbage collector off while
counting (its cost is in ``bench/instructions.py``'s figures), and the door's probe of the
loop's lateness, which runs on wall time, set to once an hour (and the inner process's
``PYTHONHASHSEED`` 0 unless set). Without ``--callgrind`` the steps run once (a check that
every answer is the expected one).
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import callgrind_steps

HERE = Path(__file__).resolve().parent
STEPS = ("call", "refused", "get", "bare")


class _Transport(asyncio.Transport):
    """A connection's transport that keeps what is written and says when an answer is in."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.answered: asyncio.Future[None] | None = None

    def write(self, data: Any) -> None:
        self.written += data
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return ("127.0.0.1", 40000)
        return default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


def _raw(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request as aiohttp's client writes it."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:8080"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["Accept: */*", "Accept-Encoding: gzip, deflate", "User-Agent: Python/3.11 aiohttp"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(steps: list[str], counts: list[int], control: bool, stack: bool) -> None:
    import bench_routing as br
    from aiohttp import web

    import gateway.http.admission
    from gateway.adapter import Reply
    from gateway.app import create_app
    from gateway.http.keys import STATE
    from gateway.identity.devtokens import DevTokenIssuer
    from gateway.logs import configure_logging
    from gateway.serve import app_runner, freeze_startup_objects, limit_connections_of

    # The door's probe of the loop's lateness runs every few milliseconds of wall time while
    # work is in flight: under callgrind on a loaded machine a call takes a varying wall
    # time, and the probe's turns a call with it (one run of a tree counted some 100 k a call
    # more than its pair, on GET /healthz as on the call). Counted here: the calls' own code.
    gateway.http.admission._PROBE_EVERY = 3600.0
    devnull = open(os.devnull, "wb")  # noqa: SIM115, ASYNC230 - as the bench's gateway role
    configure_logging("warning", "json", stream=devnull)
    with tempfile.TemporaryDirectory(prefix="tongban-inbound-") as tmp:
        app = create_app(
            br.gateway_settings(Path(tmp) / "config", "http://127.0.0.1:9"),
            verifier=DevTokenIssuer(br.TOKEN_SECRET),
            open_adapter=_canned,
            subjects=br.bench_subject_keys(),
        )
        runner: web.AppRunner = app_runner(app)
        await runner.setup()
        try:
            limit_connections_of(app, runner)
            freeze_startup_objects()  # as serve does before it serves
            if not stack:
                answer = Reply({"result": {"zjhm": "x", "yxbz": True}, "zjhm": "x", "yxbz": True})

                async def at_once(call: Any, trace: Any) -> Any:
                    trace.attempts = 1
                    return answer

                for route in app[STATE].catalog.routes:
                    object.__setattr__(route, "stack", at_once)
            server = runner.server
            assert server is not None
            transport = _Transport()
            protocol = server()
            protocol.connection_made(transport)
            headers = br.holder_call_headers()
            path = f"/api/v1/services/{br.REST_SERVICE}/calls"
            bare = await _bare_connection(path)
            requests = {
                "call": (_raw("POST", path, headers, br.CALL_BODY), b"HTTP/1.1 200 "),
                "refused": (_raw("POST", path, headers, b"{not json"), b"HTTP/1.1 400 "),
                "get": (_raw("GET", "/healthz", {}, b""), b"HTTP/1.1 200 "),
                "bare": (_raw("POST", path, headers, br.CALL_BODY), b"HTTP/1.1 200 "),
            }
            loop = asyncio.get_running_loop()

            async def once(step: str) -> None:
                raw, status = requests[step]
                into, to = bare if step == "bare" else (transport, protocol)
                into.written.clear()
                into.answered = loop.create_future()
                to.data_received(raw)
                await into.answered
                if not into.written.startswith(status):
                    raise RuntimeError(f"{step}: {bytes(into.written[:400])!r}")
                await asyncio.sleep(0)  # the connection's task back at its wait

            for step in steps:
                for _ in range(200):  # warm: caches filled, code specialised
                    await once(step)
                for n in counts:
                    # The cyclic collector off while counting: when its collections of the
                    # older generations fall moves with every allocation, and one more or less
                    # among the counted calls moved a run by tens of thousands a call.
                    gc.collect()
                    gc.disable()
                    if control:
                        callgrind_steps.control("-z")
                    for _ in range(n):
                        await once(step)
                    if control:
                        callgrind_steps.control("-d")
                    gc.enable()
            protocol.connection_lost(None)
            bare[1].connection_lost(None)
        finally:
            await runner.cleanup()


async def _bare_connection(path: str) -> tuple[_Transport, Any]:
    """A connection of a bare aiohttp app's server (the step ``bare``)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"request_id": "r", "data": {"yxbz": True}})

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    transport = _Transport()
    protocol = runner.server()
    protocol.connection_made(transport)
    return transport, protocol


async def _canned(system: Any, spec: Any) -> Any:
    import bench_routing as br

    return br.CannedAdapter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    callgrind_steps.add_arguments(parser, STEPS)
    parser.add_argument("--stack", action="store_true", help="the route's real stack and audit")
    args = parser.parse_args()
    steps = args.step or list(STEPS)
    extra = ["--stack"] if args.stack else []
    if args.callgrind:
        os.environ.setdefault("PYTHONHASHSEED", "0")  # the inner process's dicts laid out alike
        label = "this tree" if not args.tree else f"tree {args.tree}"
        for number in range(1, args.repeat + 1):
            with tempfile.TemporaryDirectory(prefix="tongban-inbound-cg-") as tmp:
                figures = callgrind_steps.counted(
                    __file__,
                    steps,
                    small=100,
                    count=args.count,
                    out=Path(tmp) / "callgrind.out",
                    extra=extra,
                    tree=args.tree,
                )
            shown = ", ".join(f"{step} {n / 1000:,.1f} k" for step, n in figures.items())
            print(f"{label}: run {number}: instructions per call: {shown}", flush=True)
        return
    sys.path.insert(0, str(HERE))
    import bench_routing as br  # puts this checkout first on the path

    if args.tree:  # and then the other tree before it, as the gateway role of bench_routing
        br._import_from_tree(Path(args.tree).resolve())
    if args.inner:
        counts = [int(n) for n in args.counts.split(",")]
        asyncio.run(run(args.steps.split(","), counts, control=True, stack=args.stack))
    else:
        asyncio.run(run(steps, [args.count], control=False, stack=args.stack))
        print("every answer as expected")


if __name__ == "__main__":
    main()
