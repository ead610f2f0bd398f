"""Issue 6 in headless Chromium against `tongban demo`: sign in through Shaanxi's signed-ticket
platform (its own login form), then use the Qinghai portal and the legacy Shaanxi business system
without any prompt. Debian's chromium through Playwright, flags as in NOTES.md.
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

from tests.e2e.test_demo_sso_browser import CHROMIUM, CHROMIUM_FLAGS
from tests.flows.conftest import CONFIG_DIR

_URL = re.compile(r"^\s+(.+?)\s+(http://127\.0\.0\.1:\d+)(/\S*)?$")

pytestmark = pytest.mark.browser


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`tongban demo` on a free port; banner name → base URL, up to the legacy system's line."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    tongban = shutil.which("tongban", path=str(Path(sys.executable).parent))
    assert tongban is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    data_dir = str(tmp_path / "data")
    command = [tongban, "demo", "--port", str(port), "--data-dir", data_dir]
    process = subprocess.Popen(
        [*command, "--config", str(CONFIG_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    urls: dict[str, str] = {}
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            match = _URL.match(line.rstrip("\n"))
            if match:
                urls[match.group(1)] = match.group(2)
            if "legacy business system" in line or time.monotonic() > deadline:
                break
        yield {
            "qinghai": next(v for k, v in urls.items() if "Qinghai portal" in k),
            "shaanxi": next(v for k, v in urls.items() if "Shaanxi portal" in k),
            "legacy": next(v for k, v in urls.items() if "legacy business system" in k),
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


def test_shaanxi_ticket_login_then_qinghai_portal_and_legacy_system(
    demo: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - browser tests only

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = context.new_page()
            # The Shaanxi portal: the gateway's login page, choose Shaanxi's ticket platform.
            page.goto(demo["shaanxi"] + "/")
            page.click("#sign-in")
            page.wait_for_selector("#continue")
            page.check("input[name='idp'][value='shaanxi']")
            page.click("#continue")
            # Shaanxi's own login form (servicecode / goto), then back with a one-time ticket.
            page.wait_for_selector("#password")
            assert "陕西政务服务网" in page.content()
            page.select_option("#user", "sx-200101")
            page.fill("#password", "demo")
            page.click("#sign-in")
            page.wait_for_selector("#who")
            assert page.url == demo["shaanxi"] + "/"
            assert "马文华" in page.inner_text("#who")
            assert page.inner_text("#acr") == "L3"

            # The Qinghai portal: signed in with no prompt (no login page, no platform form).
            page_b = context.new_page()
            page_b.goto(demo["qinghai"] + "/")
            page_b.click("#sign-in")
            page_b.wait_for_selector("#who")
            assert page_b.url == demo["qinghai"] + "/"
            assert page_b.inner_text("#acr") == "L3"

            # The legacy Shaanxi business system, through the gateway's ticket face.
            page_c = context.new_page()
            page_c.goto(demo["legacy"] + "/")
            page_c.click("#sign-in")
            page_c.wait_for_selector("#who")
            assert page_c.url == demo["legacy"] + "/"
            assert page_c.inner_text("#attr-name") == "马文华"
            assert "*" in page_c.inner_text("#attr-idnum")
            assert page_c.inner_text("#attr-level") == "L3"
        finally:
            context.close()
