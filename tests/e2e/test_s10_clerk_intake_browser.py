"""S10 (异地代收代办) in headless Chromium against `tongban demo` run as a subprocess.

A Shaanxi window clerk opens the Shaanxi portal's window console and signs in through the
gateway's login page, which offers only the staff directory, at the directory's own form. She
types 苏兰心's ID number from the document (a wrong check character is refused by the gateway's
token exchange), takes in a disability-card application (originals checked) with the Counter
token the console got for 苏兰心, and sees it in the window queue; the gateway's worker forwards
it to Qinghai. 苏兰心, on her own device (another browser profile), signs in on the Qinghai portal
and follows the same case under 我的办件 until it is closed, the clerk named as its actor.
Debian's chromium, flags as in tests/e2e/conftest.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.demo.residents import SU_LANXIN
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, staff_directory_sign_in

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

_WRONG_CHECK = "0" if SU_LANXIN.id_number[-1] != "0" else "1"
_CASE_ID = re.compile(r"^TB61\d{8}[0-9A-F]{12}$")

pytestmark = pytest.mark.browser


def test_s10_clerk_intake_then_citizen_follows_the_case(
    demo: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - browser tests only

    with sync_playwright() as playwright:

        def profile(name: str) -> BrowserContext:
            return playwright.chromium.launch_persistent_context(
                str(tmp_path / name), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )

        context = profile("window-terminal")
        phone = profile("citizen-phone")
        try:
            # The clerk at the Shaanxi window: the console sends her to the gateway, whose
            # login page offers the staff directory only; she signs in there (password 'demo').
            clerk = context.new_page()
            clerk.goto(demo["shaanxi"] + "/")
            clerk.click("#window-console")
            clerk.click("#clerk-sign-in")
            clerk.wait_for_selector("#continue")
            assert "/login?tx=" in clerk.url
            choices = clerk.locator("input[name='idp']")
            assert choices.count() == 1
            assert choices.get_attribute("value") == "shaanxi-staff"
            assert "staff directory" in clerk.inner_text("body")
            staff_directory_sign_in(clerk)
            # Her name and staff id as the staff directory gives them.
            assert "王静" in clerk.inner_text("#clerk-who")
            assert "clerk-61-0007" in clerk.inner_text("#clerk-who")

            # A mistyped ID number: the gateway's token exchange refuses the check character.
            clerk.fill("#id-number", SU_LANXIN.id_number[:17] + _WRONG_CHECK)
            clerk.fill("#applicant-name", SU_LANXIN.name)
            clerk.check("#originals")
            clerk.click("#intake")
            clerk.wait_for_selector("#answer")
            assert clerk.get_attribute("#status", "data-http-status") == "400"
            assert clerk.get_attribute("#answer", "data-code") == "invalid_request"

            # Without the originals checked the gateway refuses it, and nothing is queued.
            clerk.goto(demo["shaanxi"] + "/window")
            clerk.fill("#id-number", SU_LANXIN.id_number)
            clerk.fill("#applicant-name", SU_LANXIN.name)
            clerk.click("#intake")
            clerk.wait_for_selector("#answer")
            assert clerk.get_attribute("#status", "data-http-status") == "422"
            assert "originals_check" in clerk.content()

            # Take it in properly: 苏兰心 as read from her card, hearing, both materials,
            # originals checked.
            clerk.goto(demo["shaanxi"] + "/window")
            clerk.fill("#id-number", SU_LANXIN.id_number)
            clerk.fill("#applicant-name", SU_LANXIN.name)
            clerk.select_option("#category", "hearing")
            clerk.check("#originals")
            clerk.click("#intake")
            clerk.wait_for_selector("#receipt")
            case_id = clerk.inner_text("#receipt-case").strip()
            assert _CASE_ID.match(case_id), case_id
            queue = clerk.inner_text("#queue")
            assert case_id in queue
            assert "残疾人证办理" in queue
            assert "王静" in queue  # the clerk who took it in, by name
            assert clerk.locator("#queue tr[data-case]").count() == 1

            # The citizen on her own phone, at the Qinghai portal (Qinghai's own login form).
            citizen = phone.new_page()
            citizen.goto(demo["qinghai"] + "/")
            citizen.click("#sign-in")
            citizen.wait_for_selector("#password")
            citizen.select_option("#user", "qh-100233")
            citizen.fill("#password", "demo")
            citizen.click("#sign-in")
            citizen.wait_for_selector("#who")
            assert "苏兰心" in citizen.inner_text("#who")
            citizen.click("nav >> text=我的办件")
            citizen.wait_for_selector("#cases")
            case = citizen.locator(f"section.case[data-case='{case_id}']")
            assert case.count() == 1, citizen.inner_text("#cases")
            assert "残疾人证办理" in case.inner_text()
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
            timeline = case.locator(".timeline")
            steps = [s.get_attribute("data-status") for s in timeline.locator(".to").all()]
            for step in ("received", "originals_checked", "forwarded", "closed"):
                assert step in steps, steps
            for words in ("已收件", "原件已核验", "已转办", "已办结"):
                assert words in timeline.inner_text()
            assert "窗口工作人员办理" in timeline.inner_text()  # the clerk acted for her

            # The clerk's queue shows the same case closed.
            clerk.click("#window-refresh")
            clerk.wait_for_selector("#queue")
            row = clerk.locator(f"#queue tr[data-case='{case_id}'] .queue-status")
            assert row.get_attribute("data-status") == "closed"
            assert "已办结" in row.inner_text()
        finally:
            phone.close()
            context.close()
