"""S13 (联动办理) at a window, in Chromium: a Shaanxi window clerk takes in a Shaanxi buyer's
linked case for a home in Xining that turns out to be seized, and follows it on the console's
case page until it closes: each part by name, the filing and the tax undone, the utilities
never asked, the combined outcome in words, and the intake step naming the clerk. The page
passes the portal checks (Chinese first, no overflow at 1280 and 390 px, axe-core, Beijing
time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from gateway.demo.property_transfer import BUYER
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, staff_directory_sign_in
from tests.e2e.portal_checks import check_page, screenshot_dir

pytestmark = pytest.mark.browser


def test_a_window_clerk_follows_a_refused_linked_case_part_by_part(
    demo: dict[str, str], tmp_path: Path
) -> None:
    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "window"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            clerk = context.new_page()
            clerk.goto(demo["shaanxi"] + "/window")
            clerk.click("#clerk-sign-in")
            clerk.wait_for_selector("#continue")
            staff_directory_sign_in(clerk)
            clerk.wait_for_selector("#home-form")
            clerk.fill("#buyer-id-number", BUYER.id_number)
            clerk.fill("#buyer-name", BUYER.name)
            clerk.select_option("#home", "seized")
            clerk.click("#intake-home")
            clerk.wait_for_selector("#case-id")
            case_id = clerk.inner_text("#case-id").strip()
            assert case_id.startswith("TB61"), "taken in at the Shaanxi window"
            for _ in range(100):
                if clerk.get_attribute(".case-status", "data-status") == "closed":
                    break
                clerk.wait_for_timeout(200)
                clerk.reload()
            assert clerk.get_attribute(".case-status", "data-status") == "closed"
            statuses = {
                item.locator(".part-title").inner_text(): item.get_attribute("data-status")
                for item in clerk.locator("ul.parts li").all()
            }
            assert statuses == {
                "存量房网签备案": "compensated",
                "买方户籍与婚姻状况核验": "done",
                "缴纳契税": "compensated",
                "不动产转移登记": "not_accepted",
                "电力过户": "cancelled",
                "供水过户": "cancelled",
                "燃气过户": "cancelled",
            }
            outcome = clerk.inner_text("p.outcome")
            assert "不动产转移登记不予受理" in outcome
            assert "已撤回：存量房网签备案、缴纳契税" in outcome
            timeline = clerk.inner_text("ol.timeline")
            assert "办理人：王静" in timeline, "the clerk who took it in, by name"
            check_page(
                clerk, "window-linked-case", shots, expect=("办理结果", "收件地", "陕西", "青海")
            )

            # The queue lists it and links to the same page.
            clerk.goto(demo["shaanxi"] + "/window")
            row = clerk.locator(f"#queue tr[data-case='{case_id}']")
            assert "二手房转移登记及水电气联动过户" in row.inner_text()
            row.locator("a.case-link").click()
            clerk.wait_for_selector("#case-id")
            assert clerk.inner_text("#case-id").strip() == case_id
        finally:
            context.close()
