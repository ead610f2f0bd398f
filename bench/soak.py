"""Soak: `tongban demo` under mixed traffic at a fraction of its measured capacity.

    .venv/bin/python bench/soak.py --warmup 150     # 10 minutes at 70 % (docs/performance.md)
    .venv/bin/python bench/soak.py --duration 60 --warmup 20 --capacity-seconds 10 \
        --settle 35 --max-rss-growth 25                                          # CI

The demo runs on loopback in two processes: its fakes (every provincial back-end, identity
platform and portal) in one, the gateway in the other (gateway/demo/split.py), so that the RSS
judged is the gateway's own; ``--one-process`` runs `tongban demo` whole instead. Its
configuration is a copy of the demo's with rate limits raised out of the way (the soak measures
the gateway, not its budgets), one provincial system registered for signed callbacks, and SSO
sessions that idle out after ``--session-idle`` seconds (60), so that the session store reaches
its steady state within the warm-up instead of growing for the demo's 75 minutes of idle timeout
and grace. The traffic, one *operation* at a time, each a few HTTP requests:

    login       a browser signs in at the Qinghai portal through the gateway and the platform
    refresh     a refresh-token grant (RFC 6749 §6) of the portal's, from a login's tokens
    rest_call   a routed REST call (S4 housing-fund account, S6 degree verification)
    soap_call   a routed SOAP call (S1 pension contribution history)
    case        a case taken in (S4 housing-fund transfer), then its status read
    callback    the handling system's signed callback on one of those cases
    audit       an auditor's query of the trail, and a citizen's access log

First the capacity is measured: ``--concurrency`` workers run operations back to back for
``--capacity-seconds``. Then operations start at ``--fraction`` of that rate (open loop, evenly
spaced) for ``--duration`` seconds. Every ``--sample`` seconds the gateway process's RSS and
open file descriptors are read from /proc (with ``--memory-probe`` the gateway also dumps its
allocations every minute after the warm-up, gateway/demo/memory_probe.py). At the end the demo
is stopped and `tongban audit verify` runs on its data directory. Reported: operations and HTTP
requests per kind, every 5xx (by answering server, path, problem code and minute), log lines at
error level (and tracebacks) of both processes, RSS growth after ``--warmup``, the descriptors'
range after warm-up, the verifier's verdict. The exit status is 1 when any of these fails: no 5xx,
no error lines, RSS growth under ``--max-rss-growth`` (10 %), descriptors flat (a spread of at
most ``--max-fd-spread``), the chain verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import yaml

from gateway.demo.backends import DemoSecrets
from gateway.demo.federation import DemoIdentitySecrets
from gateway.demo.memory_probe import FRAMES_ENV, PROBE_ENV, diff
from gateway.packaged import DEMO_CONFIG_DIR

TONGBAN = Path(sys.executable).parent / "tongban"
CALLBACK_SYSTEM = "shaanxi-housing"
CALLBACK_ENV = "TONGBAN_SOAK_CALLBACK_KEY"
QINGHAI_PORTAL = "demo-portal-qinghai"
QH_USERS = ("qh-100231", "qh-100232", "qh-100233")
_CASE_ID = re.compile(r"TB\d{2}\d{8}[0-9A-F]+")
_REQUEST_ID = re.compile(r"name='request_id' value='([^']+)'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the demo process -----------------------------------------------------------------------


def soak_config(target: Path, session_idle: int | None = None) -> None:
    """The demo's configuration with rate limits out of the way and one callback system; with
    ``session_idle``, SSO sessions that end after that many idle seconds, kept that long again
    for their logout (``expiry_grace``), swept every 5 s, and logins that must finish within
    it: the session store reaches its steady state within twice ``session_idle``."""
    shutil.copytree(DEMO_CONFIG_DIR, target)
    path = target / "gateway.yaml"
    gateway = yaml.safe_load(path.read_text(encoding="utf-8"))
    gateway["rate_limits"] = {
        "client": "10000000/minute",
        "person": "10000000/minute",
        "store": "memory",
        "endpoints": {
            "token_per_source": "10000000/minute",
            "token_per_client": "10000000/minute",
            "login_per_source": "10000000/minute",
        },
    }
    cases = gateway.setdefault("cases", {})
    cases["callbacks"] = {CALLBACK_SYSTEM: {"secret": {"env": CALLBACK_ENV}}}
    if session_idle is not None:
        session = gateway["identity"].setdefault("session", {})
        session.update(
            idle_timeout=session_idle,
            expiry_grace=session_idle,
            sweep_interval=5,
            login_timeout=session_idle,
        )
    path.write_text(yaml.safe_dump(gateway, allow_unicode=True, sort_keys=False), "utf-8")


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    """The gateway's process (the whole demo's with ``--one-process``): the one measured."""
    base: str
    data_dir: Path
    log: Path
    callback_key: bytes
    fakes: subprocess.Popen[bytes] | None = None
    """The back-ends', platforms' and portals' process, unless ``--one-process``."""
    fakes_log: Path | None = None
    portal: str = ""
    tokens: dict[str, Any] = field(default_factory=dict)
    staff: dict[str, Any] = field(default_factory=dict)
    portal_secret: str = ""


