"""`tongban serve --workers 2` as real processes: one port, a dead worker restarted, reload on
SIGHUP, every worker stopped on SIGTERM, one case dispatcher for the SQLite data directory."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit.query import AuditQuery
from gateway.audit.store import StoredRecord
from gateway.demo.backends import DemoSecrets
from gateway.demo.federation import DemoIdentitySecrets
from gateway.stores.sqlite_audit_files import SqliteAuditFiles

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0


class Supervised:
    """The supervisor process, its log lines (JSON, read by a thread) and its dev tokens."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.tokens: dict[str, str] = {}
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for(lambda line: line.get("event") == "workers_started")
        self.base = f"http://127.0.0.1:{started['port']}"

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                if raw.startswith("dev token "):
                    level, _, token = raw.removeprefix("dev token ").partition(":")
                    self.tokens[level] = token.strip()
                elif raw.startswith("{"):
                    self.lines.append(json.loads(raw))
                self._changed.notify_all()

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], after: int = 0, count: int = 1
    ) -> dict[str, Any]:
        """The ``count``-th log line from position ``after`` on that ``match`` es."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while True:
                found = [line for line in self.lines[after:] if match(line)]
                if len(found) >= count:
                    return found[count - 1]
                if self.process.poll() is not None and not self._reader.is_alive():
                    pytest.fail(f"the supervisor exited ({self.process.returncode})")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no such log line after {WAIT} s: {self.lines[after:][-20:]}")
                self._changed.wait(left)

    def close(self) -> None:
        self._reader.join(timeout=WAIT)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def events(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        with self._changed:
            return [line for line in self.lines[after:] if line.get("event") == name]

    def workers(self) -> set[int]:
        """Process ids of the supervisor's children."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def get(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens['L2']}", "Connection": "close"}
        return httpx.get(self.base + path, headers=headers, timeout=10)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        **DemoSecrets.generate().env(),
        **DemoIdentitySecrets.generate().env(),
        "TONGBAN_PAIRWISE_SECRET": "p" * 40,
    }


