"""`tongban demo` as a subprocess, the way a person starts it: on a free port, a fresh data
directory, a clean environment; read until its banner is complete, stopped with SIGINT."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.demo.banner import READY_LINE

_NAMED_URL = re.compile(r"^\s+(.+?)\s+(http://127\.0\.0\.1:\d+)(/\S*)?$")


@dataclass
class RunningDemo:
    port: int
    data_dir: Path
    banner: list[str] = field(default_factory=list)
    """Every line printed up to and including the ready line."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def named(self, part: str) -> str:
        """The base URL (no path) of the first banner line whose name contains ``part``."""
        for line in self.banner:
            match = _NAMED_URL.match(line)
            if match and part in match.group(1):
                return match.group(2)
        raise AssertionError(f"the demo banner names no {part!r}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_demo(
    data_dir: Path, *, cwd: Path | None = None, config: Path | None = None
) -> Iterator[RunningDemo]:
    """Start the demo of this environment's ``tongban`` and yield once its banner is complete."""
    tongban = shutil.which("tongban", path=str(Path(sys.executable).parent))
    assert tongban is not None
    demo = RunningDemo(free_port(), data_dir)
    command = [tongban, "demo", "--port", str(demo.port), "--data-dir", str(data_dir)]
    if config is not None:
        command += ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    data_dir.mkdir(parents=True, exist_ok=True)
    errors = data_dir.parent / "demo.stderr"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            demo.banner.append(line.rstrip("\n"))
            if line.strip() == READY_LINE or time.monotonic() > deadline:
                break
        said = errors.read_text(errors="replace")[-3000:]
        assert demo.banner, f"the demo printed nothing; its stderr ends:\n{said}"
        assert demo.banner[-1] == READY_LINE, "\n".join(demo.banner) + "\n" + said
        yield demo
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
