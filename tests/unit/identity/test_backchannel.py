"""Back-channel logout delivery (OIDC Back-Channel Logout 1.0): durable, retried, recorded."""

from __future__ import annotations

from pathlib import Path

import httpx
from joserfc import jwt

from gateway.identity.backchannel import (
    LOGOUT_EVENT,
    BackchannelDelivery,
    SqliteLogoutQueue,
    build_logout_token,
)
from gateway.identity.config import BackchannelSettings
from gateway.identity.keys import SigningKeys


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_failed_deliveries_back_off_survive_a_restart_and_are_recorded(
    tmp_path: Path,
) -> None:
    keys = SigningKeys.generate(("ES256",))
    clock = Clock()
    answers = [503, 503, 200]
    received: list[str] = []

    def rp(request: httpx.Request) -> httpx.Response:
        received.append(request.content.decode())
        return httpx.Response(answers.pop(0))

    def sign(client_id: str, sid: str, subject: str) -> str:
        return build_logout_token(
            keys,
            issuer="https://gw.example",
            algorithm="ES256",
            client_id=client_id,
            sid=sid,
            subject=subject,
            now=clock(),
            ttl=120,
        )

    settings = BackchannelSettings(initial_backoff=1.0, max_backoff=10.0, max_attempts=5)
    path = tmp_path / "queue.sqlite3"
    async with httpx.AsyncClient(transport=httpx.MockTransport(rp)) as http:
        queue = await SqliteLogoutQueue.open(path)
        delivery = BackchannelDelivery(queue, http, sign, settings, clock=clock)
        await delivery.enqueue([("portal-b", "https://b.example/bc", "sid-1", "sub-b")])
        assert await delivery.run_once() == 0
        (row,) = await queue.all()
        assert (row.state, row.attempts, row.last_status) == ("pending", 1, 503)
        assert row.next_at == clock() + 1.0
        assert await delivery.run_once() == 0, "not due yet: nothing is sent"
        assert len(received) == 1
        await queue.aclose()

        # A restart: the row is still there and is delivered when due.
        queue = await SqliteLogoutQueue.open(path)
        delivery = BackchannelDelivery(queue, http, sign, settings, clock=clock)
        clock.now += 1.0
        assert await delivery.run_once() == 0
        clock.now += 2.0
        assert await delivery.run_once() == 1
        (row,) = await queue.all()
        assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 200)
        assert row.delivered_at == clock()
        await queue.aclose()

    token = received[-1].removeprefix("logout_token=")
    decoded = jwt.decode(token, keys.public_key_set(), algorithms=["ES256"])
    assert decoded.header["typ"] == "logout+jwt"
    assert decoded.claims["sid"] == "sid-1"
    assert decoded.claims["aud"] == "portal-b"
    assert LOGOUT_EVENT in decoded.claims["events"]
    assert "nonce" not in decoded.claims


async def test_gives_up_after_max_attempts_and_keeps_the_row(tmp_path: Path) -> None:
    clock = Clock()
    settings = BackchannelSettings(initial_backoff=1.0, max_attempts=2)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as http:
        queue = await SqliteLogoutQueue.open(tmp_path / "q.sqlite3")
        delivery = BackchannelDelivery(queue, http, lambda *a: "t", settings, clock=clock)
        await delivery.enqueue([("c", "https://c.example/bc", "s", "u")])
        await delivery.run_once()
        clock.now += 5
        await delivery.run_once()
        (row,) = await queue.all()
        assert (row.state, row.attempts, row.last_error) == ("failed", 2, "ConnectError")
        assert await queue.next_due() is None
        await queue.aclose()
