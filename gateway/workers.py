"""`tongban serve --workers N`: N worker processes on one port, kept alive by a supervisor.

Why a supervising parent that owns one SO_REUSEPORT socket per worker (docs/operations.md,
"Several workers on one host", has the whole argument):

* The kernel spreads new connections over the N listening sockets by a hash of the
  connection, so the workers share the load evenly; one shared socket would let the first
  worker to wake take a whole burst of connections (asyncio accepts up to its backlog per
  wake-up), and every worker would wake for each connection.
* The parent binds all N sockets and never closes them: a connection the kernel queued on a
  worker's socket survives that worker. When a worker dies it waits in the queue until the
  restarted worker takes the same socket over; with sockets bound by the workers themselves it
  would be reset with the dead worker's socket.
* Port 0 works (the first socket picks the port, the others bind to it), the port is taken
  before any worker starts (a port in use is one message at once), and a reload starts the new
  worker on the very socket of the old one, so no connection is refused during a reload.

Each worker is a fresh interpreter (``python -m gateway.workers``), not a fork: nothing of the
parent's threads, event loop or open stores is copied. It loads the configuration itself,
serves the socket it was given (``--listen-fd``) and reports on a pipe (``--status-fd``) that
it is ready, or why it could not start. Signals:

* SIGTERM / SIGINT: every worker is asked to stop (SIGTERM: it stops accepting, finishes the
  requests in flight, closes its stores and signs its audit chain's head), then the supervisor
  exits 0. A worker still alive after ``STOP_GRACE`` seconds is killed.
* SIGHUP: the configuration is read again; if it has a problem nothing changes (logged as
  ``reload_refused``). Otherwise, worker by worker, a new worker is started on the old one's
  socket and, once it is ready, the old one is asked to stop: the port never stops answering.
* A worker that dies is logged (``worker_died``, with its exit status) and started again
  (``worker_restarted`` once it is ready); one that keeps dying right after start is restarted
  after a growing pause (1 s doubling to 30 s).

What the workers share and what they do not is in ``shared_across_workers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway import event_loop
from gateway.event_loop import EventLoopUnavailable, configured_choice
from gateway.event_loop import run as run_on_loop
from gateway.settings import ConfigError, Settings, load_settings, with_instance_id

log = structlog.get_logger("tongban.workers")

STARTUP_TIMEOUT = 120.0
"""Seconds a worker may take to become ready (it parses every WSDL) before it counts as failed."""
STOP_GRACE = 90.0
"""Seconds a stopping worker may take (aiohttp drains requests for up to 60 s) before SIGKILL."""
QUICK_DEATH = 10.0
"""A worker dying sooner than this after its start is restarted after a growing pause."""
MAX_PAUSE = 30.0
BACKLOG = 1024
DEV_SECRET_ENV = "TONGBAN_DEV_TOKEN_SECRET"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def dev_token_secret(dev_tokens: bool) -> bytes | None:
    """The key that signs the development tokens of all workers: none without
    ``--insecure-dev-tokens``. With it, the key in ``TONGBAN_DEV_TOKEN_SECRET`` (hex, 32 bytes
    or more) when that is set, so that a benchmark or a test can mint tokens of its own (naming
    any person), else a random one. The variable is taken out of this process's environment
    either way, so without the flag it is ignored and no worker inherits it."""
    given = os.environ.pop(DEV_SECRET_ENV, None)
    if not dev_tokens:
        return None
    if not given:
        return secrets.token_bytes(32)
    try:
        key = bytes.fromhex(given)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ValueError(f"{DEV_SECRET_ENV} must be a key of 32 bytes or more, in hex")
    return key


def default_workers() -> int:
    """One worker per core this process may run on (taskset and cpusets respected)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_chain(instance_id: str, slot: int, workers: int) -> str:
    """The audit chain (and instance id) of worker ``slot``: the instance id itself for a single
    worker, ``<instance id>.w<n>`` (n from 1) for several, so each writes a chain of its own."""
    return instance_id if workers == 1 else f"{instance_id}.w{slot + 1}"


