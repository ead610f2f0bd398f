"""Ready-made demo calls for scenarios S1, S4 and S6, with the tokens of the demo citizens."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from gateway.demo.residents import DUAN_HAORAN, MA_WENHUA, SU_LANXIN
from gateway.identity.devtokens import DevTokenIssuer


@dataclass(frozen=True, slots=True)
class DemoCitizen:
    key: str
    subject: str
    level: str
    who: str


CITIZENS: tuple[DemoCitizen, ...] = (
    DemoCitizen("citizen-l3", "demo-" + MA_WENHUA.key, "L3", "马文华, real person checked (L3)"),
    DemoCitizen("citizen-l2", "demo-" + SU_LANXIN.key, "L2", "苏兰心, real name checked (L2)"),
    DemoCitizen("citizen-l1", "demo-" + DUAN_HAORAN.key, "L1", "段浩然, account only (L1)"),
)


@dataclass(frozen=True, slots=True)
class DemoCall:
    scenario: str
    title: str
    service: str
    token_key: str
    body: dict[str, Any]
    idempotency_key: str | None = None


def issue_demo_tokens(issuer: DevTokenIssuer) -> dict[str, dict[str, str]]:
    return {
        c.key: {
            "subject": c.subject,
            "level": c.level,
            "who": c.who,
            "token": issuer.issue(c.subject, c.level, client_id="demo-portal-qinghai"),
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
        "degree verification with the holder's authorisation (REST, HMAC-signed, quirky answer)",
        "degree-verification",
        "citizen-l2",
        {
            "operation": "verify",
            "receiving_province": "63",
            "handling_province": "61",
            "purpose": "用人单位招聘学历核验",
            "authorisation_ref": "AUTH-2026-0001",
            "data": {
                "name": SU_LANXIN.name,
                "id_number": SU_LANXIN.id_number,
                "certificate_number": "106971202005123456",
            },
        },
    ),
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
