"""Every portal page and the window console in headless Chromium against `tongban demo`: each is
Chinese first, fits 1280 px and 390 px, passes axe-core, shows Beijing time (portal_checks.py);
and a portal session outlives its access token by refreshing it, then says 请重新登录 when the
gateway ends it (a stack whose clock the test moves, portal_stack.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from gateway.demo.portals.tokens import token_request
from gateway.demo.residents import MA_WENHUA
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS, staff_directory_sign_in
from tests.e2e.portal_checks import check_page, screenshot_dir
from tests.flows.portal_stack import portal_stack_in_thread

pytestmark = pytest.mark.browser


def _context(playwright: object, where: Path) -> BrowserContext:
    return playwright.chromium.launch_persistent_context(  # type: ignore[attr-defined,no-any-return]
        str(where), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
    )


def _sign_in_at_qinghai(page: Page, user: str, *, face: bool) -> None:
    page.wait_for_selector("#password")
    page.select_option("#user", user)
    page.fill("#password", "demo")
    if face:
        page.check("#face")
    page.click("#sign-in")
    page.wait_for_selector("#who")


def test_every_portal_page_and_the_window_console(demo: dict[str, str], tmp_path: Path) -> None:
    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        person = _context(playwright, tmp_path / "person")
        desk = _context(playwright, tmp_path / "desk")
        try:
            page = person.new_page()
            # The Shaanxi portal, signed out: separate entries for persons and enterprises.
            page.goto(demo["shaanxi"] + "/")
            check_page(page, "portal-welcome", shots, expect=("个人登录", "法人登录", "窗口"))
            # The gateway's platform chooser: persons by province, enterprises apart.
            page.click("#sign-in")
            page.wait_for_selector("#continue")
            check_page(page, "login-chooser", shots, expect=("个人登录", "法人登录", "青海"))
            assert "SOAP" not in page.content()
            page.check("input[name='idp'][value='qinghai']")
            page.click("#continue")
            _sign_in_at_qinghai(page, "qh-100231", face=True)  # 马文华, real person (L3)
            check_page(
                page, "catalogue", shots, expect=("事项目录", "学历学位证书核验", "在线办理")
            )
            listed = page.locator("#catalogue li.card").count()
            assert listed == 3, "the Shaanxi portal may call three services"
            page.click("li[data-service='housing-fund-transfer'] >> text=办事指南")
            page.wait_for_selector("#materials")
            check_page(page, "service-guide", shots, expect=("申请材料", "认证要求", "需实名认证"))
            page.goto(demo["shaanxi"] + "/")
            page.click("#call-0")  # S4: the old fund account in Shaanxi
            page.wait_for_selector("#answer")
            assert page.get_attribute("#status", "data-http-status") == "200"
            check_page(page, "result-housing-fund", shots, expect=("账户余额", "缴存人", "封存"))

            # The Qinghai portal: signed in without a prompt; S1 brings a sealed certificate
            # whose Base64 and seal are long: folded, copyable, never wider than the screen.
            page.goto(demo["qinghai"] + "/")
            page.click("#sign-in")
            page.wait_for_selector("#who")
            page.click("#call-1")
            page.wait_for_selector("#answer")
            assert page.get_attribute("#status", "data-http-status") == "200"
            assert page.locator("#answer details.long").count() >= 1
            assert page.locator("#answer button[data-copy]").count() >= 1
            check_page(
                page, "result-pension", shots, expect=("参保缴费凭证", "缴费记录", "北京时间")
            )

            # The window: a clerk signs in at the staff directory and takes 马文华's card in.
            clerk = desk.new_page()
            clerk.goto(demo["shaanxi"] + "/window")
            check_page(clerk, "window-signed-out", shots, expect=("工作人员登录",))
            clerk.click("#clerk-sign-in")
            clerk.wait_for_selector("#continue")
            check_page(clerk, "staff-chooser", shots, expect=("工作人员登录",))
            staff_directory_sign_in(clerk)
            check_page(clerk, "window-console", shots, expect=("窗口受理", "王静", "受理并转办"))
            clerk.fill("#id-number", MA_WENHUA.id_number)
            clerk.fill("#applicant-name", MA_WENHUA.name)
            clerk.check("#originals")
            clerk.click("#intake")
            clerk.wait_for_selector("#receipt")
            check_page(clerk, "window-receipt", shots, expect=("受理回执", "残疾人证办理", "王静"))

            # 马文华 follows it under 我的办件: names, provinces and Beijing time.
            page.click("nav >> text=我的办件")
            page.wait_for_selector("#cases")
            case = page.locator("section.case").first
            assert case.count() == 1
            check_page(
                page,
                "my-cases",
                shots,
                expect=("我的办件", "残疾人证办理", "陕西", "青海", "办理进度", "窗口工作人员办理"),
            )
            assert case.locator("time").count() >= 2
        finally:
            desk.close()
            person.close()


def test_a_portal_session_survives_token_expiry_then_asks_to_sign_in_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    shots = screenshot_dir(tmp_path / "screenshots")
    with portal_stack_in_thread(tmp_path / "stack", monkeypatch) as stack, sync_playwright() as pw:
        portal = stack.sso.portal("demo-portal-qinghai")
        context = _context(pw, tmp_path / "person")
        try:
            page = context.new_page()
            page.goto(portal.base_url + "/")
            page.click("#sign-in")
            _sign_in_at_qinghai(page, "qh-100233", face=False)  # 苏兰心, L2
            first = next(iter(portal.sessions.values())).tokens.access_token
            # The access token expires (the gateway's clock passes it): the next call still
            # works, the portal refreshed the token in its session.
            stack.clock.advance(300 + 30 + 1)
            page.click("#call-0")
            page.wait_for_selector("#answer")
            assert page.get_attribute("#status", "data-http-status") == "200"
            assert "已登录" in page.inner_text("#who")
            session = next(iter(portal.sessions.values()))
            assert session.tokens.access_token != first
            portal.clock = stack.clock  # from here the portal's clock agrees with the gateway's
            # The refresh token is spent elsewhere (a stolen copy): the gateway revokes the
            # family, and the portal says so instead of failing call after call.
            refresh = session.tokens.refresh_token
            assert refresh is not None
            stolen = stack.run(
                token_request(
                    portal, portal.auth, {"grant_type": "refresh_token", "refresh_token": refresh}
                )
            )
            assert stolen[0] == 200
            stack.clock.advance(300 + 30 + 1)
            page.goto(portal.base_url + "/cases")
            page.wait_for_selector("#session-ended")
            check_page(page, "session-ended", shots, expect=("请重新登录",))
            # Signing in again works: silently while the SSO session lasts, else at the platform.
            page.click("#sign-in-again")
            page.wait_for_selector("#who, #password")
        finally:
            context.close()