def shared_across_workers(settings: Settings, workers: int) -> Settings:
    """The settings as one of ``workers`` processes on one host runs them.

    The workers of one instance must agree on who is signed in and on what each client has
    used of its budget, so a store configured as 'memory' (this process only) is kept in the
    data directory instead: SSO sessions in ``sessions.sqlite``, OIDC codes and tokens in
    ``identity.sqlite``, rate-limit counters in ``ratelimits.sqlite``. SQLite files are shared
    by processes on one host; instances on several hosts share Redis, configured as such and
    left alone here. Everything else is already shared or per worker by design: each worker
    writes its own audit chain (``worker_chain``) into the instance's audit store; the case
    store is shared, with one delivery dispatcher per SQLite data directory (a lock file,
    gateway/http/cases.py) and one per worker on PostgreSQL.
    """
    if workers <= 1:
        return settings
    gateway = settings.gateway
    update: dict[str, Any] = {}
    identity = gateway.identity
    if identity is not None:
        session = identity.session
        if session.store == "memory":
            session = session.model_copy(update={"store": "sqlite"})
        token_store = "sqlite" if identity.token_store == "memory" else identity.token_store
        update["identity"] = identity.model_copy(
            update={"session": session, "token_store": token_store}
        )
    if gateway.rate_limits.store == "memory":
        update["rate_limits"] = gateway.rate_limits.model_copy(update={"store": "sqlite"})
    if not update:
        return settings
    return _replace_gateway(settings, gateway.model_copy(update=update))


def _replace_gateway(settings: Settings, gateway: Any) -> Settings:
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(settings, gateway=gateway)


def memory_stores(settings: Settings) -> list[str]:
    """The stores ``shared_across_workers`` moves from memory into the data directory."""
    moved = []
    identity = settings.gateway.identity
    if identity is not None and identity.session.store == "memory":
        moved.append("identity.session.store")
    if identity is not None and identity.token_store == "memory":
        moved.append("identity.token_store")
    if settings.gateway.rate_limits.store == "memory":
        moved.append("rate_limits.store")
    return moved


