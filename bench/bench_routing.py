"""Routing benchmark: back-end direct, nginx, a minimal aiohttp proxy and the gateway, on loopback.

One run starts every server in its own process (pinned apart from the load generator with
``taskset`` unless ``--no-pin``), measures each path with ``wrk`` (closed loop: throughput and
latency), then with an open-loop generator at a fixed rate (default 1,000 req/s: the added p99
of the gateway over the back-end), then an outbound-client micro-benchmark (raw aiohttp vs httpx
on ``AiohttpTransport`` vs the REST adapter), optionally a py-spy profile of the gateway, and
prints a table, the ratios and the performance targets met or missed. Every child process is
stopped in ``finally``; each also stops itself after ``--max-lifetime`` seconds and when this
process dies.

    .venv/bin/python bench/bench_routing.py                       # ~4 minutes on 2 cores
    .venv/bin/python bench/bench_routing.py --duration 5 --py-spy /path/to/py-spy --out-dir out

Needs ``wrk``, ``nginx`` (Debian ``nginx-light``) and ``taskset`` on PATH.
"""

# Child roles import what they need inside their function, so the back-end double and the
# minimal proxy do not carry the gateway's modules (their memory is reported too).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

HERE = Path(__file__).resolve().parent
WSDL = HERE / "wsdl" / "echo.wsdl"
TOKEN_SECRET = b"bench-only-secret-0123456789abcd"  # dev tokens, never used outside this run
HOLDER_ID = "610102199001011234"
SOAP_NS = "urn:tongban:bench:echo"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ACTION = f"{SOAP_NS}#Echo"
REST_SERVICE = "bench-rest-echo"
MINPROXY_UVLOOP = "minimal aiohttp proxy (uvloop) → REST"
GATEWAY_UVLOOP = "gateway REST (uvloop)"
GATEWAY_BASELINE = "gateway REST (baseline tree, asyncio)"
GATEWAY_BASELINE_BUFFERED = "gateway REST buffered (baseline tree)"
GATEWAY_THREAD_FSYNC = "gateway REST (WAL fsync on a thread)"
SOAP_SERVICE = "bench-soap-echo"

REST_BODY = json.dumps({"zjhm": HOLDER_ID}).encode()
SOAP_BODY = (
    "<?xml version='1.0' encoding='utf-8'?>"
    f'<soap-env:Envelope xmlns:soap-env="{SOAP_ENV}"><soap-env:Body>'
    f'<ns0:EchoRequest xmlns:ns0="{SOAP_NS}"><ns0:zjhm>{HOLDER_ID}</ns0:zjhm></ns0:EchoRequest>'
    "</soap-env:Body></soap-env:Envelope>"
).encode()
CALL_BODY = json.dumps(
    {
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "benchmark",
        "data": {"holder_id": HOLDER_ID},
    }
).encode()
JSON_HEADERS = {"Content-Type": "application/json"}
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{SOAP_ACTION}"'}


# === servers (each runs as `bench_routing.py --role NAME` in its own process) ==================


def _announce(port: int) -> None:
    print(f"READY {port}", flush=True)


def _stop_after(seconds: float) -> None:
    """Bounded life: a child sends itself SIGTERM after ``seconds`` whatever happens."""
    loop = asyncio.get_running_loop()
    loop.call_later(seconds, os.kill, os.getpid(), signal.SIGTERM)


async def _serve(
    app: web.Application, max_lifetime: float, sock: socket.socket | None = None
) -> None:
    """Serve ``app`` on a free port (announced) or, in a forked process, on ``sock``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, "127.0.0.1", 0) if sock is None else web.SockSite(runner, sock)
        )
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _stop_after(max_lifetime)
        if sock is None:
            _announce(int(runner.addresses[0][1]))
        await stop.wait()
    finally:
        await runner.cleanup()


def serve_processes(upstream: str, processes: int, max_lifetime: float) -> int:
    """The minimal proxy in ``processes`` forked processes on one port, one SO_REUSEPORT
    socket each (as ``tongban serve --workers N`` listens): what several processes cost per
    call on this machine with no gateway code at all, beside the gateway's workers row."""
    from gateway.workers import listening_sockets

    sockets = listening_sockets("127.0.0.1", 0, processes)
    port = int(sockets[0].getsockname()[1])
    kids: list[int] = []
    for sock in sockets:
        pid = os.fork()
        if pid == 0:  # the child: serve on its own socket until SIGTERM
            try:
                asyncio.run(_serve(minimal_proxy_app(upstream), max_lifetime, sock))
            finally:
                os._exit(0)
        kids.append(pid)
    for sock in sockets:
        sock.close()
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    _announce(port)
    stopped.wait(max_lifetime)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in kids:
        os.waitpid(pid, 0)
    return 0


_SOAP_ANSWER = (
    '<?xml version="1.0" encoding="utf-8"?>'
    f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>'
    f'<tns:EchoResponse xmlns:tns="{SOAP_NS}"><tns:zjhm>%s</tns:zjhm><tns:yxbz>true</tns:yxbz>'
    "</tns:EchoResponse></soap:Body></soap:Envelope>"
)
_SOAP_FAULT = (
    '<?xml version="1.0" encoding="utf-8"?>'
    f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body><soap:Fault>'
    "<faultcode>soap:Client</faultcode><faultstring>no zjhm</faultstring>"
    "</soap:Fault></soap:Body></soap:Envelope>"
)


def backend_app() -> web.Application:
    """The provincial back-end double: a REST JSON echo and a hand-written SOAP echo (lxml)."""
    from lxml import etree  # type: ignore[import-untyped]

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)

    async def rest_echo(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        answer = {"result": {"zjhm": body.get("zjhm"), "yxbz": True}}
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json")

    async def soap_echo(request: web.Request) -> web.Response:
        root = etree.fromstring(await request.read(), parser)
        zjhm = root.findtext(f"{{{SOAP_ENV}}}Body/{{{SOAP_NS}}}EchoRequest/{{{SOAP_NS}}}zjhm")
        if zjhm is None:
            return web.Response(
                status=500, text=_SOAP_FAULT, content_type="text/xml", charset="utf-8"
            )
        return web.Response(
            text=_SOAP_ANSWER % escape(zjhm), content_type="text/xml", charset="utf-8"
        )

    app = web.Application()
    app.router.add_post("/api/echo", rest_echo)
    app.router.add_post("/soap", soap_echo)
    return app


UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def minimal_proxy_app(upstream: str) -> web.Application:
    """The floor for any Python gateway: forward the request, one shared ClientSession."""

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        url = request.app[UPSTREAM] + request.path_qs
        async with request.app[SESSION].request(
            request.method, url, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            return web.Response(
                body=payload, status=answer.status, content_type=answer.content_type
            )

    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def bench_subject_keys() -> Any:
    """Subject keys from bench-only secrets (a deployment derives them from its identity block)."""
    from pydantic import SecretStr

    from gateway.identity.subject_keys import SubjectKeys

    return SubjectKeys(
        pairwise_secret=SecretStr("bench-only-pairwise-secret-0123456789"),
        link_secret=SecretStr("bench-only-link-secret-0123456789abcd"),
    )


def bench_config(backend: str, audit_mode: str = "required") -> dict[str, Any]:
    """The benchmark's configuration as plain data: one REST and one SOAP system, one service
    and route for each (``gateway_settings`` validates it, ``write_config_dir`` writes it)."""
    systems = {
        "bench-rest": (
            {
                "name": {"zh": "基准REST", "en": "Bench REST"},
                "province": "61",
                "protocol": "rest",
                "address": backend,
                "auth": {"type": "none"},
                "operations": {"Echo": {"method": "POST", "path": "/api/echo"}},
            }
        ),
        "bench-soap": (
            {
                "name": {"zh": "基准SOAP", "en": "Bench SOAP"},
                "province": "61",
                "protocol": "soap",
                "address": backend + "/soap",
                "wsdl": "wsdl/echo.wsdl",
                "options": {"binding": f"{{{SOAP_NS}}}EchoBinding"},
                "operations": {"Echo": {}},
            }
        ),
    }
    schema = {
        "type": "object",
        "required": ["holder_id"],
        "additionalProperties": False,
        "properties": {"holder_id": {"type": "string", "pattern": "^[0-9]{17}[0-9X]$"}},
    }
    services = {
        code: (
            {
                "name": {"zh": "基准核验", "en": f"Bench {code}"},
                "modes": ["query"],
                "min_level": "L1",
                "audit": audit_mode,
                "subject": [{"person": "holder_id"}],
                "operations": {
                    "verify": {
                        "name": {"zh": "核验", "en": "Verify"},
                        "kind": "verify",
                        "retry": "safe",
                        "input_schema": schema,
                    }
                },
            }
        )
        for code in (REST_SERVICE, SOAP_SERVICE)
    }
    routes = [
        (
            {
                "service": code,
                "operation": "verify",
                "receiving": "*",
                "handling": "61",
                "system": system,
                "system_operation": "Echo",
                "request": {"zjhm": "holder_id"},
                "response": {"valid": valid, "holder_id": holder},
            }
        )
        for code, system, valid, holder in (
            (REST_SERVICE, "bench-rest", "result.yxbz", "result.zjhm"),
            (SOAP_SERVICE, "bench-soap", "yxbz", "zjhm"),
        )
    ]
    # Counted like any call (the limiter's cost is part of the path) but never reached.
    never = {"client": "1000000/second", "person": "1000000/second"}
    return {"systems": systems, "services": services, "routes": routes, "rate_limits": never}


def gateway_settings(
    config_dir: Path,
    backend: str,
    audit_mode: str = "required",
    admission: str = "",
    audit: str = "",
) -> Any:
    """Settings built in code from ``bench_config`` (``admission``: JSON of the admission
    block, to try bounds other than the defaults)."""
    from gateway.ratelimit.config import RateLimitSettings
    from gateway.settings import (
        AdmissionSettings,
        AuditSettings,
        GatewaySettings,
        RouteSettings,
        ServiceSettings,
        Settings,
        SystemSettings,
    )

    (config_dir / "wsdl").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WSDL, config_dir / "wsdl" / "echo.wsdl")
    config = bench_config(backend, audit_mode)
    systems = {k: SystemSettings.model_validate(v) for k, v in config["systems"].items()}
    services = {k: ServiceSettings.model_validate(v) for k, v in config["services"].items()}
    routes = tuple(RouteSettings.model_validate(r) for r in config["routes"])
    limits = RateLimitSettings.model_validate(config["rate_limits"])
    bounds = AdmissionSettings.model_validate(json.loads(admission or "{}"))
    trail = AuditSettings.model_validate(json.loads(audit or "{}"))
    gateway = GatewaySettings(rate_limits=limits, admission=bounds, audit=trail)
    return Settings(config_dir, gateway, systems, services, routes)


SERVED_CALL_BODY = json.dumps(
    {
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "benchmark",
        "data": {"reference": HOLDER_ID},
    }
).encode()
"""The call as the served configuration takes it (see ``write_config_dir``)."""


def write_config_dir(config_dir: Path, backend: str, audit_mode: str = "required") -> Path:
    """The same configuration as files, for `tongban serve --workers N` (data in config/data).

    One difference: `serve` derives the data-subject keys from an identity block, which this
    configuration has not, and its development tokens name no person; so the served operation
    takes a neutral ``reference`` and is ``public`` (the same work for 1 and 2 workers, without
    the subject check the pinned gateways make)."""
    import yaml

    config = bench_config(backend, audit_mode)
    for service in config["services"].values():
        service.pop("subject", None)
        operation = service["operations"]["verify"]
        operation["subject"] = "public"
        operation["input_schema"] = {
            "type": "object",
            "required": ["reference"],
            "additionalProperties": False,
            "properties": {"reference": {"type": "string", "maxLength": 32}},
        }
    for route in config["routes"]:
        route["request"] = {"zjhm": "reference"}
    (config_dir / "wsdl").mkdir(parents=True, exist_ok=True)
    (config_dir / "services").mkdir(exist_ok=True)
    shutil.copyfile(WSDL, config_dir / "wsdl" / "echo.wsdl")
    gateway = {
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "warning", "format": "json"},
        "data_dir": "data",
        "rate_limits": config["rate_limits"],
    }

    def dump(name: str, data: Any) -> None:
        (config_dir / name).write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")

    dump("gateway.yaml", gateway)
    dump("systems.yaml", {"systems": config["systems"]})
    dump("routes.yaml", {"routes": config["routes"]})
    for code, service in config["services"].items():
        dump(f"services/{code}.yaml", service)
    return config_dir


class CannedAdapter:
    """An in-process back-end: the gateway's own cost without any outbound HTTP."""

    async def call(self, call: Any) -> Any:
        from gateway.adapter import Reply

        zjhm = call.payload.get("zjhm")
        return Reply({"result": {"zjhm": zjhm, "yxbz": True}, "zjhm": zjhm, "yxbz": True})

    async def aclose(self) -> None:
        return None


