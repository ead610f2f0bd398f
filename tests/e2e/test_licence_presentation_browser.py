"""亮证 in headless Chromium against `tongban demo` run as a subprocess.

马文华 signs in at the Qinghai portal (Qinghai's own login form) on his phone, opens 我的证照 and
shows his birth medical certificate: the gateway verifies it at Shaanxi's e-licence system and
answers with a three-minute, single-use code and its QR code. A clerk at the Shaanxi window
console (staff directory sign-in) types the code: the certificate is valid at its issuer, the
fields the 出生一件事 service needs are shown, the parents' names masked. The same code a second
time is refused as used. Debian's chromium, flags as in tests/e2e/conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.demo.licence_system import BIRTH_CERTIFICATE
from gateway.demo.residents import MA_WENHUA
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, staff_directory_sign_in
from tests.e2e.portal_checks import check_page, screenshot_dir

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser


def test_the_holder_shows_a_licence_and_the_window_clerk_checks_it_once(
    demo: dict[str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - browser tests only

    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:

        def profile(name: str) -> BrowserContext:
            return playwright.chromium.launch_persistent_context(
                str(tmp_path / name), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
            )

        phone = profile("holder-phone")
        terminal = profile("window-terminal")
        try:
            holder = phone.new_page()
            holder.goto(demo["qinghai"] + "/")
            holder.click("#sign-in")
            holder.wait_for_selector("#password")
            holder.select_option("#user", "qh-100231")
            holder.fill("#password", "demo")
            holder.click("#sign-in")
            holder.wait_for_selector("#who")
            assert "马文华" in holder.inner_text("#who")
            holder.click("nav >> text=我的证照")
            holder.wait_for_selector("#present")
            check_page(holder, "my-licences", shots, expect=("亮证", "不保存"))
            holder.select_option("#licence-type", "birth-medical-certificate")
            holder.fill("#holder-id", MA_WENHUA.id_number)
            holder.click("#present")
            holder.wait_for_selector("#presentation-code")
            code = holder.inner_text("#presentation-code").strip()
            assert code.startswith("LP1.")
            assert BIRTH_CERTIFICATE in holder.inner_text("#presented")
            assert (holder.get_attribute("#qr", "src") or "").startswith("data:image/svg+xml")
            assert holder.evaluate("document.querySelector('#qr').naturalWidth") > 0
            assert "3 分钟内有效" in holder.inner_text("#expires")
            check_page(holder, "licence-presented", shots, expect=("已向签发地核验",))

            clerk = terminal.new_page()
            clerk.goto(demo["shaanxi"] + "/")
            clerk.click("#window-console")
            clerk.click("#clerk-sign-in")
            clerk.wait_for_selector("#continue")
            staff_directory_sign_in(clerk)
            clerk.goto(demo["shaanxi"] + "/window/licences")
            check_page(clerk, "licence-check", shots, expect=("亮证码",))
            clerk.fill("#code", code)
            clerk.select_option("#check-service", "newborn-bundle")
            clerk.click("#check")
            clerk.wait_for_selector("#licence-status")
            assert clerk.get_attribute("#licence-status", "data-status") == "valid"
            assert BIRTH_CERTIFICATE in clerk.inner_text("#licence-status")
            fields = {
                row.get_attribute("data-field"): row.locator("td").inner_text()
                for row in clerk.locator("#licence-fields tr[data-field]").all()
            }
            assert fields["newborn_name"] == "马小禾"
            assert fields["birth_date"] == "2026-11-20"
            assert fields["mother_name"] == "韩**"
            assert fields["father_name"] == "马**"
            check_page(
                clerk, "licence-checked", shots, expect=("核验有效", "电子印章", "新生儿姓名")
            )

            # The same code again: used once already.
            clerk.goto(demo["shaanxi"] + "/window/licences")
            clerk.fill("#code", code)
            clerk.click("#check")
            clerk.wait_for_selector("#answer")
            assert clerk.get_attribute("#answer", "data-code") == "client.presentation_used"
            assert "已使用过" in clerk.inner_text("#answer")
            check_page(clerk, "licence-check-refused", shots, expect=("已使用过",))
        finally:
            terminal.close()
            phone.close()