def prepare_data_dir(settings: Settings) -> None:
    """Create the data directory and the key files before any worker starts, so that workers
    starting together never each create a different key (blocking: run it off the loop)."""
    from gateway.audit.keys import FileKeyStore  # noqa: PLC0415
    from gateway.identity.keys import SigningKeys  # noqa: PLC0415
    from gateway.identity.provider import KEY_FILE_NAME  # noqa: PLC0415

    data_dir = settings.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    FileKeyStore.load_or_create(data_dir)
    identity = settings.gateway.identity
    if identity is not None:
        SigningKeys.load_or_create(data_dir / KEY_FILE_NAME, identity.algorithms)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on one address with SO_REUSEPORT (port 0: one free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            address = sock.getsockname()  # port 0: the others join the port the first got
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from None
    return sockets


@dataclass(eq=False)
class _Worker:
    slot: int
    chain: str
    process: asyncio.subprocess.Process
    status: asyncio.StreamReader
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """The parent of ``serve --workers N``: sockets, workers, signals (see the module doc)."""

    def __init__(
        self,
        *,
        config_dir: Path,
        settings: Settings,
        workers: int,
        sockets: list[socket.socket],
        dev_secret: bytes | None,
        instance_id: str | None,
        metrics_dir: Path,
    ) -> None:
        self._config_dir = config_dir
        self._settings = settings
        self._count = workers
        self._sockets = sockets
        self._dev_secret = dev_secret
        self._instance_id = instance_id
        self._metrics_dir = metrics_dir
        self._slots: list[_Worker | None] = [None] * workers
        self._all: set[_Worker] = set()
        self._events: asyncio.Queue[tuple[str, _Worker | None]] = asyncio.Queue()
        self._pause = [0.0] * workers
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.generation = 1

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> str | None:
        """Start every worker; None once all are ready, else the first failure's message."""
        spawned = [await self._spawn(slot) for slot in range(self._count)]
        results = await asyncio.gather(*(self._until_ready(w) for w in spawned))
        failures = [message for ok, message in results if not ok]
        for worker in spawned:
            self._slots[worker.slot] = worker
        if failures:
            return failures[0]
        return None

    def listen_for_signals(self) -> None:
        """From before the first worker starts: a signal during start-up waits for ``run``."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._events.put_nowait, ("stop", None))
        loop.add_signal_handler(signal.SIGINT, self._events.put_nowait, ("stop", None))
        loop.add_signal_handler(signal.SIGHUP, self._events.put_nowait, ("reload", None))

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT, reloading on SIGHUP and restarting dead workers."""
        while True:
            kind, worker = await self._events.get()
            if kind == "stop":
                log.info("gateway_stopping", workers=self._count)
                return await self.stop()
            if kind == "reload":
                await self.reload()
            elif worker is not None:
                self._exited(worker)

    async def stop(self) -> int:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        alive = [w for w in self._all if w.process.returncode is None]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        clean = True
        for worker in alive:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    code = await worker.process.wait()
            except TimeoutError:
                log.error("worker_killed", slot=worker.slot, pid=worker.pid, after_s=STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                code = await worker.process.wait()
            clean = clean and code == 0
        return 0 if clean else 1

    async def reload(self) -> None:
        """Read the configuration again and replace the workers one by one (SIGHUP)."""
        log.info("reload_started", generation=self.generation + 1)
        try:
            settings = await asyncio.to_thread(_load, self._config_dir, self._instance_id)
            await asyncio.to_thread(prepare_data_dir, settings)
        except ConfigError as exc:
            log.error("reload_refused", problems=len(exc.problems), first=exc.problems[0])
            return
        except Exception as exc:
            log.error("reload_refused", reason=f"{type(exc).__name__}: {exc}")
            return
        self._settings = settings
        for slot in range(self._count):
            new = await self._spawn(slot)
            ok, message = await self._until_ready(new)
            if not ok:
                log.error("reload_failed", slot=slot, reason=message)
                await self._retire(new)
                return
            old, self._slots[slot] = self._slots[slot], new
            if old is not None:
                await self._retire(old, wait=False)
        self.generation += 1
        log.info("reload_completed", generation=self.generation, workers=self._count)

    # --- one worker ---------------------------------------------------------------------------

    async def _spawn(self, slot: int) -> _Worker:
        listen = self._sockets[slot]
        chain = worker_chain(self._settings.gateway.instance_id, slot, self._count)
        read_end, write_end = os.pipe()
        env = {**os.environ, METRICS_DIR_ENV: str(self._metrics_dir)}
        if self._dev_secret is not None:
            env[DEV_SECRET_ENV] = self._dev_secret.hex()
        argv = [
            sys.executable,
            "-m",
            "gateway.workers",
            "--config",
            str(self._config_dir),
            "--chain",
            chain,
            "--workers",
            str(self._count),
            "--listen-fd",
            str(listen.fileno()),
            "--status-fd",
            str(write_end),
            "--parent",
            str(os.getpid()),
        ]
        if self._dev_secret is not None:
            argv.append("--insecure-dev-tokens")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(listen.fileno(), write_end), env=env
            )
        finally:
            os.close(write_end)
        status = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(status), os.fdopen(read_end, "rb")
        )
        worker = _Worker(slot, chain, process, status)
        self._all.add(worker)
        watcher = asyncio.create_task(self._watch(worker))
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)
        return worker

    async def _watch(self, worker: _Worker) -> None:
        await worker.process.wait()
        self._events.put_nowait(("exited", worker))

    async def _until_ready(self, worker: _Worker) -> tuple[bool, str]:
        """Wait for the worker's report: ready, or the message of its failed start."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    line = await worker.status.readline()
                    if not line:
                        code = await worker.process.wait()
                        return False, f"tongban serve: worker exited with status {code}"
                    report = json.loads(line)
                    if "ready" in report:
                        worker.ready = True
                        return True, ""
                    if "failed" in report:
                        return False, str(report["failed"])
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            return False, f"tongban serve: a worker was not ready after {STARTUP_TIMEOUT:.0f} s"

    async def _retire(self, worker: _Worker, *, wait: bool = True) -> None:
        worker.retiring = True
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        if wait:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await worker.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def _exited(self, worker: _Worker) -> None:
        self._all.discard(worker)
        _mark_dead(worker.pid, self._metrics_dir)
        code = worker.process.returncode
        if self._stopping:
            return
        if worker.retiring:
            log.info("worker_retired", slot=worker.slot, pid=worker.pid, status=code)
            return
        if self._slots[worker.slot] is not worker:
            return
        lived = time.monotonic() - worker.started
        log.warning(
            "worker_died",
            slot=worker.slot,
            pid=worker.pid,
            status=code,
            signal=signal.Signals(-code).name if code is not None and code < 0 else None,
            lived_s=round(lived, 1),
        )
        pause = self._pause[worker.slot]
        pause = min(max(pause * 2, 1.0), MAX_PAUSE) if lived < QUICK_DEATH else 0.0
        self._pause[worker.slot] = pause
        task = asyncio.create_task(self._restart(worker.slot, pause))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self, slot: int, pause: float) -> None:
        if pause:
            await asyncio.sleep(pause)
        worker = await self._spawn(slot)
        self._slots[slot] = worker
        ok, message = await self._until_ready(worker)
        if ok:
            log.warning("worker_restarted", slot=slot, pid=worker.pid, after_s=pause)
        else:
            log.error("worker_restart_failed", slot=slot, reason=message)


def _mark_dead(pid: int, metrics_dir: Path) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back)."""
    from prometheus_client import multiprocess  # noqa: PLC0415

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]


