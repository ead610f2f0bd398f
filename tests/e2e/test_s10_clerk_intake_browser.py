"""S10 (异地代收代办) in headless Chromium against `tongban demo` run as a subprocess (issue 5 §7).

A Shaanxi window clerk signs in at the Shaanxi portal's window console, takes in a disability-card
application for 苏兰心 (originals checked) and sees it in the window queue; the gateway's worker
forwards it to Qinghai. 苏兰心 then signs in on the Qinghai portal and follows the same case under
我的办件 until its status has moved past intake. Debian's chromium, flags as in NOTES.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS

_CASE_ID = re.compile(r"^TB61\d{8}[0-9A-F]{12}$")

pytestmark = pytest.mark.browser


def test_s10_clerk_intake_then_citizen_follows_the_case(
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
            # The clerk at the Shaanxi window: sign in at the desk (staff id, password 'demo').
            clerk = context.new_page()
            clerk.goto(demo["shaanxi"] + "/")
            clerk.click("#window-console")
            clerk.wait_for_selector("#clerk-sign-in")
            clerk.select_option("#clerk", "clerk-61-0007")
            clerk.fill("#clerk-password", "demo")
            clerk.click("#clerk-sign-in")
            clerk.wait_for_selector("#clerk-who")
            assert "clerk-61-0007" in clerk.inner_text("#clerk-who")

            # Without the originals checked the gateway refuses it, and nothing is queued.
            clerk.select_option("#citizen", "su-lanxin")
            clerk.click("#intake")
            clerk.wait_for_selector("#status")
            assert clerk.inner_text("#status") == "422", clerk.inner_text("#answer")
            assert "originals_check" in clerk.inner_text("#answer")

            # Take it in properly: 苏兰心, hearing, both materials, originals checked.
            clerk.goto(demo["shaanxi"] + "/window")
            clerk.select_option("#citizen", "su-lanxin")
            clerk.select_option("#category", "hearing")
            clerk.check("#originals")
            clerk.click("#intake")
            clerk.wait_for_selector("#receipt")
            case_id = clerk.inner_text("#receipt-case").strip()
            assert _CASE_ID.match(case_id), case_id
            queue = clerk.inner_text("#queue")
            assert case_id in queue
            assert "disability-card" in queue
            assert clerk.locator("#queue tr[data-case]").count() == 1

            # The citizen on the Qinghai portal (Qinghai's own login form): her cases.
            citizen = context.new_page()
            citizen.goto(demo["qinghai"] + "/")
            citizen.click("#sign-in")
            citizen.wait_for_selector("#password")
            citizen.select_option("#user", "qh-100233")
            citizen.fill("#password", "demo")
            citizen.click("#sign-in")
            citizen.wait_for_selector("#who")
            assert "苏兰心" in citizen.inner_text("#who")
            citizen.click("#my-cases")
            citizen.wait_for_selector("#cases")
            case = citizen.locator(f"section.case[data-case='{case_id}']")
            assert case.count() == 1, citizen.inner_text("#cases")
            assert "disability-card" in case.inner_text()
            seen = [case.locator(".case-status").get_attribute("data-status")]
            # The worker forwards it to Qinghai; the status moves on (bounded polling).
            for _ in range(40):
                if seen[-1] == "closed":
                    break
                citizen.wait_for_timeout(250)
                citizen.click("#refresh")
                citizen.wait_for_selector("#cases")
                seen.append(case.locator(".case-status").get_attribute("data-status"))
            assert seen[-1] == "closed", seen
            timeline = case.locator(".timeline").inner_text()
            for step in ("received", "originals_checked", "forwarded", "closed"):
                assert step in timeline, timeline
            assert "已办结" in case.inner_text()
            assert "clerk-61-0007" in timeline  # the clerk's intake and check, by name

            # The clerk's queue shows the same case closed.
            clerk.click("#window-refresh")
            clerk.wait_for_selector("#queue")
            row = clerk.locator(f"#queue tr[data-case='{case_id}'] .queue-status")
            assert "closed" in row.inner_text()
        finally:
            context.close()
