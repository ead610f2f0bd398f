"""RP-initiated logout cannot be forced: a bare link asks first, and an ID token from a browser
that does not hold its session ends nothing (OpenID Connect RP-Initiated Logout 1.0 §2, §6).

Real loopback HTTP: the demo's Qinghai platform, a portal, the gateway with its SSO session.
"""

from __future__ import annotations

import re

import aiohttp

from tests.flows.test_federated_sso import QH, Sso, browser, only_session, sign_in
from tests.flows.test_federated_sso import sso as sso  # noqa: PLC0414 - the shared fixture

_CONFIRM = re.compile(r"name='confirm' value='([^']*)'")


async def whoami(sso: Sso, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{sso.gateway}/oauth2/userinfo", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        return response.status


async def alive(sso: Sso, sid: str) -> bool:
    return await sso.authenticator.store.key_for_sid(sid) is not None


async def test_a_bare_logout_link_asks_and_only_the_form_ends_the_session(sso: Sso) -> None:
    async with browser() as b:
        await sign_in(sso, b, "qh-100233")
        held = only_session(sso.portal(QH))
        token = held.access_token
        assert await whoami(sso, token) == 200

        # A top-level link (what SameSite=Lax lets through): a page, not a logout.
        page = await b.get(f"{sso.gateway}/oauth2/logout", allow_redirects=False)
        assert page.status == 200
        text = await page.text()
        assert "<form method='post'" in text
        assert page.headers["X-Frame-Options"] == "DENY"
        assert not any(
            c.startswith(sso.authenticator.settings.cookie_name)
            for c in page.headers.getall("Set-Cookie", [])
        ), "the confirmation page leaves the session cookie alone"
        match = _CONFIRM.search(text)
        assert match
        assert match.group(1)
        assert await whoami(sso, token) == 200
        assert await alive(sso, held.sid)

        # A cross-site form post without the token, or with a made-up one: asked again.
        for data in ({}, {"confirm": "x" * 43}, {"confirm": ""}):
            again = await b.post(f"{sso.gateway}/oauth2/logout", data=data)
            assert again.status == 200
            assert _CONFIRM.search(await again.text())
        assert await whoami(sso, token) == 200

        # The same token from another browser (no session cookie) ends nothing either.
        async with browser() as other:
            stolen = await other.post(
                f"{sso.gateway}/oauth2/logout", data={"confirm": match.group(1)}
            )
            assert stolen.status == 200
            assert "已退出" in await stolen.text()
        assert await whoami(sso, token) == 200

        # The user's own click on the form ends the session and its grants.
        done = await b.post(f"{sso.gateway}/oauth2/logout", data={"confirm": match.group(1)})
        assert done.status == 200
        assert "已退出" in await done.text()
        assert await whoami(sso, token) == 401
        assert not await alive(sso, held.sid)


async def test_a_foreign_id_token_hint_ends_nothing(sso: Sso) -> None:
    async with browser() as victim:
        await sign_in(sso, victim, "qh-100233")
        session = only_session(sso.portal(QH))
        assert await whoami(sso, session.access_token) == 200

        # An attacker's browser (no session cookie) with the victim's ID token: nothing ends,
        # even though the token is valid (or expired: expiry is tolerated for hints).
        async with browser() as attacker:
            answer = await attacker.get(
                f"{sso.gateway}/oauth2/logout",
                params={"id_token_hint": session.id_token},
                allow_redirects=False,
            )
            assert answer.status == 200
        assert await whoami(sso, session.access_token) == 200
        assert await alive(sso, session.sid)

        # An attacker with a session of their own, same hint: asked, the victim's untouched.
        async with browser() as attacker:
            await sign_in(sso, attacker, "qh-100234")
            answer = await attacker.get(
                f"{sso.gateway}/oauth2/logout",
                params={"id_token_hint": session.id_token},
                allow_redirects=False,
            )
            assert answer.status == 200
            assert _CONFIRM.search(await answer.text())
        assert await whoami(sso, session.access_token) == 200

        # The hint naming the session this browser holds ends it at once (the portal's link).
        bye = await victim.get(
            f"{sso.gateway}/oauth2/logout",
            params={"id_token_hint": session.id_token},
            allow_redirects=False,
        )
        assert bye.status == 200
        assert "已退出" in await bye.text()
        assert await whoami(sso, session.access_token) == 401