def _load(config_dir: Path, instance_id: str | None) -> Settings:
    settings = load_settings(config_dir)
    return with_instance_id(settings, instance_id) if instance_id is not None else settings


async def run_workers(
    *,
    config_dir: Path,
    host: str | None,
    port: int | None,
    dev_tokens: bool,
    workers: int,
    instance_id: str | None = None,
) -> int:
    """``tongban serve``: the supervisor's whole life; exit status 0 after a clean stop."""
    from gateway.identity.devtokens import DevTokenIssuer  # noqa: PLC0415
    from gateway.logs import configure_logging  # noqa: PLC0415
    from gateway.serve import print_dev_tokens, startup_failure  # noqa: PLC0415

    try:
        dev_secret = dev_token_secret(dev_tokens)
    except ValueError as exc:
        print(f"tongban serve: {exc}", file=sys.stderr)
        return 1
    try:
        settings = await asyncio.to_thread(_load, config_dir, instance_id)
        for slot in range(workers):  # every worker's chain must be a valid instance id
            with_instance_id(settings, worker_chain(settings.gateway.instance_id, slot, workers))
    except ConfigError as exc:
        print(exc.report(config_dir), file=sys.stderr)
        return 1
    try:
        event_loop.resolve(settings.gateway.server.event_loop)
    except event_loop.EventLoopUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    configure_logging(settings.gateway.logging.level, settings.gateway.logging.format)
    server = settings.gateway.server
    metrics_dir = Path(tempfile.mkdtemp(prefix="tongban-metrics-"))
    sockets: list[socket.socket] = []
    try:
        await asyncio.to_thread(prepare_data_dir, settings)
        sockets = listening_sockets(
            host or server.host, port if port is not None else server.port, workers
        )
        supervisor = Supervisor(
            config_dir=config_dir,
            settings=settings,
            workers=workers,
            sockets=sockets,
            dev_secret=dev_secret,
            instance_id=instance_id,
            metrics_dir=metrics_dir,
        )
        supervisor.listen_for_signals()
        failure = await supervisor.start()
        if failure is not None:
            await supervisor.stop()
            print(failure, file=sys.stderr)
            return 1
        if dev_secret is not None:
            log.warning("insecure_dev_tokens_enabled")
            print_dev_tokens(DevTokenIssuer(dev_secret))
        for moved in memory_stores(settings) if workers > 1 else []:
            log.info("memory_store_shared", setting=moved, store="sqlite", workers=workers)
        log.info("workers_started", workers=workers, port=supervisor.port, pid=os.getpid())
        return await supervisor.run()
    except Exception as exc:
        print(f"tongban serve: cannot start: {startup_failure(exc)}", file=sys.stderr)
        return 1
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


# --- the worker process -----------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the supervisor dies (Linux PR_SET_PDEATHSIG), so no orphan keeps
    serving; if the supervisor is already gone, stop at once."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        raise SystemExit(1)


def worker_main(argv: Sequence[str] | None = None) -> int:
    from gateway.serve import WorkerRole, run_serve  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m gateway.workers")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--chain", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--insecure-dev-tokens", action="store_true")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    listen = socket.socket(fileno=args.listen_fd)
    status = os.fdopen(args.status_fd, "w", buffering=1, encoding="utf-8")

    def tell(message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            status.write(json.dumps(message) + "\n")
            status.flush()

    secret = os.environ.pop(DEV_SECRET_ENV, None)
    role = WorkerRole(
        listen=listen,
        on_started=lambda port: tell({"ready": port}),
        shared=lambda settings: shared_across_workers(settings, args.workers),
        dev_secret=bytes.fromhex(secret) if secret else None,
    )
    serving = run_serve(
        config_dir=args.config,
        host=None,
        port=None,
        dev_tokens=args.insecure_dev_tokens,
        instance_id=args.chain,
        role=role,
        report=lambda message: tell({"failed": message}),
    )
    try:
        # The loop server.event_loop names (read before the configuration is loaded in it).
        code = run_on_loop(serving, configured_choice(args.config))
    except EventLoopUnavailable as exc:
        tell({"failed": str(exc)})
        code = 1
    status.close()
    return code


if __name__ == "__main__":
    sys.exit(worker_main())
