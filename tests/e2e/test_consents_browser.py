"""我的授权 and 访问记录 in headless Chromium against `tongban demo`: a citizen signed in through
the Qinghai platform gives a consent grant and a delegation, revokes both, and reads her access
log; every page passes the checks of portal_checks.py (Chinese first, 1280 px and 390 px,
axe-core, Beijing time)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from gateway.demo.residents import SU_LANXIN
from tests.e2e.conftest import CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.portal_checks import check_page, screenshot_dir

pytestmark = pytest.mark.browser


def _sign_in(page: Page, portal: str, user: str = "qh-100231", *, face: bool = True) -> None:
    page.goto(portal + "/")
    page.click("#sign-in")  # the Qinghai portal hints its own platform: no chooser
    page.wait_for_selector("#password")
    page.select_option("#user", user)  # qh-100231: 马文华, real person checked (L3)
    page.fill("#password", "demo")
    if face:
        page.check("#face")
    page.click("#sign-in")
    page.wait_for_selector("#who")


def test_granting_delegating_and_revoking_in_the_portal(
    demo: dict[str, str], tmp_path: Path
) -> None:
    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "person"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = context.new_page()
            _sign_in(page, demo["qinghai"])
            # A call of his own, for the access log: S1, his contribution history (the
            # portal's S6 button names 苏兰心's degree, which the subject rule refuses him).
            page.click("#call-1")
            page.wait_for_selector("#answer")

            page.click("nav >> text=我的授权")
            page.wait_for_selector("#consent-form")
            assert page.locator("#no-consents").count() == 1
            check_page(
                page, "my-consents-empty", shots, expect=("我的授权", "授权用证", "委托用证")
            )

            # A consent grant to the Shaanxi portal for the housing-fund service, three uses.
            page.select_option("#requester", "demo-portal-shaanxi")
            page.check("#consent-service-housing-fund-transfer")
            page.fill("#purpose", "住房公积金异地转移接续")
            page.select_option("#consent-days", "90")
            page.fill("#max-uses", "3")
            page.click("#give-consent")
            page.wait_for_selector("#consents tr.consent")
            row = page.locator("#consents tr.consent").first
            assert row.locator(".grant-state").get_attribute("data-state") == "active"
            assert "陕西政务服务网" in row.inner_text()
            assert "0 / 3" in row.inner_text()

            # A delegation to 苏兰心 by her ID number, which the page never shows again.
            page.fill("#agent-id-number", SU_LANXIN.id_number)
            page.check("#delegation-service-housing-fund-transfer")
            page.click("#give-delegation")
            page.wait_for_selector("#delegations-given tr.delegation")
            assert SU_LANXIN.id_number not in page.content()
            check_page(
                page, "my-consents", shots, expect=("住房公积金", "有效", "北京时间", "撤销")
            )

            # 苏兰心, signed in at the Shaanxi portal, sees the delegation and grants the Qinghai
            # portal consent for 马文华 under it.
            agent_context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "agent"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_FLAGS,
            )  # fmt: skip
            try:
                agent = agent_context.new_page()
                _sign_in(agent, demo["qinghai"], user="qh-100233", face=False)
                agent.click("nav >> text=我的授权")
                agent.wait_for_selector("#delegations-received tr.delegation")
                agent.select_option("#agent-requester", "demo-portal-shaanxi")
                agent.select_option("#agent-service", "housing-fund-transfer")
                agent.fill("#agent-purpose", "住房公积金异地转移接续")
                check_page(agent, "agent-consents", shots, expect=("他人委托我办理", "代为授权"))
                agent.click("#give-agent-consent")
                agent.wait_for_selector("#consent-form")
                assert agent.locator("#answer").count() == 0
            finally:
                agent_context.close()
            page.reload()
            given = page.locator("#consents tr.consent", has_text="代理人代本人")
            assert given.count() == 1

            # A wrong ID number is refused in words, and nothing is added.
            page.fill("#agent-id-number", "610102199802030460")
            page.check("#delegation-service-housing-fund-transfer")
            page.click("#give-delegation")
            page.wait_for_selector("#answer")
            assert page.get_attribute("#status", "data-http-status") == "422"
            assert "填写的信息不符合要求" in page.inner_text("#answer")
            page.click("text=返回我的授权")
            page.wait_for_selector("#consent-form")
            assert page.locator("#delegations-given tr.delegation").count() == 1

            # Revoking: each at once, its state in words, no revoke button left.
            page.locator("#consents tr.consent", has_text="0 / 3").locator("button.revoke").click()
            page.wait_for_selector("#consents .grant-state[data-state='revoked']")
            assert "已撤销" in page.inner_text("#consents")
            page.click("#delegations-given button.revoke")
            page.wait_for_selector("#delegations-given .grant-state[data-state='revoked']")
            # Revoking the delegation revoked what the agent gave under it: nothing left active.
            assert page.locator("button.revoke").count() == 0

            # A forged form (no CSRF token of this session) gives nothing in her name.
            forged = page.request.post(
                demo["qinghai"] + "/consents",
                form={"requester": "demo-portal-shaanxi", "service": "housing-fund-transfer",
                      "purpose": "x"},
            )  # fmt: skip
            assert forged.status == 403
            assert "表单已失效" in forged.text()
            page.reload()
            assert page.locator("#consents tr.consent").count() == 2, "hers and the agent's"

            page.click("nav >> text=访问记录")
            page.wait_for_selector("#access-log")
            check_page(page, "access-log", shots, expect=("访问记录", "查询核验", "成功"))
            assert page.locator("#access-log tr.access").count() >= 1
        finally:
            context.close()


def test_s14_an_enterprise_operator_grants_the_bank_at_the_qinghai_portal(
    demo: dict[str, str], tmp_path: Path
) -> None:
    shots = screenshot_dir(tmp_path / "screenshots")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "operator"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = context.new_page()
            page.goto(demo["qinghai"] + "/")
            page.click("#sign-in-enterprise")
            page.wait_for_selector("#password")
            page.select_option("#user", "lp-500105")  # 韩雪梅 for 青海盐湖示范化工有限公司
            page.fill("#password", "demo")
            page.click("#sign-in")
            page.wait_for_selector("#who")
            assert page.get_attribute("#acr", "data-acr") == "LP"

            page.click("nav >> text=我的授权")
            page.wait_for_selector("#consent-form")
            assert page.locator("#delegation-form").count() == 0, "enterprises do not delegate"
            page.select_option("#requester", "demo-bank-shaanxi")
            page.check("#consent-service-enterprise-credit")
            page.fill("#purpose", "流动资金贷款审批")
            page.fill("#max-uses", "1")
            page.click("#give-consent")
            page.wait_for_selector("#consents tr.consent")
            row = page.locator("#consents tr.consent").first
            assert "陕西示范银行" in row.inner_text()
            assert "经办人代企业" in row.inner_text()
            check_page(
                page, "enterprise-consents", shots, expect=("以本企业名义", "企业信用信息授权查询")
            )
            page.click("#consents button.revoke")
            page.wait_for_selector("#consents .grant-state[data-state='revoked']")
        finally:
            context.close()