async def start_demo(
    workdir: Path,
    probe: Path | None = None,
    *,
    one_process: bool = False,
    session_idle: int | None = None,
    probe_frames: int = 1,
    arena_max: int | None = None,
) -> Demo:
    """`tongban demo` as one process, or (the default) its fakes and its gateway apart
    (gateway/demo/split.py) so that the RSS measured is the gateway's own."""
    config = workdir / "config"
    soak_config(config, session_idle)
    data_dir = workdir / "data"
    data_dir.mkdir(mode=0o700)
    port = free_port()
    key = secrets.token_urlsafe(32)
    env = {**os.environ, CALLBACK_ENV: key, **DemoSecrets.generate().env()}
    traced = {PROBE_ENV: str(probe), FRAMES_ENV: str(probe_frames)} if probe else {}
    if arena_max is not None:  # glibc: the gateway's malloc arenas (one per thread by default)
        traced["MALLOC_ARENA_MAX"] = str(arena_max)
    log = workdir / "demo.log"
    fakes = fakes_log = None
    handoff = workdir / "handoff.json"
    common = ["--data-dir", str(data_dir), "--config", str(config)]
    if one_process:
        process = _spawn(
            [str(TONGBAN), "demo", "--port", str(port), *common], log, {**env, **traced}
        )
    else:
        fakes_log = workdir / "fakes.log"
        fakes = _spawn(
            [sys.executable, "-m", "gateway.demo.split", "fakes", "--gateway-port", str(port),
             "--handoff", str(handoff), *common],
            fakes_log, env,
        )  # fmt: skip
        for _ in range(300):
            if handoff.exists() or fakes.poll() is not None:
                break
            await asyncio.sleep(0.2)
        if not handoff.exists():
            fakes.kill()
            raise RuntimeError(f"the fakes did not start: {fakes_log.read_text()[-2000:]}")
        process = _spawn(
            [sys.executable, "-m", "gateway.demo.split", "gateway", "--port", str(port),
             "--handoff", str(handoff), *common],
            log, {**env, **traced},
        )  # fmt: skip
    demo = Demo(process, f"http://127.0.0.1:{port}", data_dir, log, key.encode(), fakes, fakes_log)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if process.poll() is not None:
                stop_demo(demo)
                raise RuntimeError(f"the demo exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{demo.base}/healthz") as response:
                    if response.status == 200 and (data_dir / "demo-staff-tokens.json").exists():
                        break
            await asyncio.sleep(0.2)
        else:
            stop_demo(demo)
            raise RuntimeError("the demo did not start")
    await asyncio.sleep(0.5)  # the banner follows the token files
    demo.tokens = json.loads((data_dir / "demo-tokens.json").read_text())
    demo.staff = json.loads((data_dir / "demo-staff-tokens.json").read_text())
    if one_process:
        demo.portal = _portal_url(log.read_text(encoding="utf-8", errors="replace"))
    else:
        portals = json.loads(handoff.read_text(encoding="utf-8"))["identity"]["portals"]
        demo.portal = portals[QINGHAI_PORTAL]
    demo.portal_secret = DemoIdentitySecrets.load_or_create(data_dir).portal_qinghai_secret
    return demo


