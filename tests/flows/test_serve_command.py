"""`tongban serve` as a real process: development tokens only behind an explicit flag."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo.backends import DemoSecrets
from gateway.demo.federation import DemoIdentitySecrets
from gateway.identity.devtokens import DevTokenIssuer

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.base = f"http://127.0.0.1:{port}"


def _start(config: Path, *extra: str) -> Iterator[Served]:
    port = _free_port()
    env = {
        **os.environ,
        **DemoSecrets.generate().env(),
        **DemoIdentitySecrets.generate().env(),
        "TONGBAN_PAIRWISE_SECRET": "p" * 40,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    served = Served(process, port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(served.base + "/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.TransportError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)  # waits a little, and notices an early exit
            if process.returncode is not None:
                break
    else:
        process.kill()
    if process.returncode is not None:
        _out, err = process.communicate(timeout=10)
        pytest.fail(f"tongban serve did not start: {err[-2000:]}")
    try:
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=10)
        assert process.returncode == 0, f"serve did not stop cleanly on SIGTERM: {err[-2000:]}"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A copy of the repository's configuration, so the stores land in the test's directory."""
    target = tmp_path / "config"
    shutil.copytree(ROOT / "config", target)
    return target


@pytest.fixture
def plain(config: Path) -> Iterator[Served]:
    yield from _start(config)


@pytest.fixture
def with_dev_tokens(config: Path) -> Iterator[Served]:
    yield from _start(config, "--insecure-dev-tokens")


def test_serve_without_the_flag_accepts_no_development_token(plain: Served) -> None:
    forged = DevTokenIssuer().issue("someone", "L3")
    response = httpx.get(
        plain.base + "/api/v1/services", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "client.unauthenticated"


def test_serve_with_the_flag_prints_tokens_that_work(with_dev_tokens: Served) -> None:
    assert with_dev_tokens.process.stdout is not None
    line = ""
    while not line.startswith("dev token L3:"):
        line = with_dev_tokens.process.stdout.readline()
        assert line, "no dev token printed"
    token = line.split(":", 1)[1].strip()
    response = httpx.get(
        with_dev_tokens.base + "/api/v1/services", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200  # the token is accepted
    # The catalogue is the calling client's: a development token's client ("dev-portal") is
    # registered nowhere, so it may call, and sees, nothing.
    assert response.json()["services"] == []
