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


def _start(config: Path, *extra: str, env_extra: dict[str, str] | None = None) -> Iterator[Served]:
    port = _free_port()
    env = {
        **os.environ,
        **DemoSecrets.generate().env(),
        **DemoIdentitySecrets.generate().env(),
        "TONGBAN_PAIRWISE_SECRET": "p" * 40,
        **(env_extra or {}),
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
    deadline = time.monotonic() + 60  # a bound on a hang, not on speed: a loaded machine is slow
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


DEV_KEY = bytes(range(32))


@pytest.fixture
def with_a_given_key(config: Path) -> Iterator[Served]:
    yield from _start(
        config, "--insecure-dev-tokens", env_extra={"TONGBAN_DEV_TOKEN_SECRET": DEV_KEY.hex()}
    )


@pytest.fixture
def plain_with_a_given_key(config: Path) -> Iterator[Served]:
    yield from _start(config, env_extra={"TONGBAN_DEV_TOKEN_SECRET": DEV_KEY.hex()})


def test_with_the_flag_tokens_signed_with_the_given_key_are_accepted(
    with_a_given_key: Served,
) -> None:
    mine = DevTokenIssuer(DEV_KEY).issue("someone", "L3", person="person-1")
    other = DevTokenIssuer().issue("someone", "L3", person="person-1")
    url = with_a_given_key.base + "/api/v1/services"
    assert httpx.get(url, headers={"Authorization": f"Bearer {mine}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 401


def test_without_the_flag_the_given_key_enables_nothing(plain_with_a_given_key: Served) -> None:
    mine = DevTokenIssuer(DEV_KEY).issue("someone", "L3", person="person-1")
    response = httpx.get(
        plain_with_a_given_key.base + "/api/v1/services",
        headers={"Authorization": f"Bearer {mine}"},
    )
    assert response.status_code == 401
    assert response.json()["code"] == "client.unauthenticated"


# --- a start-up that cannot complete: one message, exit 1, never a traceback or a hang ----------


def _run_to_exit(
    config: Path, *args: str, command: str = "serve"
) -> subprocess.CompletedProcess[str]:
    """Run ``tongban`` to its end; a process still alive after 60 s is a hang (a failure)."""
    env = {
        **os.environ,
        **DemoSecrets.generate().env(),
        **DemoIdentitySecrets.generate().env(),
        "TONGBAN_PAIRWISE_SECRET": "p" * 40,
    }
    cli = [sys.executable, "-m", "gateway.cli"]
    argv = [*cli, command, *(["check"] if command == "config" else []), "--config", str(config)]
    try:
        return subprocess.run(
            [*argv, *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: it hangs after a failed start-up")


def test_a_port_in_use_is_one_message(config: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_to_exit(config, "--port", str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("tongban serve: cannot start: ")
    assert "address already in use" in done.stderr


def test_a_store_failing_after_others_opened_exits_instead_of_hanging(config: Path) -> None:
    # The audit store (SQLite, a worker thread) is open when the case store fails to open.
    text = (config / "gateway.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "cases:\n",
        "cases:\n  store: {backend: postgres, dsn: 'postgresql://postgres@127.0.0.1:1/test'}\n",
        1,
    )
    (config / "gateway.yaml").write_text(text, encoding="utf-8")
    done = _run_to_exit(config, "--port", "0")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot start: CaseStoreUnavailable: cannot open the case database" in done.stderr


def test_a_configuration_problem_is_the_message_config_check_prints(config: Path) -> None:
    text = (config / "systems.yaml").read_text(encoding="utf-8")
    typo = text.replace("GetTransferStatus: {}", "GetTransferStatu: {}", 1)
    (config / "systems.yaml").write_text(typo, encoding="utf-8")
    served = _run_to_exit(config, "--port", "0")
    checked = _run_to_exit(config, command="config")
    assert served.returncode == checked.returncode == 1
    assert "Traceback" not in served.stderr
    assert served.stderr == checked.stderr
    assert (
        "systems.yaml: system 'qinghai-si': operations.GetTransferStatu: not an operation of"
        " binding {urn:tongban:demo:si:v1}SocialInsuranceBinding; did you mean"
        " `GetTransferStatus`?" in served.stderr
    )