def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TONGBAN), "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )


def _portal_url(banner: str) -> str:
    for line in banner.splitlines():
        if "Qinghai" in line and (found := re.search(r"(http://127\.0\.0\.1:\d+)/\s*$", line)):
            return found.group(1)
    raise RuntimeError("no Qinghai portal in the demo's banner")


def stop_demo(demo: Demo) -> None:
    """The gateway first (it may still tell the portals of logouts), then the fakes."""
    for process in (demo.process, demo.fakes):
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sample(pid: int) -> tuple[int, int]:
    """RSS in KiB and open file descriptors of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def descriptor_kinds(pid: int) -> dict[str, int]:
    """The open descriptors of ``pid`` by what they are: sockets, pipes, event descriptors, and
    files by their name in the data directory (a count each), to tell a leak from a pool."""
    kinds: Counter[str] = Counter()
    fd_dir = Path(f"/proc/{pid}/fd")
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(("socket:", "pipe:")):
            target = target.split(":", 1)[0]
        elif target.startswith("/"):
            target = Path(target).name
        kinds[target] += 1
    return dict(kinds.most_common())


def log_errors(log: Path) -> list[str]:
    """Lines of the demo's log at error level or above, and tracebacks."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if re.search(r"\[(error|critical)\s*\]|Traceback|\"level\": ?\"(error|critical)\"", line):
            found.append(line[:300])
    return found


# --- the operations -------------------------------------------------------------------------


