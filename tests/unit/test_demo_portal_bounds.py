"""The demo portals keep nothing forever: abandoned sign-ins, old sessions and logout records go.

The soak runs thousands of logins through a portal; before these bounds each left a local session
that nothing ended and each back-channel logout a record, so the portal only ever grew.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.demo.portals.app import build_portal_app
from gateway.demo.portals.signin import authorization_redirect
from gateway.demo.portals.state import (
    PENDING_LIFETIME,
    PortalSession,
    Tokens,
    forget_older,
    qinghai_portal,
)


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _session(at: float) -> PortalSession:
    tokens = Tokens("access", None, at + 300, 300, "id-token")
    return PortalSession("sid", "sub", "L2", tokens, None, signed_in_at=at)


def test_forget_older_drops_the_old_entries_and_keeps_the_young() -> None:
    table = {"a": _session(10), "b": _session(20), "c": _session(30)}
    forget_older(table, 25, lambda session: session.signed_in_at)
    assert list(table) == ["c"]
    forget_older(table, 25, lambda session: session.signed_in_at)
    assert list(table) == ["c"]


def test_an_abandoned_sign_in_is_forgotten_at_the_next_one() -> None:
    clock = Clock()
    portal = qinghai_portal("http://127.0.0.1:1", "secret")
    portal.clock = clock

    def start() -> None:
        authorization_redirect(
            portal,
            portal.pending,
            client_id=portal.client_id,
            redirect_uri="http://127.0.0.1:2/callback",
            scope=portal.scope,
            login_cookie=portal.login_cookie,
        )

    start()
    abandoned = set(portal.pending)
    clock.now += PENDING_LIFETIME / 2
    start()
    assert abandoned <= set(portal.pending)  # still in time to complete
    clock.now += PENDING_LIFETIME / 2 + 1
    start()
    assert len(portal.pending) == 2
    assert not abandoned & set(portal.pending)


async def test_a_gateway_shedding_the_token_request_is_a_503_at_the_portal_not_a_502() -> None:
    """The soak's lone 502: the gateway refused the portal's token request with 503
    (``gateway.overloaded``), and the portal reported that as a broken gateway."""
    shed = web.Application()

    async def overloaded(_request: web.Request) -> web.Response:
        return web.json_response({"code": "gateway.overloaded"}, status=503)

    shed.router.add_post("/oauth2/token", overloaded)
    shed.router.add_get("/oauth2/jwks", overloaded)
    async with TestServer(shed, host="127.0.0.1") as gateway:
        portal = qinghai_portal(str(gateway.make_url("")).rstrip("/"), "secret")
        async with TestClient(TestServer(build_portal_app(portal), host="127.0.0.1")) as browser:
            portal.pending["st"] = {"verifier": "v", "nonce": "n", "at": repr(portal.clock())}
            browser.session.cookie_jar.update_cookies({portal.login_cookie: "st"})
            answer = await browser.get("/callback", params={"state": "st", "code": "c"})
            assert answer.status == 503
            assert portal.sessions == {}
            # A logout token whose keys cannot be fetched now: the gateway delivers it again.
            answer = await browser.post("/backchannel-logout", data={"logout_token": "x.y.z"})
            assert answer.status == 503
