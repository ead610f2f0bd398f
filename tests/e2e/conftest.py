"""Browser tests: `tongban demo` as a subprocess on free ports, and Debian's chromium flags.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright with the flags of NOTES.md;
never `playwright install`. Outside CI a missing chromium skips these tests; in CI
(tests/conftest.py) that skip is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.conftest import CONFIG_DIR

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_URL = re.compile(r"^\s+(.+?)\s+(http://127\.0\.0\.1:\d+)(/\S*)?$")
# The portal block of the banner ends with the legacy system's line.
_LAST_BANNER_LINE = "legacy business system"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`tongban demo` on a free port with a temp data dir: 'qinghai', 'shaanxi' and 'legacy'
    map to the base URLs the banner names."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    tongban = shutil.which("tongban", path=str(Path(sys.executable).parent))
    assert tongban is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    process = subprocess.Popen(
        [tongban, "demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--config", str(CONFIG_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )  # fmt: skip
    urls: dict[str, str] = {}
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            match = _URL.match(line.rstrip("\n"))
            if match:
                urls[match.group(1)] = match.group(2)
            if _LAST_BANNER_LINE in line or time.monotonic() > deadline:
                break

        def named(part: str) -> str:
            found = [url for name, url in urls.items() if part in name]
            assert found, f"the demo banner names the {part}"
            return found[0]

        yield {
            "qinghai": named("Qinghai portal"),
            "shaanxi": named("Shaanxi portal"),
            "legacy": named(_LAST_BANNER_LINE),
        }
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