@dataclass
class Tally:
    operations: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    """Operations that did not reach their end (a 4xx where none was expected, say)."""

    started: float = field(default_factory=time.monotonic)
    """When the soak proper began (after the capacity measurement): 5xx are counted by minute."""
    server_error_minutes: Counter[int] = field(default_factory=Counter)
    refreshes_ended: int = 0
    """Refresh tokens refused because their SSO session had ended (as it should)."""
    server_error_kinds: Counter[str] = field(default_factory=Counter)
    """Every 5xx by operation, answering server, path and problem code."""

    def saw(self, kind: str, status: int, what: str) -> None:
        self.requests[kind] += 1
        self.statuses[status] += 1
        if status >= 500:
            self.server_errors.append(f"{kind}: {status} {what}"[:200])
            self.server_error_kinds[f"{kind}: {status} {what}"[:200]] += 1
            self.server_error_minutes[int((time.monotonic() - self.started) // 60)] += 1


class Traffic:
    def __init__(self, demo: Demo, tally: Tally) -> None:
        self.demo = demo
        self.tally = tally
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
        )
        self.refresh_tokens: list[str] = []
        self.cases: list[tuple[str, int]] = []
        self.redirect_uri = ""
        self.counter = 0
        self.only: frozenset[str] = frozenset()
        """Kinds of operation to run (empty: the whole mix)."""

    async def aclose(self) -> None:
        await self.http.close()

    @property
    def portal_auth(self) -> dict[str, str]:
        secret = self.demo.portal_secret
        return {"Authorization": aiohttp.encode_basic_auth("demo-portal-qinghai", secret)}

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def _send(
        self,
        kind: str,
        method: str,
        url: str,
        session: aiohttp.ClientSession | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        http = session or self.http
        async with http.request(method, url, **kwargs) as response:
            for hop in response.history:
                self.tally.saw(kind, hop.status, str(hop.url.path))
            body: Any = await response.read()
            if response.content_type.endswith("json"):
                body = json.loads(body)
            what = f"{method} {_CASE_ID.sub('{case}', response.url.path)}"
            if response.status >= 500:  # who answered (the gateway or a fake), and its code
                server = "gateway" if str(response.url).startswith(self.demo.base) else "fake"
                code = body.get("code") if isinstance(body, dict) else None
                what = f"{server} {what} {code or response.content_type}"
            self.tally.saw(kind, response.status, what)
            return response.status, body, response

    async def login(self) -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            status, page, response = await self._send(
                "login", "GET", f"{self.demo.portal}/login", browser
            )
            match = _REQUEST_ID.search(page.decode() if isinstance(page, bytes) else "")
            if status != 200 or match is None:
                self.tally.failures["login"] += 1
                return
            form = {"request_id": match.group(1), "user": random.choice(QH_USERS),
                    "password": "demo"}  # fmt: skip
            action = str(response.url.with_path("/authorize").with_query({}))
            status, _, _ = await self._send("login", "POST", action, browser, data=form)
            if status != 200:
                self.tally.failures["login"] += 1
                return
            if len(self.refresh_tokens) < 32:
                await self._portal_tokens(browser)

    async def _portal_tokens(self, browser: aiohttp.ClientSession) -> None:
        """The portal's own code flow on the browser's SSO session: a refresh token to rotate."""
        if not self.redirect_uri:
            async with browser.get(f"{self.demo.portal}/login", allow_redirects=False) as first:
                location = first.headers.get("Location", "")
            self.redirect_uri = parse_qs(urlsplit(location).query).get("redirect_uri", [""])[0]
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        params = {
            "response_type": "code", "client_id": "demo-portal-qinghai",
            "redirect_uri": self.redirect_uri, "scope": "openid services:call",
            "state": secrets.token_urlsafe(12), "code_challenge": challenge,
            "code_challenge_method": "S256", "prompt": "none",
        }  # fmt: skip
        url = f"{self.demo.base}/oauth2/authorize"
        async with browser.get(url, params=params, allow_redirects=False) as response:
            self.tally.saw("refresh", response.status, "GET /oauth2/authorize")
            code = parse_qs(urlsplit(response.headers.get("Location", "")).query).get("code")
        if not code:
            self.tally.failures["refresh"] += 1
            return
        status, body, _ = await self._send(
            "refresh", "POST", f"{self.demo.base}/oauth2/token",
            data={"grant_type": "authorization_code", "code": code[0],
                  "redirect_uri": self.redirect_uri, "code_verifier": verifier},
            headers=self.portal_auth,
        )  # fmt: skip
        if status == 200 and isinstance(body, dict) and body.get("refresh_token"):
            self.refresh_tokens.append(body["refresh_token"])
        else:
            self.tally.failures["refresh"] += 1

    async def refresh(self) -> None:
        if not self.refresh_tokens:
            await self.login()
            return
        token = self.refresh_tokens.pop(0)
        status, body, _ = await self._send(
            "refresh", "POST", f"{self.demo.base}/oauth2/token",
            data={"grant_type": "refresh_token", "refresh_token": token},
            headers=self.portal_auth,
        )  # fmt: skip
        if status == 200 and isinstance(body, dict):
            self.refresh_tokens.append(body["refresh_token"])
        elif status == 400 and isinstance(body, dict) and body.get("error") == "invalid_grant":
            # Its SSO session timed out (--session-idle) and took the grant family with it; a
            # login will bring a new one.
            self.tally.refreshes_ended += 1
        else:
            self.tally.failures["refresh"] += 1

    async def _call(self, kind: str, service: str, body: dict[str, Any]) -> None:
        who = CALLERS[id(body)]  # the example's own caller
        status, _, _ = await self._send(
            kind, "POST", f"{self.demo.base}/api/v1/services/{service}/calls",
            json=body, headers=self.bearer(self.demo.tokens[who]["token"]),
        )  # fmt: skip
        if status != 200:
            self.tally.failures[kind] += 1

    async def rest_call(self) -> None:
        if random.random() < 0.5:
            await self._call("rest_call", "housing-fund-transfer", S4_QUERY)
        else:
            await self._call("rest_call", "degree-verification", S6_VERIFY)

    async def soap_call(self) -> None:
        await self._call("soap_call", "pension-transfer", S1_CALL)

    async def case(self) -> None:
        self.counter += 1
        key = f"soak-{os.getpid()}-{self.counter:08d}"
        status, receipt, _ = await self._send(
            "case", "POST", f"{self.demo.base}/api/v1/cases", json=S4_CASE,
            headers={**self.bearer(self.demo.tokens["citizen-l3"]["token"]),
                     "Idempotency-Key": key},
        )  # fmt: skip
        if status != 202 or not isinstance(receipt, dict):
            self.tally.failures["case"] += 1
            return
        case_id = receipt["case_id"]
        self.cases.append((case_id, 0))
        del self.cases[:-200]
        status, _, _ = await self._send(
            "case", "GET", f"{self.demo.base}/api/v1/cases/{case_id}",
            headers=self.bearer(self.demo.tokens["citizen-l3"]["token"]),
        )  # fmt: skip
        if status != 200:
            self.tally.failures["case"] += 1

    async def callback(self) -> None:
        if not self.cases:
            await self.case()
            return
        index = random.randrange(len(self.cases))
        case_id, sequence = self.cases[index]
        sequence += 1
        self.cases[index] = (case_id, sequence)
        status_value = "done" if sequence >= 3 else "processing"
        raw = json.dumps({"sequence": sequence, "case_id": case_id, "status": status_value,
                          "result": {"soak": True}}).encode()  # fmt: skip
        stamp = str(int(time.time()))
        mac = hmac.new(self.demo.callback_key, stamp.encode() + b"." + raw, hashlib.sha256)
        status, _, _ = await self._send(
            "callback", "POST", f"{self.demo.base}/api/v1/callbacks/{CALLBACK_SYSTEM}",
            data=raw, headers={"Content-Type": "application/json",
                               "X-Tongban-Timestamp": stamp,
                               "X-Tongban-Signature": f"sha256={mac.hexdigest()}"},
        )  # fmt: skip
        if status >= 400 and status != 422:  # a case closed meanwhile: 422 "no such case"
            self.tally.failures["callback"] += 1

    async def audit(self) -> None:
        status, _, _ = await self._send(
            "audit", "GET", f"{self.demo.base}/admin/audit",
            params={"limit": "20", "service": "housing-fund-transfer"},
            headers=self.bearer(self.demo.staff["auditor"]),
        )  # fmt: skip
        if status != 200:
            self.tally.failures["audit"] += 1
        status, _, _ = await self._send(
            "audit", "GET", f"{self.demo.base}/api/v1/me/access-log", params={"limit": "20"},
            headers=self.bearer(self.demo.tokens["citizen-l3"]["token"]),
        )  # fmt: skip
        if status != 200:
            self.tally.failures["audit"] += 1


CALLERS: dict[int, str] = {}
"""The demo token each example call is made with (its own caller: the data is theirs)."""
S4_QUERY: dict[str, Any] = {}
S6_VERIFY: dict[str, Any] = {}
S1_CALL: dict[str, Any] = {}
S4_CASE: dict[str, Any] = {}


def load_examples() -> None:
    """The demo's own example bodies (gateway/demo/examples.py, gateway/demo/cases.py)."""
    from gateway.demo.cases import DEMO_CASES  # noqa: PLC0415 - demo-only module
    from gateway.demo.examples import DEMO_CALLS  # noqa: PLC0415

    calls = {(c.service, c.body.get("operation")): c for c in DEMO_CALLS}
    for target, key in (
        (S1_CALL, ("pension-transfer", "contribution-history")),
        (S4_QUERY, ("housing-fund-transfer", "account-query")),
    ):
        target.update(calls[key].body)
        CALLERS[id(target)] = calls[key].token_key
    s6 = next(c for (svc, _), c in calls.items() if svc == "degree-verification")
    S6_VERIFY.update(s6.body)
    CALLERS[id(S6_VERIFY)] = s6.token_key
    S4_CASE.update(next(body for scenario, _, _, body in DEMO_CASES if scenario == "S4"))


MIX: tuple[tuple[str, float], ...] = (
    ("login", 0.05),
    ("refresh", 0.10),
    ("rest_call", 0.25),
    ("soap_call", 0.20),
    ("case", 0.12),
    ("callback", 0.10),
    ("audit", 0.18),
)


def pick(traffic: Traffic) -> tuple[str, Callable[[], Awaitable[None]]]:
    mix = [(k, w) for k, w in MIX if not traffic.only or k in traffic.only]
    kind = random.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]
    return kind, getattr(traffic, kind)


async def run_one(traffic: Traffic, tally: Tally) -> None:
    kind, operation = pick(traffic)
    try:
        await operation()
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures[kind] += 1
        tally.server_errors.append(f"{kind}: transport {type(exc).__name__}")
    tally.operations[kind] += 1


# --- the run --------------------------------------------------------------------------------


async def measure_capacity(traffic: Traffic, seconds: float, concurrency: int) -> float:
    tally = traffic.tally
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await run_one(traffic, tally)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    load_examples()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="tongban-soak-") as tmp:
        workdir = Path(tmp)
        demo = await start_demo(
            workdir,
            args.memory_probe,
            one_process=args.one_process,
            session_idle=args.session_idle or None,
            probe_frames=args.probe_frames,
            arena_max=args.malloc_arena_max,
        )
        dumps: list[float] = []

        def probe(at: float) -> None:
            """Ask the demo for an allocation dump (once after warm-up, then every minute)."""
            if args.memory_probe is None or at < args.warmup:
                return
            if dumps and at - dumps[-1] < 60 - args.sample / 2:
                return
            dumps.append(at)
            demo.process.send_signal(signal.SIGUSR1)

        tally = Tally()
        traffic = Traffic(demo, tally)
        traffic.only = frozenset(args.only or ())
        samples: list[tuple[float, int, int]] = []
        fakes_rss: list[tuple[float, int]] = []
        try:
            capacity = await measure_capacity(traffic, args.capacity_seconds, args.concurrency)
            rate = capacity * args.fraction
            started = tally.started = time.monotonic()
            end = started + args.duration
            pending: set[asyncio.Task[None]] = set()
            late = 0
            next_sample = started
            n = 0
            while (now := time.monotonic()) < end:
                if now >= next_sample:
                    samples.append((now - started, *sample(demo.process.pid)))
                    if demo.fakes is not None:
                        fakes_rss.append((now - started, sample(demo.fakes.pid)[0]))
                    probe(now - started)
                    next_sample += args.sample
                due = started + n / rate
                if due > now:
                    await asyncio.sleep(min(due - now, 0.05))
                    continue
                n += 1
                if len(pending) >= args.max_in_flight:
                    late += 1
                    continue
                task = asyncio.create_task(run_one(traffic, tally))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=30)
            elapsed = time.monotonic() - started
            samples.append((elapsed, *sample(demo.process.pid)))
            await traffic.http.close()
            await asyncio.sleep(args.settle)  # keep-alive connections close (idle timeout)
            idle = sample(demo.process.pid)
            idle_kinds = descriptor_kinds(demo.process.pid)
        finally:
            await traffic.aclose()
            stop_demo(demo)
        verify = await asyncio.to_thread(audit_verify, demo.data_dir)
        errors = log_errors(demo.log) + (log_errors(demo.fakes_log) if demo.fakes_log else [])
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for kept in (demo.log, demo.fakes_log):
                if kept is not None:
                    shutil.copy(kept, args.keep_logs / kept.name)
    after = [s for s in samples if s[0] >= args.warmup] or samples[-1:]
    rss_start, rss_end = after[0][1], after[-1][1]
    fds = [s[2] for s in after]
    report = {
        "duration_s": round(elapsed, 1),
        "capacity_ops_per_s": round(capacity, 1),
        "fraction": args.fraction,
        "target_ops_per_s": round(rate, 1),
        "achieved_ops_per_s": round(n / elapsed, 1),
        "late_starts": late,
        "operations": dict(tally.operations),
        "http_requests": dict(tally.requests),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors": len(tally.server_errors),
        "server_error_samples": tally.server_errors[:10],
        "server_errors_by_kind": dict(tally.server_error_kinds.most_common()),
        "server_errors_by_minute": {
            str(m): n for m, n in sorted(tally.server_error_minutes.items()) if m >= 0
        },
        "failed_operations": dict(tally.failures),
        "refresh_tokens_ended_with_their_session": tally.refreshes_ended,
        "log_errors": len(errors),
        "log_error_samples": errors[:10],
        "rss_kib_after_warmup": rss_start,
        "rss_kib_end": rss_end,
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2) if rss_start else 0,
        "rss_mib_every_minute": [
            round(rss / 1024, 1) for t, rss, _ in samples if int(t) % 60 < args.sample
        ],
        "measured": "the whole demo" if args.one_process else "the gateway (fakes apart)",
        "fakes_rss_mib_every_minute": [
            round(rss / 1024, 1) for t, rss in fakes_rss if int(t) % 60 < args.sample
        ],
        "open_fds_after_warmup": [min(fds), max(fds)],
        "open_fds_idle_at_end": idle[1],
        "open_fds_idle_at_end_by_kind": idle_kinds,
        "audit_verify": verify.returncode,
        "audit_verify_output": verify.stdout.strip().splitlines()[-1:],
    }
    if args.memory_probe is not None and len(dumps) >= 2:
        report["memory_growth"] = await asyncio.to_thread(
            diff, args.memory_probe, 1, len(dumps), args.probe_top
        )
    report["ok"] = (
        report["server_errors"] == 0
        and report["log_errors"] == 0
        and report["rss_growth_pct"] < args.max_rss_growth
        and idle[1] - min(fds) <= args.max_fd_spread
        and verify.returncode == 0
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--warmup",
        type=float,
        default=150.0,
        help="seconds before RSS growth is counted: past the session store's steady state "
        "(about twice --session-idle)",
    )
    parser.add_argument("--sample", type=float, default=5.0)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--max-rss-growth", type=float, default=10.0)
    parser.add_argument(
        "--max-fd-spread",
        type=int,
        default=16,
        help="most descriptors the idle demo may hold at the end beyond the fewest seen under load",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=35.0,
        help="idle seconds before the end: past twice aiohttp's 15 s keep-alive of pooled "
        "connections to back-ends (its connector sweeps every 15 s, rounded up to a second, and "
        "closes those idle for 15 s: one used just after a sweep goes at the second sweep after "
        "it, some 31 s later), so that the descriptors can be back to their level",
    )
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--only",
        action="append",
        choices=[k for k, _ in MIX],
        help="run only this kind of operation (repeatable), to see where memory goes",
    )
    parser.add_argument(
        "--memory-probe",
        type=Path,
        help="trace the demo's allocations (tracemalloc) and dump them here after warm-up and "
        "every minute; the report then names the sites and object types that grew",
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run `tongban demo` as one process (gateway and fakes) and measure it whole; by "
        "default the fakes run in a process of their own and the gateway's RSS is measured",
    )
    parser.add_argument(
        "--session-idle",
        type=int,
        default=60,
        help="SSO idle timeout (and expiry grace, and login timeout) in seconds, so that the "
        "session store reaches its steady state within the warm-up; 0: the demo's own (900 s "
        "idle, 3600 s grace, longer than any soak)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    parser.add_argument(
        "--probe-frames",
        type=int,
        default=1,
        help="frames kept per traced allocation; 0: no tracing, only object counts and the "
        "split of the RSS (Python, SQLite, malloc), at no cost to the run",
    )
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        help="MALLOC_ARENA_MAX for the gateway's process (glibc gives each thread an arena of "
        "its own, up to eight per core, each keeping the memory freed in it)",
    )
    parser.add_argument("--probe-top", type=int, default=25, help="sites and types reported")
    args = parser.parse_args(argv)
    report = asyncio.run(soak(args))
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print("soak: " + ("passed" if report["ok"] else "FAILED"), file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
