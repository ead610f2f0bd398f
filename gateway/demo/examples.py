"""Ready-made demo calls for scenarios S1, S4 and S6, with the tokens of the demo citizens."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from gateway.demo.residents import DUAN_HAORAN, HAN_XUEMEI, MA_WENHUA, SU_LANXIN, Resident
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.subject_keys import SubjectKeys


@dataclass(frozen=True, slots=True)
class DemoCitizen:
    key: str
    subject: str
    level: str
    who: str
    resident: Resident


CITIZENS: tuple[DemoCitizen, ...] = (
    DemoCitizen(
        "citizen-l3", "demo-" + MA_WENHUA.key, "L3", "马文华, real person checked (L3)", MA_WENHUA
    ),
    DemoCitizen(
        "citizen-l2", "demo-" + SU_LANXIN.key, "L2", "苏兰心, real name checked (L2)", SU_LANXIN
    ),
    DemoCitizen(
        "citizen-l1", "demo-" + DUAN_HAORAN.key, "L1", "段浩然, account only (L1)", DUAN_HAORAN
    ),
)


@dataclass(frozen=True, slots=True)
class DemoCall:
    scenario: str
    title: str
    service: str
    token_key: str
    body: dict[str, Any]
    idempotency_key: str | None = None


def issue_demo_tokens(
    issuer: DevTokenIssuer, keys: SubjectKeys | None = None
) -> dict[str, dict[str, str]]:
    """The demo citizens' tokens; with ``keys``, each names its person (the key of its ID
    number), so the subject rule knows the data they name as their own."""
    return {
        c.key: {
            "subject": c.subject,
            "level": c.level,
            "who": c.who,
            "token": issuer.issue(
                c.subject,
                c.level,
                client_id="demo-portal-qinghai",
                person=keys.person(c.resident.id_number).key if keys is not None else None,
            ),
        }
        for c in CITIZENS
    }


DEMO_CALLS: tuple[DemoCall, ...] = (
    DemoCall(
        "S1",
        "pension transfer: contribution history and e-sealed certificate from Shaanxi (SOAP)",
        "pension-transfer",
        "citizen-l3",
        {
            "operation": "contribution-history",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "企业职工养老保险关系转移接续",
            "data": {
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "insurance_number": "6101002010000123",
            },
        },
    ),
    DemoCall(
        "S4",
        "housing-fund transfer: account at the Shaanxi fund centre (REST, API key)",
        "housing-fund-transfer",
        "citizen-l3",
        {
            "operation": "account-query",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "住房公积金异地转移接续",
            "data": {"account_no": "610100201000123456", "id_number": MA_WENHUA.id_number},
        },
    ),
    DemoCall(
        "S4",
        "housing-fund transfer: confirm the transfer (idempotent: repeat it, same transfer id)",
        "housing-fund-transfer",
        "citizen-l3",
        {
            "operation": "transfer",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "住房公积金异地转移接续",
            "data": {
                "account_no": "610100201000123456",
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "in_centre_code": "630100",
            },
        },
        idempotency_key="demo-s4-transfer-0001",
    ),
    DemoCall(
        "S6",
        "degree verification of one's own degree (REST, HMAC-signed, quirky answer)",
        "degree-verification",
        "citizen-l2",
        {
            "operation": "verify",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "本人学历学位核验",
            "data": {
                "name": SU_LANXIN.name,
                "id_number": SU_LANXIN.id_number,
                "certificate_number": "106971202005123456",
            },
        },
    ),
)


# What the subject rule refuses: a citizen naming someone else's ID number gets 403
# client.not_data_subject, and nothing reaches the fund centre.
REFUSED_CALL = DemoCall(
    "S4",
    "refused: 马文华 asks for 韩雪梅's housing-fund account (403 client.not_data_subject)",
    "housing-fund-transfer",
    "citizen-l3",
    {
        "operation": "account-query",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "住房公积金异地转移接续",
        "data": {"account_no": "610100201300789012", "id_number": HAN_XUEMEI.id_number},
    },
)


def curl_line(base_url: str, call: DemoCall, tokens: dict[str, dict[str, str]]) -> str:
    parts = [
        "curl -s",
        shlex.quote(f"{base_url}/api/v1/services/{call.service}/calls"),
        "-H",
        shlex.quote(f"Authorization: Bearer {tokens[call.token_key]['token']}"),
        "-H 'Content-Type: application/json'",
    ]
    if call.idempotency_key:
        parts += ["-H", shlex.quote(f"Idempotency-Key: {call.idempotency_key}")]
    parts += ["-d", shlex.quote(json.dumps(call.body, ensure_ascii=False))]
    return " ".join(parts)