@pytest.fixture
def config(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(ROOT / "config", target)
    return target


@pytest.fixture
def supervised(config: Path) -> Iterator[Supervised]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--workers",
            "2",
            "--insecure-dev-tokens",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    served: Supervised | None = None
    try:
        served = Supervised(process)
        yield served
    finally:
        if process.poll() is None:
            process.kill()  # the workers follow it (they die with their parent)
            process.wait(timeout=10)
        if served is not None:
            served.close()
        elif process.stdout is not None:
            process.stdout.close()


def _answering_workers(served: Supervised, calls: int, after: int) -> set[str]:
    """Make ``calls`` calls, each on a new connection; which workers answered them."""
    for _ in range(calls):
        response = served.get("/api/v1/services")
        assert response.status_code == 200, response.text  # one dev-token key for all workers
    served.wait_for(lambda line: line.get("route") == "/api/v1/services", after, count=calls)
    return {
        line["worker"]
        for line in served.events("request_completed", after)
        if line.get("route") == "/api/v1/services"
    }


def _requests_counted(served: Supervised) -> float:
    text = served.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tongban_http_requests_total{")
        and 'route="/api/v1/services"' in line
        and 'status="200"' in line
    )


def _dispatcher_lock_is_held(config: Path) -> bool:
    data_dir = config.parent / ".tongban-data"  # data_dir: ../.tongban-data in gateway.yaml
    fd = os.open(data_dir / "cases.db.dispatcher.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_workers_share_the_port_survive_a_kill_reload_and_stop(
    supervised: Supervised, config: Path
) -> None:
    served = supervised
    first = served.workers()
    assert len(first) == 2
    # Each worker writes its own audit chain; the memory stores are shared files.
    chains = {line["chain"] for line in served.events("audit_writer_started")}
    assert chains == {"gw-1.w1", "gw-1.w2"}
    assert {line["setting"] for line in served.events("memory_store_shared")} == {
        "identity.session.store",
        "rate_limits.store",
    }

    # One port, both workers answering (the kernel spreads new connections over them).
    assert _answering_workers(served, 40, after=0) == {"gw-1.w1", "gw-1.w2"}
    # /metrics, whichever worker answers it, counts the calls of both.
    assert _requests_counted(served) == 40

    # One case dispatcher for the SQLite data directory: one elected, one standing by.
    served.wait_for(lambda line: line.get("event") == "case_dispatcher_standby")
    elected = served.events("case_dispatcher_elected")
    assert len(elected) == 1
    assert _dispatcher_lock_is_held(config)

    # kill -9 the dispatching worker: it is said in the log, restarted, and the other one
    # takes the dispatcher over.
    victim = elected[0]["pid"]
    mark = len(served.lines)
    os.kill(victim, signal.SIGKILL)
    died = served.wait_for(lambda line: line.get("event") == "worker_died", mark)
    assert died["pid"] == victim
    assert died["signal"] == "SIGKILL"
    restarted = served.wait_for(lambda line: line.get("event") == "worker_restarted", mark)
    successor = served.wait_for(lambda line: line.get("event") == "case_dispatcher_elected", mark)
    assert successor["pid"] != victim
    after_kill = served.workers()
    assert len(after_kill) == 2
    assert victim not in after_kill
    assert restarted["pid"] in after_kill
    assert _answering_workers(served, 20, after=len(served.lines)) <= {"gw-1.w1", "gw-1.w2"}
    # The dead worker's counts stay in the totals.
    assert _requests_counted(served) == 60

    # A configuration with a problem is not loaded: the same workers go on.
    systems = config / "systems.yaml"
    good = systems.read_text(encoding="utf-8")
    systems.write_text(good.replace("protocol: soap", "protocol: smtp", 1), encoding="utf-8")
    mark = len(served.lines)
    served.process.send_signal(signal.SIGHUP)
    served.wait_for(lambda line: line.get("event") == "reload_refused", mark)
    assert served.workers() == after_kill
    systems.write_text(good, encoding="utf-8")

    # SIGHUP reloads: new workers with the new configuration (no access lines at 'warning').
    gateway_yaml = config / "gateway.yaml"
    text = gateway_yaml.read_text(encoding="utf-8")
    gateway_yaml.write_text(text.replace("level: info", "level: warning", 1), encoding="utf-8")
    mark = len(served.lines)
    served.process.send_signal(signal.SIGHUP)
    served.wait_for(lambda line: line.get("event") == "reload_completed", mark)
    served.wait_for(lambda line: line.get("event") == "worker_retired", mark, count=2)
    reloaded = served.workers()
    assert len(reloaded) == 2
    assert not reloaded & after_kill
    mark = len(served.lines)
    for _ in range(10):
        assert served.get("/api/v1/services").status_code == 200
    assert _requests_counted(served) == 70
    assert served.events("request_completed", mark) == []  # the new level is in force

    # SIGTERM stops every worker, then the supervisor, cleanly.
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=WAIT) == 0
    for pid in reloaded:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)

    # Every worker's chain, replaced and killed ones included, verifies.
    verified = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain gw-1.w1" in verified.stdout
    assert "chain gw-1.w2" in verified.stdout
    # ... each in its worker's own file (none in the single process's audit.sqlite).
    data_dir = config.parent / ".tongban-data"
    assert _audit_chains(data_dir) == {
        "audit.gw-1.w1.sqlite": {"gw-1.w1"},
        "audit.gw-1.w2.sqlite": {"gw-1.w2"},
    }

    # A restart with one worker writes audit.sqlite; the workers' files are still read.
    gateway_yaml.write_text(text, encoding="utf-8")  # back to info: its start is logged
    _serve_one_worker_briefly(config)
    assert _audit_chains(data_dir) == {
        "audit.sqlite": {"gw-1"},
        "audit.gw-1.w1.sqlite": {"gw-1.w1"},
        "audit.gw-1.w2.sqlite": {"gw-1.w2"},
    }
    assert asyncio.run(_paged_query(data_dir)) >= 3
    verified = _tongban("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for chain in ("gw-1", "gw-1.w1", "gw-1.w2"):
        assert f"chain {chain}:" in verified.stdout
    # The export reads every file; a backup copies them as one snapshot; both verify.
    export = config.parent / "export.jsonl"
    exported = _tongban("audit", "export", "--config", str(config), "--out", str(export))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "gw-1.w1 1.." in exported.stdout
    assert "gw-1.w2 1.." in exported.stdout
    assert _tongban("audit", "verify", "--file", str(export)).returncode == 0
    backup = config.parent / "backup"
    assert (
        _tongban("audit", "backup", "--config", str(config), "--out", str(backup)).returncode == 0
    )
    # The signing keys come along (the copy verifies as it is), every file private.
    copies = sorted(p.name for p in backup.iterdir())
    assert "audit-signing-keys.jwks" in copies
    assert all(p.stat().st_mode & 0o077 == 0 for p in backup.iterdir()), copies
    verified = _tongban("audit", "verify", "--data-dir", str(backup))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "3 chain(s)" in verified.stdout


async def _paged_query(data_dir: Path) -> int:
    """The admin API's query over the three files, a page of 7 at a time in both orders: every
    record of every chain once, in (time, chain, sequence) order. How many records."""
    store = SqliteAuditFiles(data_dir)
    await store.open()
    try:
        everything = [
            r for chain in await store.chains() async for p in store.read_pages(chain) for r in p
        ]
        for oldest_first in (True, False):
            found: list[StoredRecord] = []
            after = None
            while True:
                page = await store.query(
                    AuditQuery(limit=7, oldest_first=oldest_first, after=after)
                )
                found += page.records
                if page.next is None:
                    break
                after = page.next
            key = [(r.time, r.chain, r.sequence) for r in found]
            assert key == sorted(key, reverse=not oldest_first)
            assert sorted(key) == sorted((r.time, r.chain, r.sequence) for r in everything)
    finally:
        await store.aclose()
    return len(everything)


def _tongban(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT,
        check=False,
    )


def _audit_chains(data_dir: Path) -> dict[str, set[str]]:
    """Per audit file of the data directory, the chains with records in it."""
    found = {}
    for path in sorted(data_dir.glob("audit*.sqlite")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT DISTINCT chain_id FROM audit_records").fetchall()
        finally:
            conn.close()
        found[path.name] = {row[0] for row in rows}
    return found


def _serve_one_worker_briefly(config: Path) -> None:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*command, "--port", "0", "--workers", "1", "--insecure-dev-tokens"],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    served: Supervised | None = None
    try:
        served = Supervised(process)
        assert served.get("/api/v1/services").status_code == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()  # its worker follows it
            process.wait(timeout=10)
        if served is not None:
            served.close()
        elif process.stdout is not None:
            process.stdout.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
