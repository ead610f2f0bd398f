"""Installed, not only cloned: the wheel built from this tree, installed into a fresh virtual
environment outside the repository, runs `tongban demo` from another folder until /readyz
answers, and `tongban init` writes a configuration that `tongban config check` accepts.

pip builds the wheel in its isolated build environment and installs the dependencies from the
package index (PyPI, through pip's cache when it has them); nothing else leaves the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 600


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the fresh environment's bin directory, the wheel, a clean environment for commands)."""
    base = tmp_path_factory.mktemp("installed")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TONGBAN_", "PYTHON", "VIRTUAL_ENV"))
    }
    dist = base / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT, cwd=base,
         env=env)  # fmt: skip
    (wheel,) = dist.glob("tongban_gateway-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=base, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=base, env=env)
    return venv / "bin", wheel, env


def test_the_wheel_carries_the_demo_configuration_and_an_spdx_licence(
    installed: tuple[Path, Path, dict[str, str]],
) -> None:
    _bin, wheel, _env = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = archive.read(metadata).decode()
    shipped = {
        path.relative_to(ROOT / "config").as_posix()
        for path in (ROOT / "config").rglob("*")
        if path.is_file()
    }
    missing = {p for p in shipped if f"gateway/demo/config/{p}" not in names}
    assert not missing, f"config/ files left out of the wheel: {sorted(missing)}"
    assert "gateway/starter/template/gateway.yaml" in names
    assert "License-Expression: Apache-2.0" in fields.splitlines()


def test_demo_runs_from_any_folder_after_install(
    installed: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, _wheel, env = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The gateway comes from the fresh environment, not from this checkout.
    location = _run(bin_dir / "python", "-c", "import gateway; print(gateway.__file__)",
                    cwd=elsewhere, env=env)  # fmt: skip
    assert Path(location.strip()).is_relative_to(bin_dir.parent)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(bin_dir / "tongban"), "demo", "--port", str(port), "--data-dir", "demo-data"],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    status = r.status
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)  # noqa: TID251 - a subprocess is starting; no event loop here
        assert status == 200, f"/readyz never answered (exit {process.poll()})"
        assert (elsewhere / "demo-data" / "audit.sqlite").exists()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _out, errors = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, errors = process.communicate()
    assert process.returncode == 0, errors[-2000:]


def test_init_writes_a_configuration_that_passes_config_check(
    installed: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, _wheel, env = installed
    tongban = bin_dir / "tongban"
    target = tmp_path / "deployment"
    report = _run(tongban, "init", target, cwd=tmp_path, env=env)
    assert "FILL IN" in report
    assert "export TONGBAN_PAIRWISE_SECRET=..." in report
    _run(tongban, "config", "check", "--config", target, "--no-secrets", cwd=tmp_path, env=env)
    # Every secret it names, exported: the whole check passes too.
    names = [line.split()[1].split("=")[0] for line in report.splitlines()
             if line.strip().startswith("export ")]  # fmt: skip
    secrets = {name: f"{name.lower()}-{'x' * 40}" for name in names}
    _run(tongban, "config", "check", "--config", target, cwd=tmp_path, env={**env, **secrets})
