"""The SSO journey in headless Chromium against `tongban demo` run as a subprocess.

Portal A (Qinghai) → gateway → Qinghai identity platform's own login form → back with a code →
a service call; portal B (Shaanxi) signs in with no prompt; sign-out at A ends the SSO session
and B's page shows it signed out (back-channel logout). Debian's chromium, driven by Playwright
with the flags of tests/e2e/conftest.py; never `playwright install`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.browser


def test_sso_journey_in_chromium(demo: dict[str, str], tmp_path: Path) -> None:
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
            # Portal A: sign in at the Qinghai platform's own form (马文华, password + face).
            page.goto(demo["qinghai"] + "/")
            page.click("#sign-in")
            page.wait_for_selector("#password")
            assert "青海政务服务网 统一身份认证" in page.content()
            page.select_option("#user", "qh-100233")
            page.fill("#password", "demo")
            page.click("#sign-in")
            page.wait_for_selector("#who")
            assert page.url == demo["qinghai"] + "/"
            assert "苏兰心" in page.inner_text("#who")
            assert page.get_attribute("#acr", "data-acr") == "L2"
            assert "学历学位证书核验" in page.inner_text("#catalogue")
            # One service call with the user's access token: S6 degree verification.
            page.click("#call-0")
            page.wait_for_selector("#answer")
            assert page.get_attribute("#status", "data-http-status") == "200"
            assert "证书真实有效" in page.inner_text("#answer")

            # Portal B: signed in with no prompt.
            page_b = context.new_page()
            page_b.goto(demo["shaanxi"] + "/")
            page_b.click("#sign-in")
            page_b.wait_for_selector("#who")
            assert page_b.url == demo["shaanxi"] + "/"
            assert page_b.get_attribute("#acr", "data-acr") == "L2"

            # Sign out at A: the SSO session ends, and B learns it by back-channel logout.
            page.goto(demo["qinghai"] + "/")
            page.click("#sign-out")
            page.wait_for_selector("#sign-in")
            deadline = time.monotonic() + 10
            while True:
                page_b.goto(demo["shaanxi"] + "/")
                if page_b.locator("#sign-in").count():
                    break
                assert time.monotonic() < deadline, "portal B never heard of the logout"
                page_b.wait_for_timeout(200)
            # Signing in at B again needs the platform again (the login page, no session).
            page_b.click("#sign-in")
            page_b.wait_for_load_state()
            assert "/login?tx=" in page_b.url
        finally:
            context.close()
