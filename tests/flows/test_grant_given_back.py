"""A counted grant is spent only by a call that may have reached the back-end, over real HTTP.

On the demo gateway with the consent book the app opens itself (SQLite): 韩雪梅 gives the Qinghai
portal one look at her Shaanxi housing-fund account, and 马文华, signed in there, presents it.
When his call fails before the request leaves the gateway (the fund centre's circuit open, its
port refusing connections), the single use is given back (a ``consent_returned`` record, shown
in her access log) and the grant still opens exactly one call afterwards. When the fund centre
answered, even with an error, the use stays spent. (The fund centre is given one attempt per
call here, so that "not reached" is what the call's trace proves.)
"""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from gateway.audit.record import EventType
from gateway.demo.backends import SHAANXI_HOUSING
from gateway.demo.residents import HAN_XUEMEI
from tests.flows.conftest import (
    CONFIG_DIR,
    Journey,
    audit_verify,
    config_tried_once,
    consent_trail,
    demo_journey,
    grant_uses,
    open_circuit,
)

PORTAL = "demo-portal-qinghai"
FUND = "housing-fund-transfer"
PURPOSE = "住房公积金异地转移接续"
HAN_ACCOUNT = "610100201300789012"


@pytest.fixture
async def journey(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    log_stream: io.BytesIO,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Journey]:
    """The demo, the fund centre tried once per call (a 503 is not retried into a 200);
    ``indirect`` parametrisation with "retries" keeps the configured retries."""
    if getattr(request, "param", "once") == "once":
        config = config_tried_once(tmp_path, SHAANXI_HOUSING)
    else:
        config = tmp_path / "config"
        shutil.copytree(CONFIG_DIR, config)
    async with demo_journey(tmp_path, monkeypatch, config_dir=config) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path) == 0


def han(journey: Journey) -> dict[str, str]:
    token = journey.issuer.issue(
        "demo-han-xuemei",
        "L3",
        client_id=PORTAL,
        person=journey.keys.person(HAN_XUEMEI.id_number).key,
    )
    return {"Authorization": f"Bearer {token}"}


async def single_use_grant(journey: Journey) -> str:
    response = await journey.client.post(
        "/api/v1/me/consents",
        json={
            "requester": {"client": PORTAL},
            "services": [FUND],
            "operations": ["account-query"],
            "purpose": PURPOSE,
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "max_uses": 1,
        },
        headers=han(journey),
    )
    grant = await response.json()
    assert response.status == 201, grant
    return str(grant["id"])


async def her_account(journey: Journey, grant: str) -> tuple[int, dict[str, Any]]:
    """马文华 (citizen-l3, at the Qinghai portal) asks for 韩雪梅's account under her grant."""
    return await journey.call(
        FUND,
        {
            "operation": "account-query",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": PURPOSE,
            "data": {"account_no": HAN_ACCOUNT, "id_number": HAN_XUEMEI.id_number},
            "consent": grant,
        },
    )


async def test_a_paused_back_end_gives_the_single_use_back(journey: Journey) -> None:
    grant = await single_use_grant(journey)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    breaker = open_circuit(journey, SHAANXI_HOUSING)

    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (503, "backend.circuit_open"), problem
    assert fund.count == 0
    assert await grant_uses(journey, grant) == 0, "nobody's data was touched: the use is back"

    breaker.record_success()  # the fund centre is back
    status, answer = await her_account(journey, grant)
    assert status == 200, answer
    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert fund.count == 1

    assert await consent_trail(journey, grant) == [
        (EventType.CONSENT_GRANTED, None),
        (EventType.CONSENT_USED, 0),
        (EventType.CONSENT_RETURNED, 1),
        (EventType.CONSENT_USED, 0),
        (EventType.CONSENT_REFUSED, None),
    ]
    response = await journey.client.get("/api/v1/me/access-log", headers=han(journey))
    log = await response.json()
    assert response.status == 200, log
    kinds = [e["kind"] for e in log["entries"] if e["grant_id"] == grant]
    assert kinds.count("grant_returned") == 1, kinds
    assert HAN_XUEMEI.id_number not in str(log)


@pytest.mark.parametrize("journey", ["once", "retries"], indirect=True)
async def test_a_back_end_refusing_connections_gives_the_single_use_back(
    journey: Journey,
) -> None:
    """Refused on its only attempt, or on every one of its retries: nothing was sent."""
    grant = await single_use_grant(journey)
    running = journey.backends.running[SHAANXI_HOUSING]
    (site,) = running.runner.sites
    address = URL(running.base_url)
    await site.stop()  # nothing listens: the connection is refused
    try:
        status, problem = await her_account(journey, grant)
        assert (status, problem["code"]) == (503, "backend.unavailable"), problem
    finally:
        await web.TCPSite(running.runner, address.host, address.port).start()  # back again
    assert running.recorder.count == 0
    assert await grant_uses(journey, grant) == 0

    status, answer = await her_account(journey, grant)
    assert status == 200, answer
    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert running.recorder.count == 1


async def test_a_back_end_that_answered_keeps_the_use_spent(journey: Journey) -> None:
    grant = await single_use_grant(journey)
    fund = journey.backends.recorder(SHAANXI_HOUSING)
    fund.trouble.retry_after = None
    fund.trouble.fail_next = 1  # it answers 503: whether it did anything is unknown

    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (502, "backend.server_error"), problem
    assert fund.count == 1, "the request reached the fund centre"
    assert await grant_uses(journey, grant) == 1

    status, problem = await her_account(journey, grant)
    assert (status, problem["code"]) == (403, "client.grant_used_up"), problem
    assert fund.count == 1
    assert EventType.CONSENT_RETURNED not in [t for t, _ in await consent_trail(journey, grant)]
