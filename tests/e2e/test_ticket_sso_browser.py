"""Provincial platforms in headless Chromium against `tongban demo`: sign in through Shaanxi's signed-ticket
platform (its own login form), then use the Qinghai portal and the legacy Shaanxi business system
without any prompt. Debian's chromium through Playwright, flags as in tests/e2e/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.browser


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
            assert page.get_attribute("#acr", "data-acr") == "L3"

            # The Qinghai portal: signed in with no prompt (no login page, no platform form).
            page_b = context.new_page()
            page_b.goto(demo["qinghai"] + "/")
            page_b.click("#sign-in")
            page_b.wait_for_selector("#who")
            assert page_b.url == demo["qinghai"] + "/"
            assert page_b.get_attribute("#acr", "data-acr") == "L3"

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
