"""S14 企业信用信息授权查询, the consent side, end to end on the demo gateway and Qinghai's demo
credit platform: a Qinghai enterprise reads its own record, its operator grants a Shaanxi bank's
system consent to the non-public summary, the bank's use is accepted once, revocation stops
the next at once, and the enterprise's operators see every use and refusal in its access log.
(Whether a call opens the data is the data-subject rule's: it asks this book.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.consent.contract import GrantAsk, GrantRefused, Requester
from gateway.demo.credit import SALT_LAKE
from gateway.http.consents import SUBJECT_KEYS
from gateway.http.keys import STATE
from tests.flows.conftest import Journey

BANK = Requester("demo-bank-shaanxi", province="61")
SERVICE = "enterprise-credit"
PURPOSE = "流动资金贷款审批"


def _operator(journey: Journey, operator: str) -> dict[str, str]:
    enterprise = journey.client.app[SUBJECT_KEYS].enterprise(SALT_LAKE.credit_code)
    token = journey.issuer.issue(
        "pw-salt-lake", "LP", client_id="demo-portal-qinghai", actor=operator,
        actor_role="agent", enterprise=enterprise.key,
    )  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


async def _call(
    journey: Journey, headers: dict[str, str], operation: str, data: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    body = {
        "operation": operation,
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "核对本企业信用记录",
        "data": data,
    }
    response = await journey.client.post(
        f"/api/v1/services/{SERVICE}/calls", json=body, headers=headers
    )
    return response.status, await response.json(content_type=None)


async def test_s14_the_enterprise_grants_the_bank_and_sees_every_use(journey: Journey) -> None:
    operator = _operator(journey, "pw-han")
    # The enterprise reads its own public record and non-public summary at the Qinghai portal.
    status, public = await _call(
        journey, operator, "public-summary", {"enterprise_name": SALT_LAKE.name}
    )
    assert status == 200, public
    assert public["data"]["credit_code"] == SALT_LAKE.credit_code
    assert public["data"]["penalties"][0]["authority"] == "西宁市生态环境局"
    status, summary = await _call(
        journey, operator, "nonpublic-summary", {"credit_code": SALT_LAKE.credit_code}
    )
    assert status == 200, summary
    assert summary["data"]["tax_grade"] == "A"
    assert summary["data"]["utility_arrears"] is True
    assert "18342.50" not in str(summary), "a summary, never the raw detail"

    # The operator grants the bank's system one look at the non-public summary.
    until = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    grant_body = {
        "requester": {"client": BANK.client_id, "province": "61"},
        "services": [SERVICE],
        "operations": ["nonpublic-summary"],
        "purpose": PURPOSE,
        "expires_at": until,
        "max_uses": 1,
        "enterprise": SALT_LAKE.credit_code,
    }
    response = await journey.client.post("/api/v1/me/consents", json=grant_body, headers=operator)
    grant = await response.json()
    assert response.status == 201, grant

    book = journey.client.app[STATE].consent
    assert book is not None
    subject = journey.client.app[SUBJECT_KEYS].enterprise(SALT_LAKE.credit_code)
    ask = GrantAsk(grant["id"], subject, BANK, SERVICE, "nonpublic-summary", PURPOSE)
    assert (await book.use(ask)).uses_left == 0
    refusals = [
        (ask, "client.grant_used_up"),
        (GrantAsk(grant["id"], subject, BANK, SERVICE, "public-summary", PURPOSE),
         "client.grant_other_service"),
        (GrantAsk(grant["id"], subject, Requester("demo-bank-shaanxi", province="63"), SERVICE,
                  "nonpublic-summary", PURPOSE), "client.grant_other_requester"),
    ]  # fmt: skip
    for bad, code in refusals:
        with pytest.raises(GrantRefused) as refused:
            await book.use(bad)
        assert refused.value.code == code

    # A standing grant for the loan's term; revoked, it stops the very next use.
    standing = {**grant_body, "max_uses": None}
    del standing["max_uses"]
    response = await journey.client.post("/api/v1/me/consents", json=standing, headers=operator)
    second = await response.json()
    assert response.status == 201, second
    again = GrantAsk(second["id"], subject, BANK, SERVICE, "nonpublic-summary", PURPOSE)
    assert (await book.use(again)).uses_left is None
    response = await journey.client.delete(
        f"/api/v1/me/consents/{second['id']}", headers=_operator(journey, "pw-another")
    )
    assert response.status == 200
    with pytest.raises(GrantRefused) as refused:
        await book.use(again)
    assert refused.value.code == "client.grant_revoked"

    # Every operator of the enterprise sees the bank's uses and refusals, newest first (uses
    # and refusals are buffered records: the last joins a group commit a moment later).
    by_bank: list[tuple[Any, Any, Any]] = []
    for _ in range(100):
        response = await journey.client.get("/api/v1/me/access-log", headers=operator)
        log = await response.json()
        assert response.status == 200, log
        by_bank = [
            (e["kind"], e["grant_id"], e["error_code"])
            for e in log["entries"]
            if e["client"] == BANK.client_id
        ]
        if len(by_bank) >= 6:
            break
        await asyncio.sleep(0.02)
    assert by_bank == [
        ("grant_refused", second["id"], "client.grant_revoked"),
        ("grant_used", second["id"], None),
        ("grant_refused", grant["id"], "client.grant_other_requester"),
        ("grant_refused", grant["id"], "client.grant_other_service"),
        ("grant_refused", grant["id"], "client.grant_used_up"),
        ("grant_used", grant["id"], None),
    ]
    assert all(
        e["receiving_province"]["code"] == "61" for e in log["entries"] if e["client"] == BANK.client_id
        and e["error_code"] != "client.grant_other_requester"
    )  # fmt: skip
    assert SALT_LAKE.credit_code not in str(log), "the subject only as a keyed digest"
