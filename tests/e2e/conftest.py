"""Browser tests: `tongban demo` as a subprocess on free ports, and Debian's chromium flags.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright with the flags below (no
sandbox as root, nothing fetched from the network); never `playwright install`, which
downloads. Outside CI a missing chromium skips these tests; in CI (tests/conftest.py) that skip
is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.demo_process import running_demo
from tests.flows.conftest import CONFIG_DIR

if TYPE_CHECKING:
    from playwright.sync_api import Page

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


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`tongban demo` on a free port with a temp data dir: 'qinghai', 'shaanxi' and 'legacy'
    map to the base URLs the banner names."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    with running_demo(tmp_path / "data", config=CONFIG_DIR) as running:
        yield {
            "qinghai": running.named("Qinghai portal"),
            "shaanxi": running.named("Shaanxi portal"),
            "legacy": running.named("legacy business system"),
        }


def staff_directory_sign_in(page: Page, staff_id: str = "clerk-61-0007") -> None:
    """From the gateway's staff chooser, through the staff directory's own form, back at the
    console (password 'demo')."""
    page.click("#continue")
    page.wait_for_selector("#staff-sign-in")
    page.select_option("#staff", staff_id)
    page.fill("#staff-password", "demo")
    page.click("#staff-sign-in")
    page.wait_for_selector("#clerk-who")