class StackSampler:
    """A statistical profiler without cProfile's cost per function call: SIGPROF every
    ``interval`` seconds of the process's CPU time, and the main thread's Python stack at that
    moment counted (folded lines, as py-spy writes them). The handler runs at the next bytecode
    boundary of the main thread, so time in a C call is charged to the Python function that
    made it, and CPU of other threads (aiosqlite's) to whatever the loop was doing then."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.stacks: Counter[tuple[str, ...]] = Counter()
        self._labels: dict[Any, str] = {}

    def _label(self, code: Any) -> str:
        label = self._labels.get(code)
        if label is None:
            path = code.co_filename
            root = str(ROOT) + "/"
            path = path[len(root) :] if path.startswith(root) else path.rsplit("site-packages/")[-1]
            label = f"{code.co_qualname} ({path}:{code.co_firstlineno})"
            self._labels[code] = label
        return label

    def _sample(self, _signum: int, frame: Any) -> None:
        labels = []
        while frame is not None:
            labels.append(self._label(frame.f_code))
            frame = frame.f_back
        labels.reverse()
        self.stacks[tuple(labels)] += 1

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self, out: Path) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        lines = [f"{';'.join(stack)} {count}" for stack, count in self.stacks.items() if stack]
        out.write_text("\n".join(lines) + "\n")


async def run_gateway(
    config_dir: Path,
    backend: str,
    log_mode: str,
    max_lifetime: float,
    canned: bool,
    profile_out: str = "",
    audit_mode: str = "required",
    admission: str = "",
    audit: str = "",
) -> int:
    from gateway.adapter import Adapter, SystemSpec
    from gateway.app import create_app
    from gateway.identity.devtokens import DevTokenIssuer
    from gateway.logs import configure_logging
    from gateway.serve import serve_until_stopped
    from gateway.settings import SystemSettings

    async def open_canned(system: SystemSettings, spec: SystemSpec) -> Adapter:
        return CannedAdapter()

    devnull = open(os.devnull, "wb")  # noqa: SIM115, ASYNC230 - lives as long as the process
    if log_mode == "warning":
        configure_logging("warning", "json", stream=devnull)
    else:  # every access line rendered as JSON, written to /dev/null
        configure_logging("info", "json", stream=devnull)
    app = create_app(
        gateway_settings(config_dir, backend, audit_mode, admission, audit),
        verifier=DevTokenIssuer(TOKEN_SECRET),
        open_adapter=open_canned if canned else None,
        subjects=bench_subject_keys(),
    )
    _stop_after(max_lifetime)
    if not profile_out:
        return await serve_until_stopped(app, "127.0.0.1", 0, on_started=_announce)
    if profile_out.endswith(".folded"):
        sampler = StackSampler()

        def sampling(port: int) -> None:
            sampler.start()
            _announce(port)

        try:
            return await serve_until_stopped(app, "127.0.0.1", 0, on_started=sampling)
        finally:
            sampler.stop(Path(profile_out))
    # cProfile inside the server process (py-spy cannot attach to this Python): from the
    # first request to SIGTERM, written as pstats for bench/bench_routing.py to summarise.
    import cProfile

    profiler = cProfile.Profile()

    def started(port: int) -> None:
        profiler.enable()
        _announce(port)

    try:
        return await serve_until_stopped(app, "127.0.0.1", 0, on_started=started)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_out)


# === open-loop generator (role "openloop") =====================================================


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[index]


def error_kind(exc: BaseException) -> str:
    """What went wrong with one open-loop call, in a word a reader can act on: a timeout (the
    server kept the call past the client's limit), a connection closed or reset by the server
    (e.g. beyond its connection bound), a refused connect (listen backlog full), or out of
    local resources (file descriptors, ephemeral ports)."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "closed before answer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno_name = _errno_name(exc.os_error.errno)
        return f"connect {errno_name}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"socket {_errno_name(exc.errno)}"
    return type(exc).__name__


def _errno_name(number: int | None) -> str:
    import errno

    return errno.errorcode.get(number or 0, str(number))


async def paced(
    one: Callable[[float, bool], Coroutine[Any, Any, None]],
    rate: float,
    warmup: float,
    duration: float,
) -> tuple[int, int, float, float]:
    """Start ``one(due, measured)`` at a fixed rate whatever the answers do, and wait for all:
    (requests started, index of the first measured one, seconds the measured ones took to
    start, the generator's worst lag behind its schedule)."""
    now = time.perf_counter  # uvloop's now() ticks in whole milliseconds
    total = int(rate * (warmup + duration))
    measured_from = int(rate * warmup)
    start = now() + 0.05
    tasks: list[asyncio.Task[None]] = []
    lag_max = 0.0
    for i in range(total):
        due = start + i / rate
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i >= measured_from:
            lag_max = max(lag_max, -delay)
        tasks.append(asyncio.create_task(one(due, i >= measured_from)))
    sent_span = now() - (start + measured_from / rate)
    await asyncio.gather(*tasks)
    return total, measured_from, sent_span, lag_max


async def open_loop(
    url: str, body: bytes, headers: dict[str, str], rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """Send at a fixed rate whatever the answers do; latency from the moment each was due.

    Every call that is not a 200 is counted by kind: ``refused`` is a 503 gateway.overloaded
    (its latency is kept apart: a refusal must be quick), other statuses and client-side
    failures (``error_kind``) are ``errors``, by kind."""
    now = time.perf_counter  # uvloop's now() ticks in whole milliseconds
    from_due: list[float] = []
    from_send: list[float] = []
    refused_in: list[float] = []
    kinds: Counter[str] = Counter()
    refused = 0
    connector = aiohttp.TCPConnector(limit=0)  # an open loop must never queue inside the client
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:

        async def one(due: float, record: bool) -> None:
            nonlocal refused
            sent = now()
            status = 0
            kind = ""
            answer_body = b""
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    answer_body = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = error_kind(exc)
            done = now()
            if record:
                if status == 200:
                    from_due.append(done - due)
                    from_send.append(done - sent)
                elif status == 503 and b"gateway.overloaded" in answer_body:
                    refused += 1
                    refused_in.append(done - sent)
                else:
                    kinds[kind or f"status {status}"] += 1

        total, measured_from, sent_span, lag_max = await paced(one, rate, warmup, duration)
    from_due.sort()
    from_send.sort()
    refused_in.sort()
    out: dict[str, Any] = {
        "sent": total - measured_from,
        "sent_total": total,
        "ok": len(from_send),
        "errors": sum(kinds.values()),
        "error_kinds": dict(kinds.most_common()),
        "refused": refused,
        "refused_p50_ms": _percentile(refused_in, 50) * 1000,
        "refused_p99_ms": _percentile(refused_in, 99) * 1000,
        "achieved_rate": (total - measured_from) / sent_span if sent_span > 0 else 0.0,
        "generator_lag_max_ms": lag_max * 1000,
    }
    for label, values in (("", from_send), ("due_", from_due)):
        for q in (50, 90, 99, 99.9):
            out[f"{label}p{q:g}_ms"] = _percentile(values, q) * 1000
        out[f"{label}max_ms"] = (values[-1] if values else float("nan")) * 1000
    return out


class _RawCall(asyncio.Protocol):
    """One HTTP/1.1 connection of the raw open-loop client: it writes a pre-built request and
    reads one answer framed by Content-Length (all the servers measured here send one), a
    few microseconds of client CPU per call where aiohttp's client takes a hundred: at
    several thousand calls a second the generator must not be what queues."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop > 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        keep = b"\r\nconnection: close" not in head
        self.answer.set_result((int(head[9:12]), body, keep))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc or ConnectionAbortedError("closed before answer"))


def _raw_error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionAbortedError):
        return "closed before answer"
    if isinstance(exc, OSError):
        return f"socket {_errno_name(exc.errno)}"
    return type(exc).__name__


async def open_loop_raw(
    url: str, body: bytes, headers: dict[str, str], rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """``open_loop`` with the raw client (``_RawCall``): a call takes an idle keep-alive
    connection or opens a new one (never waits for one), as ``open_loop``'s aiohttp client
    does; errors are counted by kind the same way (a connect that fails is ``connect ...``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {len(body)}", "", ""]
    request = "\r\n".join(head).encode() + body
    loop = asyncio.get_running_loop()
    idle: list[_RawCall] = []
    opened = 0
    now = time.perf_counter
    from_due: list[float] = []
    from_send: list[float] = []
    refused_in: list[float] = []
    kinds: Counter[str] = Counter()

    async def call() -> tuple[int, bytes]:
        nonlocal opened
        while idle:
            conn = idle.pop()
            if not conn.lost:
                break
        else:
            try:
                _, conn = await loop.create_connection(_RawCall, host, port)
            except OSError as exc:
                raise ConnectionError(f"connect {_errno_name(exc.errno)}") from exc
            opened += 1
        assert conn.transport is not None
        conn.answer = loop.create_future()
        conn.transport.write(request)
        try:
            status, answer, keep = await conn.answer
        except BaseException:
            conn.transport.abort()
            raise
        if keep and not conn.lost:
            idle.append(conn)
        else:
            conn.transport.close()
        return status, answer

    async def one(due: float, record: bool) -> None:
        sent = now()
        status = 0
        answer = b""
        kind = ""
        try:
            async with asyncio.timeout(10):
                status, answer = await call()
        except ConnectionError as exc:
            kind = str(exc) if str(exc).startswith("connect ") else _raw_error_kind(exc)
        except (OSError, TimeoutError) as exc:
            kind = _raw_error_kind(exc)
        done = now()
        if not record:
            return
        if status == 200:
            from_due.append(done - due)
            from_send.append(done - sent)
        elif status == 503 and b"gateway.overloaded" in answer:
            refused_in.append(done - sent)
        else:
            kinds[kind or f"status {status}"] += 1

    total, measured_from, sent_span, lag_max = await paced(one, rate, warmup, duration)
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    from_due.sort()
    from_send.sort()
    refused_in.sort()
    out: dict[str, Any] = {
        "generator": "raw",
        "sent": total - measured_from,
        "sent_total": total,
        "ok": len(from_send),
        "errors": sum(kinds.values()),
        "error_kinds": dict(kinds.most_common()),
        "refused": len(refused_in),
        "refused_p50_ms": _percentile(refused_in, 50) * 1000,
        "refused_p99_ms": _percentile(refused_in, 99) * 1000,
        "connections_opened": opened,
        "achieved_rate": (total - measured_from) / sent_span if sent_span > 0 else 0.0,
        "generator_lag_max_ms": lag_max * 1000,
    }
    for label, values in (("", from_send), ("due_", from_due)):
        for q in (50, 90, 99, 99.9):
            out[f"{label}p{q:g}_ms"] = _percentile(values, q) * 1000
        out[f"{label}max_ms"] = (values[-1] if values else float("nan")) * 1000
    return out


# === outbound client micro-benchmark (role "clients") ==========================================

Send = Callable[[], Awaitable[None]]


async def _time_client(
    name: str, send: Send, sequential: int, concurrency: int, concurrent_total: int
) -> dict[str, Any]:
    for _ in range(200):
        await send()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(sequential):
        await send()
    seq_cpu, seq_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    per_worker = concurrent_total // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await send()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    con_cpu, con_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = per_worker * concurrency
    return {
        "client": name,
        "seq_rps": sequential / seq_wall,
        "seq_cpu_us": seq_cpu / sequential * 1e6,
        "conc_rps": done / con_wall,
        "conc_cpu_us": con_cpu / done * 1e6,
        "conc_requests": done,
    }


async def bench_clients(
    backend: str, sequential: int, concurrency: int, total: int, slow_total: int
) -> list[dict[str, Any]]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    from adapters.rest import build_rest_adapter, check_status, open_session, read_limited
    from adapters.soap import build_soap_adapter
    from gateway.adapter import Call, CallContext, SystemSpec

    url = backend + "/api/echo"
    results: list[dict[str, Any]] = []

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def aiohttp_send() -> None:
            async with session.post(url, data=REST_BODY, headers=JSON_HEADERS) as answer:
                await answer.read()
                assert answer.status == 200

        results.append(await _time_client("aiohttp", aiohttp_send, sequential, concurrency, total))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False), trust_env=False
    ) as client:

        async def httpx_aiohttp_send() -> None:
            answer = await client.post(url, content=REST_BODY, headers=JSON_HEADERS)
            assert answer.status_code == 200

        results.append(
            await _time_client(
                "httpx+AiohttpTransport (post)", httpx_aiohttp_send, sequential, concurrency, total
            )
        )

    spec = SystemSpec(
        id="bench-rest",
        province="61",
        address=backend,
        config_dir=Path(tempfile.gettempdir()),
        concurrency_limit=concurrency,
        auth={"type": "none"},
        operations={"Echo": {"method": "POST", "path": "/api/echo"}},
    )
    async with open_session(spec, headers={"Accept": "application/json"}) as adapter_session:

        async def adapter_transport_send() -> None:
            async with adapter_session.post(
                url, data=REST_BODY, headers=JSON_HEADERS, allow_redirects=False
            ) as answer:
                check_status(answer)
                await read_limited(answer, 1 << 20, "bench")

        results.append(
            await _time_client(
                "open_session post+read_limited",
                adapter_transport_send,
                sequential,
                concurrency,
                total,
            )
        )

    adapter = await build_rest_adapter.open(spec)
    context = CallContext(
        request_id="bench",
        purpose="benchmark",
        service=REST_SERVICE,
        receiving_province="63",
        handling_province="61",
        principal="bench",
        actor="bench",
        level="L1",
    )
    call = Call("Echo", {"zjhm": HOLDER_ID}, context)
    try:

        async def adapter_send() -> None:
            await adapter.call(call)

        results.append(
            await _time_client("RestAdapter.call", adapter_send, sequential, concurrency, total)
        )
    finally:
        await adapter.aclose()

    wsdl_dir = Path(tempfile.mkdtemp(prefix="bench-wsdl-"))
    shutil.copyfile(WSDL, wsdl_dir / "echo.wsdl")
    soap_spec = SystemSpec(
        id="bench-soap",
        province="61",
        address=backend + "/soap",
        config_dir=wsdl_dir,
        wsdl="echo.wsdl",
        concurrency_limit=concurrency,
        auth={"type": "none"},
        options={"binding": f"{{{SOAP_NS}}}EchoBinding"},
        operations={"Echo": {}},
    )
    soap_adapter = await build_soap_adapter.open(soap_spec)
    soap_call = Call("Echo", {"zjhm": HOLDER_ID}, context)
    try:

        async def soap_send() -> None:
            await soap_adapter.call(soap_call)

        results.append(
            await _time_client("SoapAdapter.call", soap_send, sequential, concurrency, total)
        )
    finally:
        await soap_adapter.aclose()
        shutil.rmtree(wsdl_dir, ignore_errors=True)

    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def httpx_send() -> None:
            answer = await client.post(url, content=REST_BODY, headers=JSON_HEADERS)
            assert answer.status_code == 200

        results.append(
            await _time_client(
                "httpx default transport (reference)",
                httpx_send,
                min(sequential, slow_total),
                concurrency,
                slow_total,
            )
        )
    return results


# === the orchestrator ==========================================================================


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies (prctl PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class Children:
    """Starts child processes and stops every one of them, by pid, on exit."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self._workdir = workdir
        self._pin = pin
        self.started: list[Child] = []

    def command(self, argv: list[str], cpu: str | None) -> list[str]:
        if self._pin and cpu is not None:
            return ["taskset", "-c", cpu, *argv]
        return argv

    def spawn(self, name: str, argv: list[str], cpu: str | None, timeout: float = 60.0) -> Child:
        log = self._workdir / f"{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                self.command(argv, cpu),
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
            )
        child = Child(name, proc, 0, log)
        self.started.append(child)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                line = proc.stdout.readline().decode()
                if line.startswith("READY "):
                    child.port = int(line.split()[1])
                    return child
        raise RuntimeError(f"{name} did not start in {timeout:g} s:\n{log.read_text()[-3000:]}")

    def spawn_nginx(self, conf: Path, port: int, cpu: str | None) -> Child:
        log = self._workdir / "nginx-stderr.log"
        argv = ["nginx", "-p", f"{self._workdir}/", "-e", str(self._workdir / "nginx-error.log")]
        argv += ["-c", str(conf), "-g", "daemon off;"]
        with log.open("wb") as err:
            proc = subprocess.Popen(
                self.command(argv, cpu),
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        child = Child("nginx", proc, port, log)
        self.started.append(child)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({proc.returncode}): {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return child
            time.sleep(0.1)  # noqa: TID251 - the orchestrator is synchronous
        raise RuntimeError("nginx did not start")

    def spawn_supervised(
        self, name: str, config_dir: Path, workers: int, timeout: float = 120.0
    ) -> tuple[Child, str]:
        """`tongban serve --workers N --insecure-dev-tokens` (unpinned); its port and a token.
        Its development tokens are signed with ``TOKEN_SECRET`` (``TONGBAN_DEV_TOKEN_SECRET``),
        so that ``served_person_tokens`` can mint more."""
        port = free_port()
        out = self._workdir / f"{name}.out"
        log = self._workdir / f"{name}.log"
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_dir)]
        argv += ["--port", str(port), "--workers", str(workers), "--insecure-dev-tokens"]
        env = {**os.environ, "TONGBAN_DEV_TOKEN_SECRET": TOKEN_SECRET.hex()}
        with out.open("wb") as stdout, log.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=err,
                cwd=ROOT,
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
            )
        child = Child(name, proc, port, log)
        self.started.append(child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            for line in out.read_text().splitlines():
                if line.startswith("dev token L1:"):
                    return child, line.split(":", 1)[1].strip()
            time.sleep(0.2)  # noqa: TID251 - the orchestrator is synchronous
        raise RuntimeError(f"{name} did not start in {timeout:g} s:\n{log.read_text()[-3000:]}")

    def stop(self, child: Child) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
        _wait_or_kill(child.proc, 120)

    def stop_all(self) -> None:
        for child in reversed(self.started):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.started):
            _wait_or_kill(child.proc, 10)
            if child.proc.stdout is not None:
                child.proc.stdout.close()


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait ``timeout`` seconds for a process asked to stop, then kill it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_tree(pid: int) -> list[int]:
    out = [pid]
    for child in _children_of(pid):
        out.extend(process_tree(child))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """User and system seconds of the processes so far."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / _TICK, system / _TICK


def core_busy(core: str) -> float | None:
    """Busy seconds of one core (user, nice, system, irq, softirq, steal); None if not one core."""
    if not core.isdigit():
        return None
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{core}":
            ticks = [int(v) for v in values]
            return sum(ticks[i] for i in (0, 1, 2, 5, 6, 7)) / _TICK
    return None


def machine_busy() -> float:
    """Busy seconds of all cores together."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks[i] for i in (0, 1, 2, 5, 6, 7)) / _TICK


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread of ``pid``: (voluntary, involuntary) context switches so far."""
    out: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        voluntary = involuntary = 0
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary = int(line.split()[1])
        except OSError:
            continue
        out[int(task.name)] = (voluntary, involuntary)
    return out


_COUNTED_CALLS: Final = (
    "epoll_wait",
    "futex",
    "sendto",
    "fsync",
    "fdatasync",
    "io_submit",
    "pwrite64",
)


class WakeupCounter:
    """What a server process does per call at a fixed rate, whatever the machine's speed:
    context switches of each of its threads (/proc/PID/task/*/status) and, counted in the
    kernel by ``perf stat --per-thread`` on the system-call tracepoints (a count, not a trace:
    it costs the process next to nothing), some of its system calls per thread. On the loop's
    thread each turn of the event loop is one ``epoll_wait``; a worker thread handing a result
    back to the loop (``call_soon_threadsafe``) writes one byte to the loop's self-pipe (a
    ``sendto`` off the loop's thread); a hand-over to or from a thread is a ``futex`` wake on
    one side and a wait on the other."""

    def __init__(self, pid: int, workdir: Path, perf_cpu: str | None) -> None:
        self.pid = pid
        self._out = workdir / f"perf-stat-{pid}-{time.monotonic_ns()}.txt"
        self._perf: subprocess.Popen[bytes] | None = None
        self._perf_cpu = perf_cpu
        self._before: dict[int, tuple[int, int]] = {}
        self._cpu_before = (0.0, 0.0)

    def start(self) -> None:
        if shutil.which("perf") is not None:
            events = ",".join(f"syscalls:sys_enter_{name}" for name in _COUNTED_CALLS)
            argv = ["perf", "stat", "--per-thread", "-e", events, "-p", str(self.pid)]
            argv += ["-x", ";", "-o", str(self._out)]
            if self._perf_cpu is not None:
                argv = ["taskset", "-c", self._perf_cpu, *argv]
            self._perf = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)  # noqa: TID251 - perf attaches to every thread before the run
        self._before = thread_switches(self.pid)
        self._cpu_before = cpu_split([self.pid])

    def stop(self, calls: int) -> dict[str, Any]:
        after = thread_switches(self.pid)
        user, system = cpu_split([self.pid])
        calls = max(calls, 1)
        loop_v = loop_i = other_v = other_i = 0
        for tid, (v, i) in after.items():
            v0, i0 = self._before.get(tid, (0, 0))
            if tid == self.pid:
                loop_v, loop_i = v - v0, i - i0
            else:
                other_v, other_i = other_v + v - v0, other_i + i - i0
        out: dict[str, Any] = {
            "calls": calls,
            "threads": len(after),
            "cs_loop_voluntary": loop_v / calls,
            "cs_loop_involuntary": loop_i / calls,
            "cs_threads_voluntary": other_v / calls,
            "cs_threads_involuntary": other_i / calls,
            "cs_total": (loop_v + loop_i + other_v + other_i) / calls,
            "user_us": (user - self._cpu_before[0]) / calls * 1e6,
            "system_us": (system - self._cpu_before[1]) / calls * 1e6,
        }
        counts: dict[int, dict[str, int]] = {}
        if self._perf is not None:
            self._perf.send_signal(signal.SIGINT)
            _wait_or_kill(self._perf, 30)
            counts = parse_perf_stat(self._out.read_text(errors="replace"))
            loop = counts.get(self.pid, {})
            others: Counter[str] = Counter()
            for tid, calls_of in counts.items():
                if tid != self.pid:
                    others.update(calls_of)
            out |= {
                "epoll_wait": loop.get("epoll_wait", 0) / calls,
                "futex_loop": loop.get("futex", 0) / calls,
                "futex_threads": others.get("futex", 0) / calls,
                "self_pipe_writes": others.get("sendto", 0) / calls,
                "fsync": (others.get("fsync", 0) + others.get("fdatasync", 0)) / calls,
                "io_submit": loop.get("io_submit", 0) / calls,
                "pwrite_loop": loop.get("pwrite64", 0) / calls,
            }
        per_thread: dict[str, dict[str, float]] = {}
        for tid, (v, i) in after.items():
            v0, i0 = self._before.get(tid, (0, 0))
            try:
                name = Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                name = "?"
            row = {"cs_voluntary": (v - v0) / calls, "cs_involuntary": (i - i0) / calls}
            row |= {k: n / calls for k, n in counts.get(tid, {}).items()}
            if any(row.values()):
                per_thread[f"{name}/{tid}"] = row
        out["per_thread"] = per_thread
        return out


def parse_perf_stat(text: str) -> dict[int, dict[str, int]]:
    """``perf stat --per-thread -x ;`` output: counts by system call, per thread id."""
    out: dict[int, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split(";")
        if len(parts) < 4 or not parts[1].strip().isdigit():
            continue
        thread, count, event = parts[0].strip(), int(parts[1]), parts[3].strip()
        tid = thread.rsplit("-", 1)[-1]
        if not tid.isdigit() or not event.startswith("syscalls:sys_enter_"):
            continue
        name = event.removeprefix("syscalls:sys_enter_")
        calls = out.setdefault(int(tid), {})
        calls[name] = calls.get(name, 0) + count
    return out


def memory_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    expect: bytes
    sut: Child | None  # the process(es) whose CPU is charged to this path
    backend: Child
    authorizations: tuple[str, ...] = ()
    """When given, wrk sends these Authorization headers in turn, one per request."""


@dataclass
class ClosedResult:
    name: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    sut_cpu_us: float | None
    backend_cpu_us: float
    sut_core_busy_pct: float | None = None
    sut_own_pct: float = 0.0
    load_average: float = 0.0


def _lua_long_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50":%.0f,"p90":%.0f,"p99":%.0f,"max":%.0f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


WRK_IN_TURN = """
local requests = {}
local last = 0
init = function(args)
  for i, value in ipairs(authorizations) do
    local headers = {}
    for name, header in pairs(wrk.headers) do headers[name] = header end
    headers["Authorization"] = value
    requests[i] = wrk.format(nil, nil, headers)
  end
end
request = function()
  last = last % #requests + 1
  return requests[last]
end
"""
"""Each request with the next of ``authorizations`` (formatted once, in ``init``, after wrk has
set the Host header): the persons of a portal calling in turn."""


def wrk_script(target: Target, path: Path) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_long_string(target.body.decode())}"]
    for name, value in target.headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {_lua_long_string(value)}")
    if target.authorizations:
        lines.append("authorizations = {")
        lines.extend(f"  {_lua_long_string(value)}," for value in target.authorizations)
        lines.append("}")
        lines.append(WRK_IN_TURN)
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, kids: Children) -> None:
        self.args = args
        self.workdir = workdir
        self.kids = kids

    def wait_quiet(self, target: Target) -> None:
        """Let a server finish a backlog (an overloaded run leaves one), and wait (bounded) for
        other people's work on this shared machine to calm down, before measuring."""
        pids = [target.backend.pid, *(process_tree(target.sut.pid) if target.sut else [])]
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            before, machine0 = cpu_seconds(pids), machine_busy()
            time.sleep(0.5)  # noqa: TID251 - the orchestrator is synchronous
            ours, machine = cpu_seconds(pids) - before, machine_busy() - machine0
            if ours < 0.03 and machine < 0.1:
                return
            if time.monotonic() > deadline:
                print(
                    f"  note: before {target.name}: other load {machine / 0.5 * 100:.0f} % "
                    "of a core; measuring anyway",
                    flush=True,
                )
                return

    def wrk(self, target: Target, seconds: float, pinned: bool = True) -> dict[str, Any]:
        script = wrk_script(target, self.workdir / f"{target.name}.lua")
        argv = ["wrk", "-t1", f"-c{self.args.connections}", f"-d{seconds:g}s", "--timeout", "10s"]
        argv += ["-s", str(script), target.url]
        run = subprocess.run(
            self.kids.command(argv, self.args.load_cpu if pinned else None),
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        for line in run.stdout.splitlines():
            if line.startswith("WRKJSON "):
                result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
                return result
        raise RuntimeError(f"wrk printed no result:\n{run.stdout}\n{run.stderr}")

    def closed_loop(self, target: Target) -> ClosedResult:
        self.wait_quiet(target)
        self.wrk(target, self.args.warmup)
        sut_pids = process_tree(target.sut.pid) if target.sut else []
        sut0, be0 = cpu_seconds(sut_pids), cpu_seconds([target.backend.pid])
        user0, system0 = cpu_split(sut_pids)
        core0 = core_busy(self.args.sut_cpu) if target.sut and not self.args.no_pin else None
        res = self.wrk(target, self.args.duration)
        sut1, be1 = cpu_seconds(sut_pids), cpu_seconds([target.backend.pid])
        user1, system1 = cpu_split(sut_pids)
        core1 = core_busy(self.args.sut_cpu) if core0 is not None else None
        n = max(int(res["requests"]), 1)
        errors = sum(int(res[k]) for k in ("connect", "read", "write", "status", "timeout"))
        out = ClosedResult(
            name=target.name,
            rps=res["requests"] / (res["duration_us"] / 1e6),
            p50_ms=res["p50"] / 1000,
            p90_ms=res["p90"] / 1000,
            p99_ms=res["p99"] / 1000,
            max_ms=res["max"] / 1000,
            requests=n,
            errors=errors,
            sut_cpu_us=(sut1 - sut0) / n * 1e6 if target.sut else None,
            backend_cpu_us=(be1 - be0) / n * 1e6,
            sut_core_busy_pct=(
                (core1 - core0) / (res["duration_us"] / 1e6) * 100
                if core0 is not None and core1 is not None
                else None
            ),
            sut_own_pct=(sut1 - sut0) / (res["duration_us"] / 1e6) * 100,
            load_average=os.getloadavg()[0],
        )
        print(
            f"  closed {out.name:<26} {out.rps:9.0f} req/s  p50 {out.p50_ms:6.2f} ms  "
            f"p99 {out.p99_ms:6.2f} ms  errors {out.errors}  CPU/req "
            f"{out.sut_cpu_us or 0:.0f} µs (user/system {(user1 - user0) / n * 1e6:.0f}/"
            f"{(system1 - system0) / n * 1e6:.0f})  load {out.load_average:.2f}",
            flush=True,
        )
        if res["status"] and target.sut is not None:
            # A gateway past its admission bound answers 503 at once, and wrk sends again at
            # once: CPU per request then mixes cheap refusals with calls.
            print(
                f"    {res['status']} answers were not 200 (refusals under load?): CPU/req is "
                "not the call's; --admission '{\"queue_delay_target_ms\": 0}' keeps the "
                "fixed bound only",
                flush=True,
            )
        return out

    def open_loop(self, target: Target, rate: float, generator: str = "aiohttp") -> dict[str, Any]:
        self.wait_quiet(target)
        sut_pids = process_tree(target.sut.pid) if target.sut else []
        counter: WakeupCounter | None = None
        if self.args.wakeups and target.sut is not None:
            counter = WakeupCounter(target.sut.pid, self.workdir, self.args.load_cpu)
            counter.start()
        own0, core0 = cpu_seconds(sut_pids), core_busy(self.args.sut_cpu)
        wall0 = time.monotonic()
        argv = [sys.executable, __file__, "--role", "openloop", "--url", target.url]
        argv += ["--body-hex", target.body.hex(), "--headers-json", json.dumps(target.headers)]
        argv += ["--rate", str(rate), "--open-duration", str(self.args.open_duration)]
        argv += ["--warmup", str(self.args.warmup), "--generator", generator]
        run = subprocess.run(
            self.kids.command(argv, self.args.load_cpu),
            capture_output=True,
            text=True,
            timeout=self.args.open_duration + self.args.warmup + 120,
            check=True,
        )
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        wall = time.monotonic() - wall0
        own1, core1 = cpu_seconds(sut_pids), core_busy(self.args.sut_cpu)
        result["name"] = target.name
        result["rate"] = rate
        result["load_average"] = os.getloadavg()[0]
        result["sut_own_pct"] = (own1 - own0) / wall * 100
        # CPU per call at a fixed rate: the server's CPU over the whole run (warm-up included)
        # divided by every call sent in it.
        sent_all = max(int(result["sent_total"]), 1)
        result["sut_cpu_us"] = (own1 - own0) / sent_all * 1e6 if target.sut else None
        if core0 is not None and core1 is not None and not self.args.no_pin:
            result["sut_core_busy_pct"] = (core1 - core0) / wall * 100
        if counter is not None:
            result["wakeups"] = counter.stop(sent_all)
        print(
            f"  open   {target.name:<26} {result['achieved_rate']:7.0f} req/s sent  "
            f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
            f"(from due: p99 {result['due_p99_ms']:6.2f} ms)  errors {result['errors']}  "
            f"refused {result['refused']}  CPU/call {result['sut_cpu_us'] or 0:.0f} µs  "
            f"SUT core busy/own {result.get('sut_core_busy_pct', 0):.0f}/"
            f"{result['sut_own_pct']:.0f} %",
            flush=True,
        )
        if counter is not None:
            w = result["wakeups"]
            print(
                "         per call: context switches "
                f"{w['cs_total']:.2f} (loop {w['cs_loop_voluntary']:.2f}+"
                f"{w['cs_loop_involuntary']:.2f}, threads {w['cs_threads_voluntary']:.2f}+"
                f"{w['cs_threads_involuntary']:.2f})  epoll_wait {w.get('epoll_wait', 0):.2f}  "
                f"futex loop/threads {w.get('futex_loop', 0):.2f}/{w.get('futex_threads', 0):.2f}"
                f"  self-pipe writes {w.get('self_pipe_writes', 0):.2f}  "
                f"fsync thread/kernel {w.get('fsync', 0):.3f}/{w.get('io_submit', 0):.3f}  "
                f"CPU user/system {w['user_us']:.0f}/{w['system_us']:.0f} µs",
                flush=True,
            )
            for thread, row in w["per_thread"].items():
                cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if v)
                print(f"           {thread:<28} {cells}", flush=True)
        return result

    def workers_closed(self, target: Target) -> dict[str, Any]:
        """Closed loop against a supervised gateway, load generator unpinned: CPU per call of
        the whole process tree (supervisor and workers), throughput, memory per worker."""
        assert target.sut is not None
        workers = _children_of(target.sut.pid)
        at_rest = {str(pid): memory_kib(pid) for pid in workers}
        self.wrk(target, self.args.warmup, pinned=False)
        tree = process_tree(target.sut.pid)
        cpu0 = cpu_seconds(tree)
        res = self.wrk(target, self.args.duration, pinned=False)
        cpu1 = cpu_seconds(tree)
        n = max(int(res["requests"]), 1)
        errors = sum(int(res[k]) for k in ("connect", "read", "write", "status", "timeout"))
        out = {
            "name": target.name,
            "workers": len(workers),
            "persons": len(target.authorizations) or 1,
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            "p50_ms": res["p50"] / 1000,
            "p99_ms": res["p99"] / 1000,
            "errors": errors,
            "cpu_us": (cpu1 - cpu0) / n * 1e6,
            "load_average": os.getloadavg()[0],
            "memory_at_rest": at_rest,
            "memory_after": {str(pid): memory_kib(pid) for pid in _children_of(target.sut.pid)},
        }
        print(
            f"  closed {target.name:<26} persons {out['persons']:<6} "
            f"{out['rps']:9.0f} req/s  p99 {out['p99_ms']:6.2f} ms  "
            f"CPU/req {out['cpu_us']:.0f} µs (tree)  errors {errors}  "
            f"load {out['load_average']:.2f}",
            flush=True,
        )
        return out

    def overload(self, target: Target, rate: float) -> dict[str, Any]:
        """An open-loop run far past capacity: admitted p99, refusals by kind, memory, survival.

        Both runs use the raw generator: aiohttp's client, at several thousand calls a second
        with new connections, saturates the generator's core and its own loop lag would be
        counted as the server's latency. The unloaded p99 is measured the same way first."""
        assert target.sut is not None
        unloaded = self.open_loop(target, self.args.low_rate or 500.0, "raw")
        before = memory_kib(target.sut.pid)
        result = self.open_loop(target, rate, "raw")
        after = memory_kib(target.sut.pid)
        result["vm_before"] = before
        result["vm_after"] = after
        result["alive"] = target.sut.proc.poll() is None
        result["unloaded"] = unloaded
        result["unloaded_p99_ms"] = unloaded["p99_ms"]
        return result

    def cprofile(self, name: str, argv: list[str], url: str, target: Target) -> dict[str, Any]:
        """A gateway child with cProfile on from its start to SIGTERM, under wrk: where its
        time goes, by function (self time) and by package. With ``--sample`` the child samples
        its stacks instead (StackSampler: no cost per function call, so shares are closer to
        the unprofiled process)."""
        out = Path(self.args.out_dir) / f"{name}.{'folded' if self.args.sample else 'pstats'}"
        child = self.kids.spawn(name, [*argv, "--profile-out", str(out)], self.args.sut_cpu)
        profiled = Target(
            target.name, url.replace("PORT", str(child.port)), target.body, target.headers,
            target.expect, child, target.backend,
        )  # fmt: skip
        try:
            self.wrk(profiled, self.args.duration)
        finally:
            self.kids.stop(child)
        return summarize_folded(out) if self.args.sample else summarize_pstats(out)

    def clients(self, backend: Child) -> list[dict[str, Any]]:
        argv = [sys.executable, __file__, "--role", "clients"]
        argv += ["--backend", f"http://127.0.0.1:{backend.port}"]
        argv += ["--client-seq", str(self.args.client_seq), "--client-total"]
        argv += [str(self.args.client_total)]
        run = subprocess.run(
            self.kids.command(argv, self.args.sut_cpu),
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        rows: list[dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
        return rows

    def profile(self, target: Target, label: str) -> dict[str, Any]:
        assert target.sut is not None
        self.wait_quiet(target)
        out = Path(self.args.out_dir) / f"{label}.folded"
        spy = subprocess.Popen(
            [
                *(self.args.py_spy, "record", "--pid", str(target.sut.pid), "--nonblocking"),
                *("--duration", str(int(self.args.duration)), "--rate", "250"),
                *("--format", "raw", "-o", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self.wrk(target, self.args.duration)
            spy.wait(timeout=self.args.duration + 60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        return summarize_folded(out)


# Where the gateway's CPU goes. Self time: each sample is charged to the package of its
# innermost Python frame (C extensions such as yarl, multidict, lxml and orjson count for the
# Python caller). Inclusive: a sample counts for every function below that is on its stack.
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway (our code)", ("(gateway/",)),
    ("adapters (our code)", ("(adapters/",)),
    ("aiohttp server", ("aiohttp/web", "aiohttp/http_", "aiohttp/base_protocol")),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector")),
    ("aiohttp other", ("aiohttp/",)),
    ("httpx", ("httpx/",)),
    ("httpx_aiohttp", ("httpx_aiohttp/",)),
    ("zeep", ("zeep/",)),
    ("jsonschema (+referencing, rpds)", ("jsonschema/", "referencing/")),
    ("tenacity", ("tenacity/",)),
    ("structlog", ("structlog/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("asyncio", ("asyncio/", "selectors.py")),
)
FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("aiohttp server: RequestHandler.start", "RequestHandler.start (aiohttp"),
    ("aiohttp server: data_received (parsing)", "RequestHandler.data_received (aiohttp"),
    ("aiohttp server: finish_response", "RequestHandler.finish_response (aiohttp"),
    ("asyncio: select/epoll", "select (selectors.py"),
    ("admission_middleware", "admission_middleware (gateway"),
    ("request_middleware (every layer inside admission)", "request_middleware (gateway"),
    ("request_context_middleware", "request_context_middleware (gateway"),
    ("auth_middleware", "auth_middleware (gateway"),
    ("rate_limit_middleware", "rate_limit_middleware (gateway"),
    ("bind_call (data-subject rule)", "bind_call (gateway"),
    ("identity_assertion", "identity_assertion (gateway"),
    ("with_audit: audited", "with_audit.<locals>.audited (gateway"),
    ("CallAuditor (records built + queued)", "CallAuditor."),
    ("AuditWriter task (seal, commit)", "AuditWriter._run (gateway"),
    ("with_timeout: timed", "with_timeout.<locals>.timed (gateway"),
    ("one_attempt (breaker, limit, timeout)", "one_attempt.<locals>.attempt (gateway"),
    ("DevTokenIssuer.verify", "DevTokenIssuer.verify ("),
    ("call_service", "call_service (gateway"),
    ("Route.validate (data schema)", "Route.validate ("),
    ("Route.invoke (pipeline + adapter)", "Route.invoke ("),
    ("tenacity AsyncRetrying", "(tenacity/"),
    ("RestAdapter.call", "RestAdapter.call ("),
    ("RestAdapter.prepare", "RestAdapter.prepare ("),
    ("SoapAdapter.call", "SoapAdapter.call ("),
    ("httpx AsyncClient.send", "AsyncClient.send (httpx"),
    ("httpx_aiohttp handle_async_request", "handle_async_request (httpx_aiohttp"),
    ("aiohttp ClientSession._request", "ClientSession._request ("),
    ("read_limited", "read_limited (adapters"),
    ("zeep (any frame)", "(zeep/"),
    ("jsonschema (any frame)", "(jsonschema/"),
    ("structlog (any frame)", "(structlog/"),
    ("prometheus_client (any frame)", "(prometheus_client/"),
)


def _frame_key(frame: str) -> str:
    # "func (path/to/file.py:123)" → "func (path/to/file.py" without the line number
    head, _, tail = frame.rpartition(":")
    return head if tail.rstrip(")").isdigit() else frame


def _package(frame: str) -> str:
    for name, needles in PACKAGES:
        if any(n in frame for n in needles):
            return name
    return "other"


PSTATS_PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "gateway: audit",
        ("gateway/audit/", "gateway/stores/sqlite_audit", "gateway/stores/sqlite.py"),
    ),
    ("gateway: rate limits (+limits)", ("gateway/ratelimit/", "limits/")),
    ("gateway: other", ("gateway/",)),
    ("adapters", ("adapters/",)),
    ("aiohttp server", ("aiohttp/web", "aiohttp/http_", "aiohttp/base_protocol")),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector")),
    ("aiohttp other", ("aiohttp/", "yarl/", "multidict/")),
    ("zeep + lxml", ("zeep/", "lxml")),
    ("structlog", ("structlog/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("threads (executor, queue, locks)", ("concurrent/futures", "threading.py", "queue.py")),
    ("asyncio", ("asyncio/", "selectors.py")),
)


def summarize_pstats(path: Path, top: int = 20) -> dict[str, Any]:
    """Self time by package and the top functions of a cProfile run; built-ins (C functions)
    count for their own row ('{method ...}'), except select/epoll, which is idle time."""
    import pstats

    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    idle = 0.0
    for (filename, line, func), (_cc, ncalls, tottime, _cum, _callers) in raw.items():
        label = f"{func} ({filename.rsplit('site-packages/', 1)[-1]}:{line})"
        if "poll' of 'select.epoll" in func or "select.epoll" in func:
            idle += tottime
            continue
        rows.append((label, filename, func, ncalls, tottime))
    busy = sum(r[4] for r in rows) or 1.0
    by_package: Counter[str] = Counter()
    for _label, filename, func, _n, tottime in rows:
        where = filename if filename != "~" else func
        for name, needles in PSTATS_PACKAGES:
            if any(needle in where for needle in needles):
                by_package[name] += tottime
                break
        else:
            by_package["C built-ins and other" if filename == "~" else "other"] += tottime
    rows.sort(key=lambda r: r[4], reverse=True)
    return {
        "busy_s": busy,
        "idle_s": idle,
        "by_package": [(n, t / busy * 100) for n, t in by_package.most_common()],
        "top": [(label, n, t / busy * 100) for label, _f, _fn, n, t in rows[:top]],
    }


def summarize_folded(path: Path, top: int = 15) -> dict[str, Any]:
    total = 0
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for label, needle in FUNCTIONS:
            if any(needle in f for f in frames):
                functions[label] += count
    pct = 100.0 / max(total, 1)
    return {
        "samples": total,
        "self_by_package": [(k, round(v * pct, 1)) for k, v in packages.most_common()],
        "inclusive": [(label, round(functions[label] * pct, 1)) for label, _ in FUNCTIONS],
        "self_top": [(k, round(v * pct, 1)) for k, v in own.most_common(top)],
    }


@dataclass
class Report:
    closed: list[ClosedResult] = field(default_factory=list)
    open: list[dict[str, Any]] = field(default_factory=list)
    open_low: list[dict[str, Any]] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_closed: dict[str, dict[str, int]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    proxy_workers: list[dict[str, Any]] = field(default_factory=list)
    """The minimal proxy in 1 and 2 processes, measured like ``workers``."""
    overload: dict[str, Any] = field(default_factory=dict)
    overload_rounds: list[dict[str, Any]] = field(default_factory=list)
    """With ``--only-overload --repeat N``: every round's overload run, each on a fresh gateway."""
    cprofiles: dict[str, Any] = field(default_factory=dict)


async def _check_targets(targets: Sequence[Target]) -> None:
    async with aiohttp.ClientSession() as session:
        for target in targets:
            async with session.post(target.url, data=target.body, headers=target.headers) as r:
                text = await r.read()
                if r.status != 200 or target.expect not in text:
                    raise RuntimeError(f"{target.name}: HTTP {r.status}: {text[:500]!r}")


def _version(argv: list[str]) -> str:
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (run.stdout + run.stderr).strip().splitlines()[0]


def overload_phase(
    args: argparse.Namespace, bench: Bench, report: Report, target: Target
) -> dict[str, Any]:
    closed = next(r for r in report.closed if r.name == target.name)
    # Answered calls only: a closed loop that was refused in part would overstate capacity.
    capacity = closed.rps * (closed.requests - closed.errors) / closed.requests
    rate = args.overload_rate or capacity * args.overload_factor
    print(
        f"overload: {rate:.0f} req/s ({rate / capacity:.1f}× capacity {capacity:.0f} req/s), "
        f"after {args.low_rate or 500:g} req/s unloaded; raw generator",
        flush=True,
    )
    result = bench.overload(target, rate)
    result["capacity"] = capacity
    return result


def admitted_share(o: dict[str, Any]) -> float:
    """Calls answered 200 per second in the overload run, as a share of the closed loop's
    capacity: an overload control that answers faster by taking in fewer calls shows here."""
    if not o.get("capacity") or not o.get("sent") or not o.get("achieved_rate"):
        return float("nan")
    return float(o["ok"]) * float(o["achieved_rate"]) / float(o["sent"]) / float(o["capacity"])


def holder_call_headers() -> dict[str, str]:
    """Headers of a routed call by the holder herself: the subject rule binds the call to her,
    as in production."""
    from gateway.identity.devtokens import DevTokenIssuer

    token = DevTokenIssuer(TOKEN_SECRET).issue(
        "bench-citizen", "L2", person=bench_subject_keys().person(HOLDER_ID).key
    )
    return {**JSON_HEADERS, "Authorization": f"Bearer {token}"}


def run_overload_only(args: argparse.Namespace, tree: str | None = None) -> Report:
    """The routed REST gateway alone: capacity (closed loop), then the overload run; ``tree``:
    the gateway imported from that source tree instead (``--baseline-tree``)."""
    report = Report()
    py = sys.executable
    me = str(Path(__file__).resolve())
    life = ["--max-lifetime", str(args.max_lifetime)]
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as tmp:
        workdir = Path(tmp)
        kids = Children(workdir, pin=not args.no_pin)
        try:
            backend = kids.spawn("backend", [py, me, "--role", "backend", *life], args.backend_cpu)
            upstream = f"http://127.0.0.1:{backend.port}"
            argv = [py, me, "--role", "gateway", "--backend", upstream, "--log-mode", "warning"]
            argv += ["--config-dir", str(workdir / "config-warning"), *life]
            argv += ["--admission", args.admission] if args.admission else []
            argv += ["--tree", str(Path(tree).resolve())] if tree else []
            gateway = kids.spawn("gateway-warning", argv, args.sut_cpu)
            headers = holder_call_headers()
            url = f"http://127.0.0.1:{gateway.port}/api/v1/services/{REST_SERVICE}/calls"
            target = Target(
                "gateway REST (log warning)", url, CALL_BODY, headers, b'"valid":true',
                gateway, backend,
            )  # fmt: skip
            asyncio.run(_check_targets([target]))
            bench = Bench(args, workdir, kids)
            print(f"closed loop: wrk -t1 -c{args.connections} -d{args.duration:g}s", flush=True)
            report.closed.append(bench.closed_loop(target))
            report.memory_closed[gateway.name] = memory_kib(gateway.pid)
            report.overload = overload_phase(args, bench, report, target)
            report.memory[gateway.name] = memory_kib(gateway.pid)
        finally:
            kids.stop_all()
    return report


def served_person_tokens(persons: int) -> tuple[str, ...]:
    """Authorization headers of ``persons`` distinct persons, as the served gateway's
    development tokens (signed with the key ``spawn_supervised`` gives it): each call draws on
    its person's budget, which with many persons is sparse (drawn one unit a call, from the
    store), as under a portal's traffic. One person: none, the printed token as before."""
    if persons <= 1:
        return ()
    from gateway.identity.devtokens import DevTokenIssuer

    issuer = DevTokenIssuer(TOKEN_SECRET)
    return tuple(
        f"Bearer {issuer.issue(f'bench-person-{i}', 'L1', person=f'bench-person-{i}')}"
        for i in range(persons)
    )


def workers_rows(
    bench: Bench, kids: Children, workdir: Path, backend: Child
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`tongban serve --workers 1` and `2`, then the minimal proxy in 1 and 2 processes on one
    port (the same closed loop with no gateway code: what a second process costs per call on
    this machine), each measured by ``Bench.workers_closed``, everything unpinned. With
    ``--persons N`` the served calls are those of N persons in turn (``served_person_tokens``)."""
    py = sys.executable
    me = str(Path(__file__).resolve())
    life = ["--max-lifetime", str(bench.args.max_lifetime)]
    upstream = f"http://127.0.0.1:{backend.port}"
    rest_call = f"/api/v1/services/{REST_SERVICE}/calls"
    gateway_rows: list[dict[str, Any]] = []
    proxy_rows: list[dict[str, Any]] = []
    in_turn = served_person_tokens(bench.args.persons)
    for count in (1, 2):
        config = write_config_dir(workdir / f"served-{count}", upstream)
        served, served_token = kids.spawn_supervised(f"serve-w{count}", config, count)
        first = in_turn[0] if in_turn else f"Bearer {served_token}"
        headers = {**JSON_HEADERS, "Authorization": first}
        target = Target(
            f"serve --workers {count}", f"http://127.0.0.1:{served.port}{rest_call}",
            SERVED_CALL_BODY, headers, b'"valid":true', served, backend, in_turn,
        )  # fmt: skip
        asyncio.run(_check_targets([target]))
        gateway_rows.append(bench.workers_closed(target))
        kids.stop(served)
    for count in (1, 2):
        argv = [py, me, "--role", "minproxy", "--backend", upstream, "--processes", str(count)]
        forked = kids.spawn(f"minproxy-p{count}", [*argv, *life], None)
        target = Target(
            f"minimal proxy, {count} proc.", f"http://127.0.0.1:{forked.port}/api/echo",
            REST_BODY, JSON_HEADERS, HOLDER_ID.encode(), forked, backend,
        )  # fmt: skip
        asyncio.run(_check_targets([target]))
        proxy_rows.append(bench.workers_closed(target))
        kids.stop(forked)
    return gateway_rows, proxy_rows


def run_workers_only(args: argparse.Namespace) -> Report:
    """Only the workers rows (``workers_rows``), ``--repeat`` rounds in turns."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as tmp:
        workdir = Path(tmp)
        kids = Children(workdir, pin=not args.no_pin)
        try:
            py, me = sys.executable, str(Path(__file__).resolve())
            life = ["--max-lifetime", str(args.max_lifetime)]
            backend = kids.spawn("backend", [py, me, "--role", "backend", *life], args.backend_cpu)
            bench = Bench(args, workdir, kids)
            for i in range(max(args.repeat, 1)):
                print(f"workers, round {i + 1}: everything but the back-end unpinned", flush=True)
                gw_rows, proxy_rows = workers_rows(bench, kids, workdir / f"round-{i}", backend)
                report.workers.extend(gw_rows)
                report.proxy_workers.extend(proxy_rows)
        finally:
            kids.stop_all()
    return report


def print_workers_rounds(report: Report) -> None:
    """Per round: CPU per call of 2 processes over 1, the gateway's and the proxy's; medians."""

    def ratios(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
        pairs = zip(rows[0::2], rows[1::2], strict=True)
        return [(two["cpu_us"] / one["cpu_us"], two["rps"] / one["rps"]) for one, two in pairs]

    gw, proxy = ratios(report.workers), ratios(report.proxy_workers)
    persons = report.workers[0].get("persons", 1) if report.workers else 1
    print()
    who = "one person" if persons == 1 else f"{persons} persons in turn"
    print(f"## 2 processes / 1, CPU per call (throughput) by round; the gateway's calls: {who}")
    for i, ((g_cpu, g_rps), (p_cpu, p_rps)) in enumerate(zip(gw, proxy, strict=True), 1):
        print(
            f"  round {i}: gateway {g_cpu:.2f}× ({g_rps:.2f}×)   minimal proxy {p_cpu:.2f}× "
            f"({p_rps:.2f}×)   gateway / proxy {g_cpu / p_cpu:.2f}"
        )
    g_med = statistics.median(c for c, _ in gw)
    p_med = statistics.median(c for c, _ in proxy)
    print(
        f"  median: gateway {g_med:.2f}× (target ≤ 1.1), minimal proxy {p_med:.2f}×, "
        f"gateway / proxy {g_med / p_med:.2f}"
    )


def run_benchmark(args: argparse.Namespace) -> Report:
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx-light util-linux")
    report = Report()
    report.setup = {
        "cpus": os.cpu_count(),
        "pin": not args.no_pin,
        "sut_cpu": args.sut_cpu,
        "load_cpu": args.load_cpu,
        "backend_cpu": args.backend_cpu,
        "duration_s": args.duration,
        "connections": args.connections,
        "rate": args.rate,
        "python": sys.version.split()[0],
        "wrk": _version(["wrk", "-v"]),
        "nginx": _version(["nginx", "-v"]),
    }
    py = sys.executable
    me = str(Path(__file__).resolve())
    life = ["--max-lifetime", str(args.max_lifetime)]
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as tmp:
        workdir = Path(tmp)
        kids = Children(workdir, pin=not args.no_pin)
        try:
            backend = kids.spawn("backend", [py, me, "--role", "backend", *life], args.backend_cpu)
            upstream = f"http://127.0.0.1:{backend.port}"
            minproxy = kids.spawn(
                "minproxy",
                [py, me, "--role", "minproxy", "--backend", upstream, *life],
                args.sut_cpu,
            )
            # The same proxy on uvloop: the floor on the loop the gateway picks when installed.
            minproxy_uv = kids.spawn(
                "minproxy-uvloop",
                [py, me, "--role", "minproxy", "--backend", upstream, "--loop", "uvloop", *life],
                args.sut_cpu,
            )
            nginx_port = free_port()
            conf = workdir / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(tmp=workdir, port=nginx_port, backend_port=backend.port)
            )
            nginx = kids.spawn_nginx(conf, nginx_port, args.sut_cpu)
            gateways: dict[str, Child] = {}
            modes: tuple[str, ...] = ("warning", "buffered", "uvloop")
            if not (args.quick or args.rest_only):
                modes += ("json", "canned")

            def gateway_argv(mode: str) -> list[str]:
                return [
                    *(py, me, "--role", "gateway", "--backend", upstream),
                    *("--log-mode", "json" if mode == "json" else "warning"),
                    *("--config-dir", str(workdir / f"config-{mode}"), *life),
                    *(["--canned"] if mode == "canned" else []),
                    *(["--audit-mode", "buffered"] if mode == "buffered" else []),
                    *(["--admission", args.admission] if args.admission else []),
                    *(["--audit-settings", args.audit_settings] if args.audit_settings else []),
                    *("--loop", "uvloop" if mode == "uvloop" else args.gateway_loop),
                ]

            for mode in modes:
                gateways[mode] = kids.spawn(f"gateway-{mode}", gateway_argv(mode), args.sut_cpu)
            if args.thread_fsync_row:
                argv = [*gateway_argv("warning"), "--fsync-thread"]
                argv[argv.index("--config-dir") + 1] = str(workdir / "config-thread-fsync")
                gateways["thread-fsync"] = kids.spawn("gateway-thread-fsync", argv, args.sut_cpu)
            if args.baseline_tree:
                # The same gateway from another source tree (as it stood before a change), on
                # the loop that tree's `serve` runs: before and after measured side by side.
                argv = gateway_argv("warning")
                argv[argv.index("--config-dir") + 1] = str(workdir / "config-baseline")
                argv[argv.index("--loop") + 1] = "asyncio"
                argv += ["--tree", str(Path(args.baseline_tree).resolve())]
                gateways["baseline"] = kids.spawn("gateway-baseline", argv, args.sut_cpu)
                # and its `buffered` service, for the rows that have one
                argv = gateway_argv("buffered")
                argv[argv.index("--config-dir") + 1] = str(workdir / "config-baseline-buffered")
                argv[argv.index("--loop") + 1] = "asyncio"
                argv += ["--tree", str(Path(args.baseline_tree).resolve())]
                gateways["baseline-buffered"] = kids.spawn(
                    "gateway-baseline-buffered", argv, args.sut_cpu
                )

            call_headers = holder_call_headers()

            def via(child: Child, path: str) -> str:
                return f"http://127.0.0.1:{child.port}{path}"

            rest_expect = HOLDER_ID.encode()
            call_expect = b'"valid":true'
            rest_call = f"/api/v1/services/{REST_SERVICE}/calls"
            soap_call = f"/api/v1/services/{SOAP_SERVICE}/calls"
            direct_rest = Target(
                "direct REST", via(backend, "/api/echo"), REST_BODY, JSON_HEADERS,
                rest_expect, None, backend,
            )  # fmt: skip
            nginx_rest = Target(
                "nginx → REST", via(nginx, "/api/echo"), REST_BODY, JSON_HEADERS,
                rest_expect, nginx, backend,
            )  # fmt: skip
            min_rest = Target(
                "minimal aiohttp proxy → REST", via(minproxy, "/api/echo"), REST_BODY,
                JSON_HEADERS, rest_expect, minproxy, backend,
            )  # fmt: skip
            min_rest_uv = Target(
                MINPROXY_UVLOOP, via(minproxy_uv, "/api/echo"), REST_BODY,
                JSON_HEADERS, rest_expect, minproxy_uv, backend,
            )  # fmt: skip
            gw_rest = Target(
                "gateway REST (log warning)", via(gateways["warning"], rest_call), CALL_BODY,
                call_headers, call_expect, gateways["warning"], backend,
            )  # fmt: skip
            gw_buffered = Target(
                "gateway REST buffered", via(gateways["buffered"], rest_call), CALL_BODY,
                call_headers, call_expect, gateways["buffered"], backend,
            )  # fmt: skip
            gw_uvloop = Target(
                GATEWAY_UVLOOP, via(gateways["uvloop"], rest_call), CALL_BODY,
                call_headers, call_expect, gateways["uvloop"], backend,
            )  # fmt: skip
            extra_targets = []
            if not (args.quick or args.rest_only):
                extra_targets = [
                    Target(
                        "gateway REST (JSON log)", via(gateways["json"], rest_call), CALL_BODY,
                        call_headers, call_expect, gateways["json"], backend,
                    ),
                    Target(
                        "gateway REST (no outbound)", via(gateways["canned"], rest_call),
                        CALL_BODY, call_headers, call_expect, gateways["canned"], backend,
                    ),
                ]  # fmt: skip
            direct_soap = Target(
                "direct SOAP", via(backend, "/soap"), SOAP_BODY, SOAP_HEADERS,
                b"<tns:yxbz>true", None, backend,
            )  # fmt: skip
            gw_soap = Target(
                "gateway SOAP (log warning)", via(gateways["warning"], soap_call), CALL_BODY,
                call_headers, call_expect, gateways["warning"], backend,
            )  # fmt: skip
            targets = [direct_rest, nginx_rest, min_rest, min_rest_uv, gw_rest, gw_buffered]
            targets += [gw_uvloop, *extra_targets, direct_soap, gw_soap]
            if args.thread_fsync_row:
                extra_targets.append(
                    Target(
                        GATEWAY_THREAD_FSYNC, via(gateways["thread-fsync"], rest_call),
                        CALL_BODY, call_headers, call_expect, gateways["thread-fsync"], backend,
                    )
                )  # fmt: skip
            if args.baseline_tree:
                extra_targets.append(
                    Target(
                        GATEWAY_BASELINE, via(gateways["baseline"], rest_call), CALL_BODY,
                        call_headers, call_expect, gateways["baseline"], backend,
                    )
                )  # fmt: skip
                extra_targets.append(
                    Target(
                        GATEWAY_BASELINE_BUFFERED, via(gateways["baseline-buffered"], rest_call),
                        CALL_BODY, call_headers, call_expect, gateways["baseline-buffered"],
                        backend,
                    )
                )  # fmt: skip
            if args.rest_only:
                rows = [min_rest, min_rest_uv, gw_rest, gw_buffered, gw_uvloop, *extra_targets]
                if args.rows:
                    rows = [r for r in rows if any(w in r.name for w in args.rows.split(","))]
                targets = rows * max(args.repeat, 1)
            if args.open_only:
                rows = [direct_rest, min_rest, min_rest_uv, gw_rest, gw_buffered, gw_uvloop]
                rows += extra_targets
                if args.rows:
                    rows = [r for r in rows if any(w in r.name for w in args.rows.split(","))]
                targets = rows
            asyncio.run(_check_targets(targets))
            bench = Bench(args, workdir, kids)
            if args.open_only:
                # Rounds of every row at each rate, interleaved: a change and the tree before it
                # (--baseline-tree) meet the same moments of a shared machine.
                for _ in range(max(args.repeat, 1)):
                    for rate in (r for r in (args.low_rate, args.rate) if r > 0):
                        print(f"open loop: {rate:g} req/s", flush=True)
                        for target in rows:
                            result = bench.open_loop(target, rate)
                            (report.open_low if rate == args.low_rate else report.open).append(
                                result
                            )
                return report

            def profile_rest() -> dict[str, Any]:
                Path(args.out_dir).mkdir(parents=True, exist_ok=True)
                print(f"cProfile → {args.out_dir}", flush=True)
                profiles = {}
                for mode, target in (("warning", gw_rest), ("buffered", gw_buffered)):
                    label = f"cprofile-{mode}"
                    argv = gateway_argv(mode)
                    argv[argv.index("--config-dir") + 1] = str(workdir / f"config-{label}")
                    url = f"http://127.0.0.1:PORT{rest_call}"
                    profiles[target.name] = bench.cprofile(label, argv, url, target)
                return profiles

            print(f"closed loop: wrk -t1 -c{args.connections} -d{args.duration:g}s", flush=True)
            for target in targets:
                report.closed.append(bench.closed_loop(target))

            for child in (*gateways.values(), minproxy, minproxy_uv, backend):
                report.memory_closed[child.name] = memory_kib(child.pid)
            if args.rest_only:
                if args.cprofile:
                    report.cprofiles.update(profile_rest())
                return report
            # The lower rate first: an overloaded gateway keeps working off its backlog.
            if args.low_rate > 0:
                print(f"open loop: {args.low_rate:g} req/s", flush=True)
                for target in (direct_rest, gw_rest, gw_buffered, direct_soap, gw_soap):
                    report.open_low.append(bench.open_loop(target, args.low_rate))
            print(f"open loop: {args.rate:g} req/s for {args.open_duration:g} s", flush=True)
            for target in (
                direct_rest, gw_rest, gw_buffered, nginx_rest, min_rest, direct_soap, gw_soap
            ):  # fmt: skip
                report.open.append(bench.open_loop(target, args.rate))

            if args.overload_factor > 0:
                report.overload = overload_phase(args, bench, report, gw_rest)

            if not args.skip_clients:
                print("outbound clients (client process pinned to the SUT core)", flush=True)
                report.clients = bench.clients(backend)

            if args.workers_phase:
                print("workers: `tongban serve --workers N`, everything unpinned", flush=True)
                gw_rows, proxy_rows = workers_rows(bench, kids, workdir, backend)
                report.workers.extend(gw_rows)
                report.proxy_workers.extend(proxy_rows)

            if args.cprofile:
                report.cprofiles.update(profile_rest())

            if args.py_spy:
                Path(args.out_dir).mkdir(parents=True, exist_ok=True)
                print(f"py-spy profiles → {args.out_dir}", flush=True)
                report.profiles["gateway-rest"] = bench.profile(gw_rest, "gateway-rest")
                report.profiles["gateway-soap"] = bench.profile(gw_soap, "gateway-soap")

            for child in (*gateways.values(), minproxy, minproxy_uv, backend):
                report.memory[child.name] = memory_kib(child.pid)
            report.memory["nginx (master+worker)"] = {
                "VmHWM": sum(memory_kib(p)["VmHWM"] for p in process_tree(nginx.pid)),
                "VmRSS": sum(memory_kib(p)["VmRSS"] for p in process_tree(nginx.pid)),
            }
        finally:
            kids.stop_all()
    return report


# === the report ================================================================================


def _verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        if value >= target:
            return f"MET ({value / target:.2f}× the target)"
        return f"MISSED (needs {target / value:.2f}× more)" if value > 0 else "MISSED"
    if value <= target:
        return "MET"
    return f"MISSED by {value - target:.2f} ms"


def print_report(report: Report, args: argparse.Namespace) -> None:
    closed = {r.name: r for r in report.closed}
    opened = {r["name"]: r for r in report.open}
    print()
    print("## Closed loop (wrk)")
    print(
        f"{'path':<30} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'SUT CPU µs/req':>15} {'back-end CPU µs/req':>20} {'SUT core busy/own %':>20}"
    )
    for r in report.closed:
        sut = f"{r.sut_cpu_us:.0f}" if r.sut_cpu_us is not None else "-"
        busy = (
            f"{r.sut_core_busy_pct:.0f} / {r.sut_own_pct:.0f}"
            if r.sut_core_busy_pct is not None
            else "-"
        )
        print(
            f"{r.name:<30} {r.rps:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.errors:6d} "
            f"{sut:>15} {r.backend_cpu_us:20.0f} {busy:>20}"
        )
    for rate, runs in ((args.rate, report.open), (args.low_rate, report.open_low)):
        if not runs:
            continue
        print()
        print(f"## Open loop at {rate:g} req/s (latency from send; p99 from due time in brackets)")
        print(
            f"{'path':<30} {'sent/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'errors':>6}"
        )
        for o in runs:
            print(
                f"{o['name']:<30} {o['achieved_rate']:7.0f} {o['p50_ms']:7.2f} "
                f"{o['p99_ms']:7.2f} {o['p99.9_ms']:8.2f} {o['errors']:6d}   "
                f"[p99 {o['due_p99_ms']:.2f}]"
            )
    if report.clients:
        print()
        print("## Outbound clients against the same back-end")
        print(f"{'client':<44} {'seq r/s':>8} {'CPU µs':>7} {'c100 r/s':>9} {'CPU µs':>7}")
        for c in report.clients:
            print(
                f"{c['client']:<44} {c['seq_rps']:8.0f} {c['seq_cpu_us']:7.0f} "
                f"{c['conc_rps']:9.0f} {c['conc_cpu_us']:7.0f}"
            )
    if report.memory:
        print()
        print("## Memory (kB): peak RSS (VmHWM) after the closed-loop runs / at the end")
        for name, mem in report.memory.items():
            before = report.memory_closed.get(name, {}).get("VmHWM", 0)
            print(f"{name:<30} {before:>8} / {mem['VmHWM']:>8}   (RSS at the end {mem['VmRSS']})")

    gw = closed["gateway REST (log warning)"]
    gw_json = closed.get("gateway REST (JSON log)")
    ngx = closed["nginx → REST"]
    mini = closed["minimal aiohttp proxy → REST"]
    soap = closed["gateway SOAP (log warning)"]
    added = opened["gateway REST (log warning)"]["p99_ms"] - opened["direct REST"]["p99_ms"]
    added_due = (
        opened["gateway REST (log warning)"]["due_p99_ms"] - opened["direct REST"]["due_p99_ms"]
    )
    added_soap = opened["gateway SOAP (log warning)"]["p99_ms"] - opened["direct SOAP"]["p99_ms"]
    print()
    print("## Ratios and the targets")
    rows = [
        ("routed REST / nginx proxy", gw.rps / ngx.rps, 0.15),
        ("routed REST / minimal aiohttp proxy", gw.rps / mini.rps, 0.6),
        ("routed SOAP / routed REST", soap.rps / gw.rps, 0.5),
    ]
    for label, value, target in rows:
        print(f"{label:<44} {value:6.3f}  target ≥ {target:<5} {_verdict(value, target)}")
    print(
        f"{'added p99 at ' + format(args.rate, 'g') + ' req/s (REST)':<44} {added:6.2f} ms  "
        f"target ≤ 2 ms  {_verdict(added, 2.0, higher_is_better=False)}  "
        f"(from due time: {added_due:.2f} ms)"
    )
    print(f"{'added p99 at ' + format(args.rate, 'g') + ' req/s (SOAP)':<44} {added_soap:6.2f} ms")
    if report.open_low:
        low = {r["name"]: r for r in report.open_low}
        for kind in ("REST", "SOAP"):
            extra = low[f"gateway {kind} (log warning)"]["p99_ms"] - low[f"direct {kind}"]["p99_ms"]
            label = f"added p99 at {args.low_rate:g} req/s ({kind})"
            print(f"{label:<44} {extra:6.2f} ms")
    if gw_json is not None:
        print(
            f"{'JSON access log cost (req/s, warning → info)':<44} "
            f"{gw.rps:.0f} → {gw_json.rps:.0f} ({(gw_json.rps / gw.rps - 1) * 100:+.1f} %), "
            f"CPU {gw.sut_cpu_us or 0:.0f} → {gw_json.sut_cpu_us or 0:.0f} µs/req"
        )
    canned = closed.get("gateway REST (no outbound)")
    if canned is not None:
        print(
            f"{'gateway CPU µs/req: full / no outbound / proxy':<44} "
            f"{gw.sut_cpu_us or 0:.0f} / {canned.sut_cpu_us or 0:.0f} / "
            f"{mini.sut_cpu_us or 0:.0f} "
            f"(outbound part ≈ {(gw.sut_cpu_us or 0) - (canned.sut_cpu_us or 0):.0f} µs)"
        )
    print_targets_report(report, args)
    if report.clients:
        by = {c["client"]: c for c in report.clients}
        base = by["aiohttp"]
        print()
        print("## client layers vs aiohttp's client (CPU per request in the client process)")
        for name in (
            "httpx+AiohttpTransport (post)",
            "open_session post+read_limited",
            "RestAdapter.call",
            "SoapAdapter.call",
        ):
            c = by[name]
            for mode in ("seq", "conc"):
                extra = c[f"{mode}_cpu_us"] / base[f"{mode}_cpu_us"] - 1
                flag = "MORE than 20 %" if extra > 0.2 else "within 20 %"
                print(
                    f"{name:<44} {'sequential' if mode == 'seq' else '100 concurrent':<15} "
                    f"{c[f'{mode}_cpu_us']:6.0f} vs {base[f'{mode}_cpu_us']:4.0f} µs "
                    f"({extra * 100:+.0f} %, {flag})"
                )
    for label, prof in report.profiles.items():
        print_samples(f"py-spy profile of {label}", prof)


def print_samples(title: str, prof: dict[str, Any]) -> None:
    print()
    print(f"## {title} ({prof['samples']} samples, % of samples)")
    print("  self time by package (innermost Python frame):")
    for name, share in prof["self_by_package"]:
        print(f"    {name:<42} {share:5.1f} %")
    print("  inclusive (function on the stack):")
    for name, share in prof["inclusive"]:
        if share:
            print(f"    {name:<42} {share:5.1f} %")
    print("  top self frames:")
    for frame, share in prof["self_top"][:15]:
        print(f"    {share:5.1f} %  {frame}")


def print_repeats(report: Report) -> None:
    """Each row's CPU per call over the rounds of ``--repeat`` (the lowest is the least
    disturbed by other work on the machine)."""
    runs: dict[str, list[ClosedResult]] = {}
    for r in report.closed:
        runs.setdefault(r.name, []).append(r)
    print()
    print("## CPU µs per call by row over the rounds: lowest / median / each (load average)")
    for name, rows in runs.items():
        cpu = sorted(r.sut_cpu_us or 0 for r in rows)
        each = ", ".join(f"{r.sut_cpu_us or 0:.0f} ({r.load_average:.1f})" for r in rows)
        print(f"  {name:<40} {cpu[0]:5.0f} / {cpu[len(cpu) // 2]:5.0f}   {each}")


def print_open_repeats(report: Report) -> None:
    """Each row's open-loop p99 and CPU per call at each rate over the rounds of ``--repeat``."""
    runs: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in (*report.open_low, *report.open):
        runs.setdefault((r["rate"], r["name"]), []).append(r)
    print()
    print("## Open loop by row over the rounds: median p99 ms, median CPU µs per call; each round")
    for (rate, name), rows in sorted(runs.items()):
        p99 = sorted(r["p99_ms"] for r in rows)
        cpu = sorted(r["sut_cpu_us"] or 0 for r in rows)
        each = ", ".join(
            f"{r['p99_ms']:.2f}/{r['sut_cpu_us'] or 0:.0f} ({r['load_average']:.1f})" for r in rows
        )
        print(
            f"  {rate:5.0f} req/s  {name:<30} p99 {p99[len(p99) // 2]:6.2f}  "
            f"CPU {cpu[len(cpu) // 2]:5.0f}   {each}"
        )
    counted = [r for r in (*report.open_low, *report.open) if "wakeups" in r]
    if not counted:
        return
    print()
    print("## Per call at a fixed rate (median over the rounds)")
    keys: tuple[str, ...] = ("cs_total", "cs_loop_voluntary", "cs_threads_voluntary")
    keys += ("epoll_wait", "futex_loop", "futex_threads", "self_pipe_writes", "fsync", "io_submit")
    print(f"  {'rate':>5}  {'row':<30} " + " ".join(f"{k:>20}" for k in keys))
    for (rate, name), rows in sorted(runs.items()):
        with_counts = [r["wakeups"] for r in rows if "wakeups" in r]
        if not with_counts:
            continue
        cells = []
        for key in keys:
            values = sorted(float(w.get(key, 0.0)) for w in with_counts)
            cells.append(f"{values[len(values) // 2]:20.3f}")
        print(f"  {rate:5.0f}  {name:<30} " + " ".join(cells))


def print_targets_report(report: Report, args: argparse.Namespace) -> None:
    """The figures of the performance targets: buffered vs required, CPU per call at a fixed
    rate against the closed loop, several workers, overload, profiles."""
    closed = {r.name: r for r in report.closed}
    mini = closed.get("minimal aiohttp proxy → REST")
    if mini is None or "gateway REST buffered" not in closed:  # --rows left them out
        print_cprofiles(report)
        return
    print()
    print("## Targets of this round (CPU figures are robust on a shared machine; req/s is not)")
    for name in ("gateway REST (log warning)", "gateway REST buffered"):
        r = closed[name]
        by_cpu = (mini.sut_cpu_us or 0) / (r.sut_cpu_us or 1)
        print(
            f"{name:<32} closed: {r.rps:6.0f} req/s = {r.rps / mini.rps:.2f}× proxy; "
            f"CPU {r.sut_cpu_us or 0:.0f} µs vs proxy {mini.sut_cpu_us or 0:.0f} µs "
            f"(proxy/gateway {by_cpu:.2f}; target ≥ 0.6; ≤ 350 µs)  load {r.load_average:.2f}"
        )
    uv, gw_uv = closed.get(MINPROXY_UVLOOP), closed.get(GATEWAY_UVLOOP)
    if uv is not None and gw_uv is not None:
        gw = closed["gateway REST (log warning)"]
        print(
            f"{'by loop, CPU µs per call':<32} minimal proxy asyncio {mini.sut_cpu_us or 0:.0f} "
            f"/ uvloop {uv.sut_cpu_us or 0:.0f}; gateway REST {args.gateway_loop} "
            f"{gw.sut_cpu_us or 0:.0f} / uvloop {gw_uv.sut_cpu_us or 0:.0f}; proxy/gateway on "
            f"asyncio {(mini.sut_cpu_us or 0) / (gw.sut_cpu_us or 1):.2f}, on uvloop "
            f"{(uv.sut_cpu_us or 0) / (gw_uv.sut_cpu_us or 1):.2f}"
        )
    for rate, runs in ((args.low_rate, report.open_low), (args.rate, report.open)):
        by = {o["name"]: o for o in runs}
        direct = by.get("direct REST")
        for name in ("gateway REST (log warning)", "gateway REST buffered"):
            o = by.get(name)
            if o is None or direct is None:
                continue
            cpu = o.get("sut_cpu_us") or 0
            ratio = cpu / (closed[name].sut_cpu_us or 1)
            print(
                f"  {rate:5g} req/s {name:<28} added p99 {o['p99_ms'] - direct['p99_ms']:6.2f} ms "
                f"(p50 {o['p50_ms']:.2f} / p99 {o['p99_ms']:.2f} vs direct "
                f"{direct['p50_ms']:.2f} / {direct['p99_ms']:.2f}); CPU/call {cpu:.0f} µs "
                f"= {ratio:.2f}× closed loop (target ≤ 1.3)  load {o['load_average']:.2f}"
            )
    if report.workers:
        print()
        print("## `tongban serve --workers N` (unpinned; CPU of supervisor + workers per call)")
        for w in report.workers:
            print(
                f"  {w['name']:<22} persons {w.get('persons', 1):<6} "
                f"{w['rps']:7.0f} req/s  p99 {w['p99_ms']:6.2f} ms  "
                f"CPU {w['cpu_us']:5.0f} µs/call  errors {w['errors']}  load "
                f"{w['load_average']:.2f}"
            )
            for pid, mem in w["memory_at_rest"].items():
                after = w["memory_after"].get(pid, {})
                print(
                    f"    worker {pid}: RSS at rest {mem['VmRSS'] / 1024:.0f} MB, after the run "
                    f"{after.get('VmRSS', 0) / 1024:.0f} MB "
                    f"(peak {after.get('VmHWM', 0) / 1024:.0f})"
                )
        if len(report.workers) == 2:
            one, two = report.workers
            print(
                f"  2 workers / 1 worker: CPU per call {two['cpu_us'] / one['cpu_us']:.2f}× "
                f"(target ≤ 1.1), throughput {two['rps'] / one['rps']:.2f}×"
            )
        if len(report.proxy_workers) == 2:
            one, two = report.proxy_workers
            print(
                f"  minimal proxy, 2 processes / 1: CPU per call "
                f"{two['cpu_us'] / one['cpu_us']:.2f}×, throughput {two['rps'] / one['rps']:.2f}× "
                "(the same closed loop with no gateway code: this machine's share of the ratio)"
            )
    if report.overload:
        print_overload(report.overload)
    print_cprofiles(report)


def print_cprofiles(report: Report) -> None:
    for name, prof in report.cprofiles.items():
        if "samples" in prof:
            print_samples(f"stack samples (SIGPROF) of {name}", prof)
            continue
        print()
        print(f"## cProfile of {name} (self time, % of busy; idle in epoll {prof['idle_s']:.1f} s)")
        for package, share in prof["by_package"]:
            print(f"    {package:<40} {share:5.1f} %")
        print("  top functions (self time):")
        for label, calls, share in prof["top"][:15]:
            print(f"    {share:5.1f} %  {calls:>8}  {label}")


def print_overload(o: dict[str, Any]) -> None:
    """The overload run: what was admitted and how fast, what was refused and how, memory."""
    before, after = o["vm_before"], o["vm_after"]
    print()
    print(f"## Overload: {o['rate']:.0f} req/s offered to the routed REST gateway")
    print(
        f"  sent {o['sent']} in the measured span ({o['achieved_rate']:.0f} req/s achieved; "
        f"generator lag max {o['generator_lag_max_ms']:.0f} ms, "
        f"generator CPU {o.get('generator_cpu_pct', float('nan')):.0f} % of its core, "
        f"its GC {o.get('generator_gc_ms', float('nan')):.0f} ms, longest "
        f"{o.get('generator_gc_max_ms', float('nan')):.1f} ms)  load {o['load_average']:.2f}"
    )
    u = o.get("unloaded") or {}
    if u:
        print(
            f"  unloaded ({u['rate']:.0f} req/s): p50 {u['p50_ms']:.2f} / p99 {u['p99_ms']:.2f} ms,"
            f" errors {u['errors']}, refused {u['refused']}  load {u['load_average']:.2f}"
        )
    ratio = o["p99_ms"] / o["unloaded_p99_ms"] if o["unloaded_p99_ms"] > 0 else float("nan")
    print(
        f"  admitted {o['ok']}: p50 {o['p50_ms']:.2f} / p99 {o['p99_ms']:.2f} ms (from due "
        f"p99 {o['due_p99_ms']:.2f}); unloaded p99 {o['unloaded_p99_ms']:.2f} ms → "
        f"{ratio:.2f}× (target ≤ 2×); {admitted_share(o) * 100:.0f} % of the capacity taken in"
    )
    print(
        f"  refused {o['refused']} with 503 gateway.overloaded: p50 "
        f"{o.get('refused_p50_ms', float('nan')):.2f} / p99 "
        f"{o.get('refused_p99_ms', float('nan')):.2f} ms"
    )
    kinds = o.get("error_kinds") or {}
    listed = ", ".join(f"{kind} {count}" for kind, count in kinds.items()) or "none"
    print(f"  errors {o['errors']}: {listed}")
    if "connections_opened" in o:
        print(f"  connections opened by the generator: {o['connections_opened']}")
    print(
        f"  RSS {before['VmRSS'] / 1024:.0f} → {after['VmRSS'] / 1024:.0f} MB; peak before "
        f"{before['VmHWM'] / 1024:.0f} → after {after['VmHWM'] / 1024:.0f} MB "
        f"({(after['VmRSS'] / before['VmHWM'] - 1) * 100:+.1f} % of the normal peak; "
        f"target within 10 %); worker alive: {o['alive']}"
    )


def print_overload_rounds(rounds: Sequence[dict[str, Any]]) -> None:
    """The rounds side by side and their medians: one overload run on a shared machine says
    little, its admitted and unloaded p99 both move with whatever else runs."""

    def ratio(o: dict[str, Any]) -> float:
        unloaded = float(o["unloaded_p99_ms"])
        return float(o["p99_ms"]) / unloaded if unloaded > 0 else float("nan")

    def growth(o: dict[str, Any]) -> float:
        return (float(o["vm_after"]["VmRSS"]) / float(o["vm_before"]["VmHWM"]) - 1) * 100

    print()
    print(f"## Overload: {len(rounds)} rounds, each on a fresh gateway")
    print(
        "round  gateway        offered/s  unloaded p99  admitted p99   ratio  admitted  taken in"
        "  refused  errors   RSS"
    )
    for i, o in enumerate(rounds, 1):
        print(
            f"{i:>5}  {o.get('gateway', 'this tree'):<13}  {o['rate']:>9.0f}"
            f"  {o['unloaded_p99_ms']:>9.2f} ms  {o['p99_ms']:>9.2f} ms"
            f"  {ratio(o):>5.2f}×  {o['ok']:>8}  {admitted_share(o) * 100:>6.0f} %"
            f"  {o['refused']:>7}  {o['errors']:>6}"
            f"  {growth(o):+5.1f} %"
        )
    for label in dict.fromkeys(o.get("gateway", "this tree") for o in rounds):
        mine = [o for o in rounds if o.get("gateway", "this tree") == label]
        print(
            f"{label}: median ratio {statistics.median(ratio(o) for o in mine):.2f}× (target ≤ 2×)"
            f", admitted p99 median {statistics.median(o['p99_ms'] for o in mine):.2f} ms, "
            f"{statistics.median(admitted_share(o) for o in mine) * 100:.0f} % of capacity "
            "taken in; "
            f"errors {sum(o['errors'] for o in mine)}; RSS growth median "
            f"{statistics.median(growth(o) for o in mine):+.1f} % (target within 10 %); "
            f"worker alive in every round: {all(o['alive'] for o in mine)}"
        )


def _jsonable(report: Report) -> dict[str, Any]:
    out = asdict(report)
    out["closed"] = [asdict(r) for r in report.closed]
    return out


# === entry point ===============================================================================


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--rate", type=float, default=1000.0, help="open-loop requests per second")
    p.add_argument("--low-rate", type=float, default=500.0, help="second open-loop rate (0: none)")
    p.add_argument("--open-duration", type=float, default=10.0, help="seconds per open-loop run")
    p.add_argument("--sut-cpu", default="0", help="core(s) of the server under test")
    p.add_argument("--load-cpu", default="1", help="core(s) of wrk and the open-loop generator")
    p.add_argument("--backend-cpu", default="1", help="core(s) of the back-end double")
    p.add_argument("--no-pin", action="store_true", help="let the scheduler place everything")
    p.add_argument("--client-seq", type=int, default=2000, help="sequential client requests")
    p.add_argument("--client-total", type=int, default=6000, help="requests at 100 concurrent")
    p.add_argument("--skip-clients", action="store_true", help="no client micro-benchmark")
    p.add_argument("--py-spy", default=None, help="path to py-spy: profile the gateway too")
    p.add_argument("--cprofile", action="store_true", help="cProfile the gateway (REST)")
    p.add_argument(
        "--sample", action="store_true", help="with --cprofile: sample stacks (SIGPROF) instead"
    )
    p.add_argument("--quick", action="store_true", help="no JSON-log and no-outbound gateways")
    p.add_argument(
        "--overload-factor", type=float, default=3.0, help="overload run at N× capacity (0: none)"
    )
    p.add_argument(
        "--overload-rate", type=float, default=0.0, help="overload run at this rate instead"
    )
    p.add_argument(
        "--only-overload",
        action="store_true",
        help="only what the overload run needs: the routed REST gateway's closed loop "
        "(capacity), then the overload run (its open loop at --low-rate first: unloaded p99)",
    )
    p.add_argument(
        "--only-workers",
        action="store_true",
        help="only `serve --workers 1` and `2` and the minimal proxy in 1 and 2 processes, "
        "--repeat rounds",
    )
    p.add_argument(
        "--persons",
        type=int,
        default=1,
        help="the `serve --workers N` rows' calls come from this many persons in turn (each its "
        "own person budget; 1: one development token, as a single busy person)",
    )
    p.add_argument(
        "--no-workers", dest="workers_phase", action="store_false", help="no serve --workers run"
    )
    p.add_argument(
        "--rest-only",
        action="store_true",
        help="closed loop of the minimal proxies and the routed REST gateways only (iterating)",
    )
    p.add_argument(
        "--open-only",
        action="store_true",
        help="open loop of the back-end direct and the routed REST gateways only, at --low-rate "
        "and --rate, --repeat rounds (iterating on latency)",
    )
    p.add_argument(
        "--gateway-loop",
        default="asyncio",
        choices=("auto", "uvloop", "asyncio"),
        help="server.event_loop of the gateways (the default's; one more row runs on uvloop)",
    )
    p.add_argument(
        "--baseline-tree",
        default="",
        help="with --rest-only, --open-only or --only-overload: also a gateway from this source"
        " tree (before a change)",
    )
    p.add_argument(
        "--rows",
        default="",
        help="with --rest-only or --open-only: only rows whose name holds one of these",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds: of the rows (--rest-only, --open-only), of the whole run (--only-overload)",
    )
    p.add_argument(
        "--wakeups",
        action="store_true",
        help="open loop: count each server's context switches and, under `perf trace -s`, its "
        "epoll_wait, futex and self-pipe calls per call (perf slows system calls: read CPU per "
        "call from a run without it)",
    )
    p.add_argument("--out-dir", default="bench-out", help="where profiles and JSON go")
    p.add_argument("--json-out", default=None, help="write all figures to this JSON file")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="max wait for a quiet machine")
    p.add_argument("--max-lifetime", type=float, default=1800.0, help="children stop after this")
    # internal: the roles of the child processes
    p.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="", help=argparse.SUPPRESS)
    p.add_argument("--log-mode", default="warning", help=argparse.SUPPRESS)
    p.add_argument("--config-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    p.add_argument("--body-hex", default="", help=argparse.SUPPRESS)
    p.add_argument("--headers-json", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--canned", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile-out", default="", help=argparse.SUPPRESS)
    p.add_argument("--audit-mode", default="required", help=argparse.SUPPRESS)
    p.add_argument("--generator", default="aiohttp", help=argparse.SUPPRESS)
    p.add_argument(
        "--admission",
        default="",
        help="the gateways' admission block as JSON (default: the defaults), e.g. "
        "'{\"max_in_flight\": 32}'",
    )
    p.add_argument(
        "--audit-settings",
        default="",
        help="the gateways' audit block as JSON (default: the defaults), e.g. '{\"linger_ms\": 0}'",
    )
    p.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tree", default="", help=argparse.SUPPRESS)
    p.add_argument("--fsync-thread", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--commit-timeout", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--thread-fsync-row",
        action="store_true",
        help="add a row: the routed REST gateway of this tree with the audit's WAL fsync on "
        "its writer thread (as where the kernel's asynchronous fsync is unavailable)",
    )
    return p.parse_args(argv)


def _name_os_threads() -> None:
    """Give each thread of this process its Python name at the OS level too (``prctl``), so
    that per-thread counts (``--wakeups``, ``perf``, ``top -H``) say which thread is which."""
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named(self: threading.Thread) -> None:
        libc.prctl(15, self.name.encode()[:15])  # PR_SET_NAME
        bootstrap(self)

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]


def _fsync_on_a_thread() -> None:
    """The audit store's WAL fsync on its writer thread, as where the kernel's asynchronous
    fsync is unavailable: the same tree measured both ways."""
    from gateway.stores import fsync

    async def unavailable(probe: str) -> None:
        return None

    fsync.KernelFsync.open = unavailable  # type: ignore[method-assign]


def _audit_commit_timeout(seconds: float) -> None:
    """The audit writer's cap on one store call (``WriterSettings.commit_timeout``, 2 s) set to
    ``seconds``: under callgrind on a busy machine one commit can take longer, and the gateway
    then refuses the call (``gateway.audit_unavailable``), as it must. Changes no instruction of
    a call that is not refused."""
    import functools

    from gateway.audit import setup, writer

    capped = functools.partial(writer.WriterSettings, commit_timeout=seconds)
    setattr(setup, "WriterSettings", capped)  # noqa: B010 - the name setup.py builds it by


def _import_from_tree(tree: Path) -> None:
    """Import ``gateway`` and ``adapters`` from ``tree`` instead of the installed checkout."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]
    sys.path.insert(0, str(tree))
    for name in [m for m in sys.modules if m.split(".")[0] in ("gateway", "adapters")]:
        del sys.modules[name]


def _run_loop(main: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: list[dict[str, Any]] = []
    if args.role == "backend":
        asyncio.run(_serve(backend_app(), args.max_lifetime))
        return 0
    if args.role == "minproxy" and args.processes > 0:
        return serve_processes(args.backend, args.processes, args.max_lifetime)
    if args.role == "minproxy":
        serve = _serve(minimal_proxy_app(args.backend), args.max_lifetime)
        if args.loop == "uvloop":
            _run_loop(serve)
        else:
            asyncio.run(serve)
        return 0
    if args.role == "gateway":
        _name_os_threads()
        if args.tree:
            _import_from_tree(Path(args.tree))
        if args.fsync_thread:
            _fsync_on_a_thread()
        if args.commit_timeout > 0:
            _audit_commit_timeout(args.commit_timeout)
        gateway = run_gateway(
            Path(args.config_dir),
            args.backend,
            args.log_mode,
            args.max_lifetime,
            args.canned,
            args.profile_out,
            args.audit_mode,
            args.admission,
            args.audit_settings,
        )
        try:
            from gateway.event_loop import run as run_on_loop
        except ImportError:  # a tree from before the setting: asyncio's loop, as it ran
            return asyncio.run(gateway)
        # The loop server.event_loop names, as a `tongban serve` worker runs it.
        return run_on_loop(gateway, args.loop)
    if args.role == "openloop":
        # uvloop for the generator only: its own jitter is part of both sides of the comparison.
        generate = open_loop_raw if args.generator == "raw" else open_loop
        gc_pauses: list[float] = []
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                gc_pauses.append(time.perf_counter() - gc_started[0])

        # The generator's own cyclic collections stalled it for up to 250 ms at 8,000 calls/s
        # (1.5 s in a 10 s run): it then sent a second's calls at once on hundreds of new
        # connections, a storm of its own making, and read every answer late. Its garbage is
        # collected after the run instead; the pauses are still reported (they should be 0).
        gc.collect()
        gc.freeze()
        gc.disable()
        gc.callbacks.append(on_gc)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = _run_loop(
            generate(
                args.url,
                bytes.fromhex(args.body_hex),
                json.loads(args.headers_json),
                args.rate,
                args.open_duration,
                args.warmup,
            )
        )
        # Past some rate the generator's own core is the bottleneck: its loop then reads the
        # answers late and its latencies are its own. Said beside them, never hidden.
        result["generator_cpu_pct"] = (
            (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
        )
        gc.callbacks.remove(on_gc)
        gc.enable()
        result["generator_gc_max_ms"] = max(gc_pauses, default=0.0) * 1000
        result["generator_gc_ms"] = sum(gc_pauses) * 1000
        print(json.dumps(result))
        return 0
    if args.role == "clients":
        rows = asyncio.run(
            bench_clients(args.backend, args.client_seq, 100, args.client_total, 1000)
        )
        print(json.dumps(rows))
        return 0
    if args.only_overload:
        # Each round starts a fresh gateway: its own capacity, unloaded p99, overload and RSS;
        # with --baseline-tree the baseline's round follows each round of this tree.
        trees = [("this tree", None)]
        trees += [("baseline tree", args.baseline_tree)] if args.baseline_tree else []
        for _ in range(max(args.repeat, 1)):
            for label, tree in trees:
                this = run_overload_only(args, tree)
                this.overload["gateway"] = label
                print_overload(this.overload)
                rounds.append(this.overload)
        report = this
        report.overload_rounds = rounds
        if len(rounds) > 1:
            print_overload_rounds(rounds)
    elif args.only_workers:
        report = run_workers_only(args)
        print_workers_rounds(report)
    elif args.open_only:
        report = run_benchmark(args)
        print_open_repeats(report)
    elif args.rest_only:
        report = run_benchmark(args)
        print_repeats(report)
        print_targets_report(report, args)
    else:
        report = run_benchmark(args)
        print_report(report, args)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(_jsonable(report), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
