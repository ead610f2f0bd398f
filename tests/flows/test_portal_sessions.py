"""The demo portals as their users meet them, over real loopback HTTP: a session outlives its
access token by refreshing it, and says 请重新登录 when the gateway ends it; the catalogue lists
only what the portal may call; the login page puts persons and enterprises apart and names
platforms, not transports."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.demo.portals.tokens import token_request
from tests.flows.portal_stack import PortalStack, portal_stack
from tests.flows.test_federated_sso import QH, SX, browser, call_via_portal, only_session, sign_in

ACCESS_TTL = 300
LEEWAY = 30


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PortalStack]:
    async with portal_stack(tmp_path, monkeypatch) as running:
        yield running


async def test_an_expired_access_token_is_refreshed_and_the_call_goes_through(
    stack: PortalStack,
) -> None:
    portal = stack.sso.portal(QH)
    async with browser() as b:
        await sign_in(stack.sso, b, "qh-100233")  # 苏兰心, L2
        before = only_session(portal).tokens
        first_access, first_refresh = before.access_token, before.refresh_token
        assert first_refresh
        # The gateway's clock passes the token's expiry; the portal's does not notice: the
        # gateway answers 401, the portal refreshes once and sends the call again.
        stack.clock.advance(ACCESS_TTL + LEEWAY + 1)
        answer = await call_via_portal(b, portal, 0)
        assert "data-http-status='200'" in answer, answer
        assert "已登录" in answer
        second = only_session(portal).tokens.access_token
        assert second != first_access
        assert only_session(portal).tokens.refresh_token not in (None, first_refresh), (
            "refresh tokens rotate"
        )
        # Both clocks move on: now the portal refreshes before it calls.
        stack.clock.advance(ACCESS_TTL + LEEWAY + 1)
        portal.clock = stack.clock
        answer = await call_via_portal(b, portal, 0)
        assert "data-http-status='200'" in answer, answer
        assert only_session(portal).tokens.access_token != second


async def test_a_refused_refresh_ends_the_session_with_a_clear_page(stack: PortalStack) -> None:
    portal = stack.sso.portal(QH)
    async with browser() as b:
        await sign_in(stack.sso, b, "qh-100233")
        tokens = only_session(portal).tokens
        assert tokens.refresh_token is not None
        # Someone else spends the refresh token (a stolen copy): the family is revoked when the
        # portal presents it again (RFC 9700 §4.14.2), so the portal's session is over.
        status, _ = await token_request(
            portal,
            portal.auth,
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token},
        )
        assert status == 200
        stack.clock.advance(ACCESS_TTL + LEEWAY + 1)
        response = await b.get(f"{portal.base_url}/cases")
        page = await response.text()
        assert response.status == 401
        assert "请重新登录" in page
        assert "id='sign-in-again' href='/login'" in page
        assert portal.sessions == {}
        # The front page now offers the sign-in entries again.
        home = await (await b.get(f"{portal.base_url}/")).text()
        assert "id='sign-in'" in home
        assert "id='sign-in-enterprise'" in home


async def test_the_catalogue_lists_only_what_the_portal_may_call(stack: PortalStack) -> None:
    portal = stack.sso.portal(SX)  # allowed: degree, housing-fund and home transfers
    async with browser() as b:
        page = await b.get(f"{portal.base_url}/login")
        chooser = await page.text()
        hidden = dict(re.findall(r"name='(tx|csrf)' value='([^']*)'", chooser))
        form = await b.post(f"{stack.sso.gateway}/login", data={**hidden, "idp": "qinghai"})
        from tests.flows.test_federated_sso import idp_login  # noqa: PLC0415

        home = await idp_login(b, form, "qh-100233")
        text = await home.text()
        listed = re.findall(r"<li class='card' data-service='([^']+)'>", text)
        allowed = ["degree-verification", "housing-fund-transfer", "second-hand-home-transfer"]
        assert sorted(listed) == allowed
        assert "学历学位证书核验" in text
        assert "需实名认证" in text  # the level needed, in words
        assert "min_level" not in text
        assert "L2" not in re.sub(r"data-acr='L2'", "", text)
        # The gateway's own answer to the portal's token says the same.
        async with aiohttp.ClientSession() as http:
            answer = await http.get(
                f"{stack.sso.gateway}/api/v1/services",
                headers={"Authorization": f"Bearer {only_session(portal).access_token}"},
            )
            codes = [s["code"] for s in (await answer.json())["services"]]
        assert codes == allowed


async def test_the_login_page_puts_enterprises_apart_and_names_no_transport(
    stack: PortalStack,
) -> None:
    async with browser() as b:
        page = await b.get(f"{stack.sso.portal(SX).base_url}/login")
        text = await page.text()
    persons, enterprises = re.findall(r"<fieldset><legend>(.*?)</fieldset>", text)
    assert persons.startswith("个人登录")
    assert enterprises.startswith("法人登录")
    assert "value='shaanxi-legal'" in enterprises
    assert "value='shaanxi-legal'" not in persons
    assert persons.count("陕西政务服务网") == 1, "one platform, one choice"
    for transport in ("SOAP", "HTTP", "OIDC", "OAuth"):
        assert transport not in text
    assert "(61)" not in text
