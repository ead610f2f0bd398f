"""Ready-made case submissions for `tongban demo`: S1, S2, S3, S4, S8, S9, S10, S12, S13 as
durable cases (办件), and how to follow a case (status URL, event stream, CLI). S12 needs no
upload (免证办): the birth medical certificate is found and verified at Shaanxi's e-licence system;
a revoked certificate and a record altered behind its seal are refused, no case made. S13 is
linked (联动办理): once as it succeeds, once refused at registration with the steps already taken
undone. S10 is taken in at a window: the clerk's own token and a Counter token by token
exchange (gateway/identity/token_exchange.py), never a development token."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from gateway.demo.licence_system import BIRTH_CERTIFICATE_ALTERED, BIRTH_CERTIFICATE_REVOKED
from gateway.demo.property_transfer import BUYER, SEIZED_UNITS, SELLER
from gateway.demo.residents import MA_WENHUA, SU_LANXIN
from gateway.identity.clients import TOKEN_EXCHANGE
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.identifiers import RESIDENT_ID_CARD
from gateway.identity.subject_keys import SubjectKeys
from gateway.identity.token_exchange import ACCESS_TOKEN_TYPE, ID_DOCUMENT_TOKEN_TYPE

ID_CARD = {
    "code": "resident-id-card",
    "ref": "elicence:63:resident-id-card:demo-0001",
    "digest": "sha256:" + "3" * 64,
}

DEMO_CASES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "S1",
        "pension transfer as a case: Qinghai takes it in, the worker forwards it, polls its status",
        "demo-s1-case-0001",
        {
            "service": "pension-transfer",
            "operation": "transfer-application",
            "receiving_province": "63",
            "handling_province": "63",
            "purpose": "企业职工养老保险关系转移接续",
            "data": {
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "insurance_number": "6301002023004567",
                "out_province": "61",
                "contribution_certificate_no": "61SICDEMO0000001",
            },
            "materials": [ID_CARD],
        },
    ),
    (
        "S4",
        "housing-fund transfer as a case: the old centre's confirmation closes it "
        "(a second transfer of the same account is 不予受理)",
        "demo-s4-case-0001",
        {
            "service": "housing-fund-transfer",
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
            "materials": [ID_CARD],
        },
    ),
    (
        "S3",
        "household move (多地联办): Gansu confirms the move-out, Qinghai issues the permit",
        "demo-s3-case-0001",
        {
            "service": "household-move",
            "mode": "joint",
            "receiving_province": "63",
            "parts": [
                {"handling_province": "62", "operation": "move-out"},
                {"handling_province": "63", "operation": "move-in"},
            ],
            "purpose": "兰西城市群户口迁移",
            "data": {
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "from_region": "620102",
                "to_region": "630104",
                "reason": "work",
            },
            "materials": [ID_CARD, {**ID_CARD, "code": "household-register"}],
        },
    ),
)

S2_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S2",
    "filing for treatment in Shaanxi, handled by Qinghai's medical insurance (issued at once)",
    "demo-s2-case-0001",
    {
        "service": "medical-filing",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "异地就医备案",
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "treatment_province": "61",
            "filing_type": "resident-elsewhere",
            "valid_from": "2026-12-01",
        },
        "materials": [{**ID_CARD, "code": "medical-insurance-voucher"}],
    },
)

# S8 (企业开办 bundle) is an enterprise's application (level LP), so it goes with its token,
# which names the enterprise (the data subject: its credit code).
S8_CREDIT_CODE = "91610113MA6TXXXX0Q"
S8_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S8",
    "branch in Qinghai: one application fans out to registration, seal, invoices, insurance",
    "demo-s8-case-0001",
    {
        "service": "branch-registration",
        "receiving_province": "63",
        "parts": [
            {"handling_province": "63", "operation": op}
            for op in ("registration", "seal-filing", "invoices", "social-insurance")
        ],
        "purpose": "跨省设立分支机构",
        "data": {
            "credit_code": S8_CREDIT_CODE,
            "parent_name": "西安秦川示例电子有限公司",
            "branch_name": "西安秦川示例电子有限公司西宁分公司",
            "branch_address": "西宁市城西区示范大街8号",
            "principal_name": MA_WENHUA.name,
            "principal_id_number": MA_WENHUA.id_number,
        },
        "materials": [
            # 免证办: found and verified at Shaanxi's e-licence system by the credit code.
            {"code": "parent-business-licence", "licence": {}},
            {
                "code": "representative-authorisation",
                "ref": "urn:upload:demo-1",
                "digest": ID_CARD["digest"],
            },
        ],
    },
)

# S9 (申请公共租赁住房): first the e-sealed proof is pulled from Jiangsu with the holder's
# authorisation, then the application names it (number, digest, seal from that answer).
S9_PROOF_CALL: dict[str, Any] = {
    "operation": "contribution-proof",
    "receiving_province": "63",
    "handling_province": "32",
    "purpose": "申请公共租赁住房",
    "data": {"id_number": MA_WENHUA.id_number, "name": MA_WENHUA.name},
}
S9_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S9",
    "public rental housing in Qinghai with the Jiangsu proof: fill in proof.number, "
    "proof.seal_digest and proof.seal_value from the answer above; Qinghai checks the seal",
    "demo-s9-case-0001",
    {
        "service": "public-rental-housing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "申请公共租赁住房",
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "household_size": 2,
            "proof_number": "<proof.number>",
            "proof_seal_digest": "<proof.seal_digest>",
            "proof_seal_value": "<proof.seal_value>",
        },
        "materials": [
            ID_CARD,
            {
                "code": "contribution-proof",
                "ref": "urn:proof:32:<proof.number>",
                "digest": "<proof.seal_digest>",
            },
        ],
    },
)

# S10 (异地代收代办) is taken in by a window clerk, so it goes with a Counter token for the
# applicant, the clerk as actor (token exchange at the window, banner below).
S10_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S10",
    "disability card at a Shaanxi window (Counter token: originals checked, forwarded to Qinghai)",
    "demo-s10-case-0001",
    {
        "service": "disability-card",
        "mode": "proxy",
        "receiving_province": "61",
        "handling_province": "63",
        "purpose": "残疾人证异地代收代办",
        "data": {
            "id_number": SU_LANXIN.id_number,
            "name": SU_LANXIN.name,
            "disability_category": "hearing",
            "mailing_address": "西安市雁塔区示范路1号",
        },
        "materials": [
            {
                "code": "disability-assessment",
                "ref": "urn:scan:61:0001",
                "digest": "sha256:" + "a" * 64,
            },
            {"code": "photo", "ref": "urn:scan:61:0002", "digest": "sha256:" + "b" * 64},
        ],
        "originals_check": {"checked": True, "note": "身份证原件已核验"},
    },
)


# S13 (二手房转移登记及水电气联动过户, 联动办理): the parts and their order are the service's; the
# application names the people, the home and the utility accounts.
S13_DATA: dict[str, Any] = {
    "seller": {"id_number": SELLER.id_number, "name": SELLER.name, "household_province": "63"},
    "buyer": {"id_number": BUYER.id_number, "name": BUYER.name, "household_province": "61"},
    "property": {
        "unit": "西宁市城西区五四大街9号1-2-601",
        "certificate_no": "青(2019)西宁市不动产权第0012345号",
        "price": 1280000,
    },
    "utilities": {
        "electricity_account": "6301001234567",
        "water_account": "63010098765",
        "gas_account": "630100556677",
    },
}
S13_MATERIALS: list[dict[str, str]] = [
    ID_CARD,
    {**ID_CARD, "code": "property-certificate", "ref": "elicence:63:property-certificate:0012345"},
    {
        "code": "sale-contract",
        "ref": "urn:upload:demo-s13-contract",
        "digest": "sha256:" + "5" * 64,
    },
]
S13_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S13",
    "second-hand home in Xining, Shaanxi buyer (联动办理): filing → tax, buyer checked in "
    "Shaanxi → registration → electricity, water, gas",
    "demo-s13-case-0001",
    {
        "service": "second-hand-home-transfer",
        "mode": "joint",
        "receiving_province": "63",
        "purpose": "二手房转移登记及水电气联动过户",
        "data": S13_DATA,
        "materials": S13_MATERIALS,
    },
)
S13_REFUSED: tuple[str, str, str, dict[str, Any]] = (
    "S13",
    "the same for a home under a court seizure: registration refuses (不予受理), the filing "
    "and the tax already done are undone, the utilities never asked",
    "demo-s13-case-0002",
    {
        **S13_CASE[3],
        "data": {
            **S13_DATA,
            "property": {**S13_DATA["property"], "unit": next(iter(SEIZED_UNITS))},
        },
    },
)


# S12 (出生一件事, 免证办): nothing to upload; the gateway finds the birth medical certificate for
# the applying parent at Shaanxi's e-licence system, checks its seal and status there, and sends
# the verification with the case to Qinghai's three agencies.
S12_DATA: dict[str, Any] = {
    "parent": {"id_number": MA_WENHUA.id_number, "name": MA_WENHUA.name},
    "newborn": {"name": "马小禾", "gender": "female"},
    "birth_province": "61",
    "household_address": "西宁市城中区示范巷3号",
}
S12_CASE: tuple[str, str, str, dict[str, Any]] = (
    "S12",
    "出生一件事 in Qinghai for a child born in Xi'an: birth registration, medical insurance, "
    "social-security card; the birth certificate verified at Shaanxi, nothing uploaded",
    "demo-s12-case-0001",
    {
        "service": "newborn-bundle",
        "receiving_province": "63",
        "parts": [
            {"handling_province": "63", "operation": op}
            for op in ("newborn-registration", "medical-insurance", "social-security-card")
        ],
        "purpose": "出生一件事",
        "data": S12_DATA,
    },
)


def _s12_naming(number: str) -> dict[str, Any]:
    return {
        **S12_CASE[3],
        "materials": [{"code": "birth-medical-certificate", "licence": {"number": number}}],
    }


S12_REFUSED: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "S12",
        "the same naming the first certificate, revoked when it was reissued: refused"
        " (422 client.licence_revoked), no case",
        "demo-s12-case-0002",
        _s12_naming(BIRTH_CERTIFICATE_REVOKED),
    ),
    (
        "S12",
        "the same naming a certificate whose record was altered after it was sealed: the seal"
        " does not hold (422 client.licence_seal_invalid), no case",
        "demo-s12-case-0003",
        _s12_naming(BIRTH_CERTIFICATE_ALTERED),
    ),
)


def issue_staff_tokens(issuer: DevTokenIssuer, keys: SubjectKeys | None = None) -> dict[str, str]:
    """Development tokens for the banner's curl lines: an operator (dead letters) and an
    enterprise's agent (S8). A window clerk has no development token: the clerk signs in through
    the staff directory and identifies each applicant by token exchange (window console)."""
    return {
        "operator": issuer.issue("demo-operator", "L3", roles=["operator"]),
        "enterprise": issuer.issue(
            "demo-enterprise-xian-qinchuan",
            "LP",
            client_id="demo-portal-qinghai",
            actor="demo-" + MA_WENHUA.key,
            actor_role="agent",
            enterprise=keys.enterprise(S8_CREDIT_CODE).key if keys is not None else None,
        ),
    }


def _s10_lines(base_url: str, window_console: str, data_dir: Path) -> list[str]:
    """S10 by hand, as the window console does it: the clerk's token → a Counter token for the
    applicant (RFC 8693 token exchange at /oauth2/token) → the case."""
    _scenario, title, key, body = S10_CASE
    exchange = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": ID_DOCUMENT_TOKEN_TYPE,
        "subject_token": f"{RESIDENT_ID_CARD}:{SU_LANXIN.id_number}",
        "actor_token_type": ACCESS_TOKEN_TYPE,
    }
    form = " ".join(f"-d {shlex.quote(f'{k}={v}')}" for k, v in exchange.items())
    secret = data_dir / "identity-secrets.json"
    return [
        f"# S10: {title}",
        f"#   at the window console {window_console} (clerk-61-0007 / demo), or by hand:",
        f"#   WINDOW_SECRET = window_shaanxi_secret in {secret};"
        " CLERK_TOKEN = the clerk's access token (sign in as demo-window-shaanxi)",
        f"curl -s {shlex.quote(base_url + '/oauth2/token')}"
        ' -u "demo-window-shaanxi:$WINDOW_SECRET"'
        f' {form} -d "actor_token=$CLERK_TOKEN"   # → COUNTER_TOKEN',
        f"curl -s {shlex.quote(base_url + '/api/v1/cases')}"
        ' -H "Authorization: Bearer $COUNTER_TOKEN"'
        f" -H 'Content-Type: application/json' -H 'Idempotency-Key: {key}'"
        f" -d {shlex.quote(json.dumps(body, ensure_ascii=False))}",
        "",
    ]


def cases_banner(
    base_url: str,
    citizen_token: str,
    staff: dict[str, str],
    data_dir: Path,
    *,
    window_console: str = "/window",
    s13_consent: str | None = None,
) -> str:
    """The case lines of the banner; ``s13_consent``: the seller's grant the demo gave the
    citizen token's portal, which the S13 lines present."""
    auth = shlex.quote(f"Authorization: Bearer {citizen_token}")
    lines = [
        "",
        "# cases (办件): POST /api/v1/cases with an Idempotency-Key; repeat it: same case",
        "",
    ]
    enterprise = shlex.quote(f"Authorization: Bearer {staff['enterprise']}")
    plan = [(case, auth) for case in (*DEMO_CASES, S2_CASE)]
    plan += [(S8_CASE, enterprise), (S9_CASE, auth), (S13_CASE, auth), (S13_REFUSED, auth)]
    plan += [(S12_CASE, auth), *((case, auth) for case in S12_REFUSED)]
    proof_url = base_url + "/api/v1/services/public-rental-housing/calls"
    noted = False
    for (scenario, title, key, case_body), header in plan:
        body = case_body
        if scenario == "S13":
            if not noted:
                noted = True
                lines += [
                    "# S13 names both co-applicants: the buyer (马文华, signed in) and the seller",
                    "# (韩雪梅). Her part is reached only under her consent grant to this portal,",
                    '# which the demo gave at start-up ("consent" below); without it the answer',
                    "# is 403 client.not_data_subject and no case is made.",
                ]
            if s13_consent is not None:
                body = {**body, "consent": s13_consent}
        if scenario == "S9":
            lines += [
                "# S9: pull the e-sealed contribution proof from Jiangsu (holder's authorisation)",
                f"curl -s {shlex.quote(proof_url)} -H {header} -H 'Content-Type: application/json'"
                f" -d {shlex.quote(json.dumps(S9_PROOF_CALL, ensure_ascii=False))}",
                "",
            ]
        lines += [
            f"# {scenario}: {title}",
            f"curl -s {shlex.quote(base_url + '/api/v1/cases')} -H {header}"
            f" -H 'Content-Type: application/json' -H 'Idempotency-Key: {key}'"
            f" -d {shlex.quote(json.dumps(body, ensure_ascii=False))}",
            "",
        ]
    lines += _s10_lines(base_url, window_console, data_dir)
    lines += [
        f"# follow: curl -s {base_url}/api/v1/cases -H {auth}",
        f"# window queue (clerk): curl -s '{base_url}/api/v1/cases?queue=window'"
        ' -H "Authorization: Bearer $CLERK_TOKEN"',
        f"# dead letters (operator): curl -s {base_url}/admin/cases/dead-letters"
        f" -H {shlex.quote('Authorization: Bearer ' + staff['operator'])}",
        f"# events (status changes, 好差评 on closure): tail -f {data_dir / 'case-events.jsonl'}",
        f"# CLI: tongban cases list --data-dir {data_dir}",
        "",
    ]
    return "\n".join(lines)
