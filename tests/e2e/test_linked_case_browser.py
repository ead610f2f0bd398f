"""S13 (联动办理) in Chromium: a Shaanxi buyer signs in at the Qinghai portal, reads the steps of
a second-hand home transfer on its guide, applies for a seized home, and follows the case on
我的办件 until it closes: registration refused, the filing and the tax undone, the utilities
never asked, each part by name, and the combined outcome in words. The pages pass the portal
checks (Chinese first, no overflow at 1280 and 390 px, axe-core, Beijing time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.portal_checks import check_page, screenshot_dir

pytestmark = pytest.mark.browser


def test_a_refused_linked_case_shows_each_part_and_its_outcome(
    demo: dict[str, str], tmp_path: Path
) -> None:
    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "buyer"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = context.new_page()
            page.goto(demo["qinghai"] + "/")
            page.click("#sign-in")
            page.wait_for_selector("#password")
            page.select_option("#user", "qh-100231")  # 马文华, the buyer (L3 with a face check)
            page.fill("#password", "demo")
            page.check("#face")
            page.click("#sign-in")
            page.wait_for_selector("#who")

            page.goto(demo["qinghai"] + "/services/second-hand-home-transfer")
            page.wait_for_selector("#linked-steps")
            check_page(
                page,
                "linked-service-guide",
                shots,
                expect=(
                    "办理环节（联动办理）",
                    "不动产转移登记",
                    "在缴纳契税、买方户籍与婚姻状况核验办结后办理",
                ),
            )
            steps = page.locator("#linked-steps li").all_inner_texts()
            assert len(steps) == 7
            assert "可选" in steps[-1]  # gas

            page.click("text=以被查封的房屋申请")
            page.wait_for_selector("#cases")
            case = page.locator("section.case").first
            for _ in range(100):
                if case.locator(".case-status").get_attribute("data-status") == "closed":
                    break
                page.wait_for_timeout(200)
                page.reload()
                case = page.locator("section.case").first
            assert case.locator(".case-status").get_attribute("data-status") == "closed"
            statuses = {
                item.locator(".part-title").inner_text(): item.get_attribute("data-status")
                for item in case.locator("ul.parts li").all()
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
            outcome = case.locator("p.outcome").inner_text()
            assert "不动产转移登记不予受理" in outcome
            assert "已撤回：存量房网签备案、缴纳契税" in outcome
            assert "未办理：电力过户、供水过户、燃气过户" in outcome
            timeline = case.locator("ol.timeline").inner_text()
            assert "申请未能办结，撤回此环节" in timeline
            assert "released" not in timeline  # the gateway's phrases are in words
            check_page(page, "linked-case", shots, expect=("办理结果", "已撤回", "不予受理"))
        finally:
            context.close()
