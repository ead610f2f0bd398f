"""Institutions as machine clients, and clients that receive for their own provinces only, on the
real provider (client-credentials tokens from /oauth2/token) and the demo back-ends.

An institution (a bank on a credit platform) admitted to a service by configuration reads
public data freely and a person's data only under a consent grant naming it; a client names
only a receiving province it is registered for.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.consent.contract import DataSubject
from gateway.demo.backends import QINGHAI_CREDIT, SHAANXI_DEGREE, SHAANXI_SI
from gateway.demo.cases import DEMO_CASES
from gateway.demo.credit import SALT_LAKE
from gateway.demo.residents import HAN_XUEMEI, MA_WENHUA, SU_LANXIN, Resident
from gateway.identity.devtokens import DevTokenIssuer
from gateway.identity.subject_keys import SubjectKeys
from tests.consent_books import MemoryConsentBook, TestGrant
from tests.flows.conftest import CONFIG_DIR
from tests.flows.portal_stack import PortalStack, portal_stack

BANK = "demo-bank-test"
CREDIT = "enterprise-credit"
BANK_SECRET = "bank-secret-0123456789abcdef"
DEPT_QH = "dept-si-qinghai"
DEPT_SX = "dept-si-shaanxi"
DEPT_SECRET = "dept-secret-0123456789abcdef"
ISSUER = DevTokenIssuer()
BANK_CLIENT = f"""
  {BANK}:
    name: 示范银行（测试）Test bank
    type: confidential
    client_secret: {{env: TEST_BANK_SECRET}}
    grant_types: [client_credentials]
    scopes: [services:call]
    allowed_services: [degree-verification]
    provinces: ["63"]
    acts_as: institution
  {DEPT_QH}:
    name: 青海省社保经办系统（测试）Qinghai social-insurance office system
    type: confidential
    client_secret: {{env: TEST_DEPT_SECRET}}
    grant_types: [client_credentials]
    scopes: [services:call]
    allowed_services: [pension-transfer, medical-filing]
    provinces: ["63"]
    acts_as: department
  {DEPT_SX}:
    name: 陕西省社保经办系统（测试）Shaanxi social-insurance office system
    type: confidential
    client_secret: {{env: TEST_DEPT_SECRET}}
    grant_types: [client_credentials]
    scopes: [services:call]
    allowed_services: [pension-transfer]
    provinces: ["61"]
    acts_as: department
"""


@pytest.fixture
def book() -> MemoryConsentBook:
    return MemoryConsentBook()


@pytest.fixture
async def stack(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch, book: MemoryConsentBook
) -> AsyncIterator[PortalStack]:
    async with _stack(tmp_path, monkeypatch, book) as stack:
        yield stack


@pytest.fixture
async def own_book_stack(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PortalStack]:
    """The stack with the consent book the app opens itself (SQLite, in the data directory)."""
    async with _stack(tmp_path, monkeypatch, None) as stack:
        yield stack


@contextlib.asynccontextmanager
async def _stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, book: MemoryConsentBook | None
) -> AsyncIterator[PortalStack]:
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    with (config / "clients.yaml").open("a", encoding="utf-8") as clients:
        clients.write(BANK_CLIENT)
    async with portal_stack(
        tmp_path,
        monkeypatch,
        config_dir=config,
        env={"TEST_BANK_SECRET": BANK_SECRET, "TEST_DEPT_SECRET": DEPT_SECRET},
        consent_book=book,
        dev_tokens=ISSUER,
    ) as stack:
        yield stack


async def bank_token(stack: PortalStack, client: str = BANK, secret: str = BANK_SECRET) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.sso.gateway}/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "scope": "services:call",
                "client_id": client,
                "client_secret": secret,
            },
        ) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        return str(body["access_token"])


async def call(
    stack: PortalStack, token: str, body: dict[str, Any], service: str = "degree-verification"
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.sso.gateway}/api/v1/services/{service}/calls",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


def verify(receiving: str = "63", **extra: Any) -> dict[str, Any]:
    return {
        "operation": "verify",
        "receiving_province": receiving,
        "handling_province": "61",
        "purpose": "贷款审核学历核验",
        "data": {
            "name": SU_LANXIN.name,
            "id_number": SU_LANXIN.id_number,
            "certificate_number": "106971202005123456",
        },
        **extra,
    }


def subject_keys(stack: PortalStack) -> SubjectKeys:
    settings = stack.sso.provider.settings
    assert settings.link_secret is not None
    return SubjectKeys(pairwise_secret=settings.pairwise_secret, link_secret=settings.link_secret)


async def test_an_institution_reads_a_persons_data_only_under_a_grant_naming_it(
    stack: PortalStack, book: MemoryConsentBook
) -> None:
    token = await bank_token(stack)
    degree = stack.sso.backends.recorder(SHAANXI_DEGREE)
    degree.clear()

    # Admitted to the service by configuration (no person's level applies to a system), but
    # the degree is 苏兰心's: without her grant, nothing is sent.
    status, problem = await call(stack, token, verify())
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert degree.count == 0

    su = subject_keys(stack).person(SU_LANXIN.id_number)
    book.grants["g-su-bank"] = TestGrant(su, BANK, "degree-verification", uses=1)
    status, answer = await call(stack, token, verify(consent="g-su-bank"))
    assert status == 200, answer
    (ask,) = book.asks
    assert ask.requester.client_id == BANK
    assert ask.requester.person is None  # an institution: no person behind the request
    assert ask.requester.province == "63"
    (seen,) = degree.requests
    assert seen.context["authorisation_ref"] == "g-su-bank"
    assert seen.context["client"] == BANK

    # A one-use grant is spent.
    status, problem = await call(stack, token, verify(consent="g-su-bank"))
    assert (status, problem["code"]) == (403, "client.grant_refused"), problem
    assert degree.count == 1

    # A grant naming another requester (her portal) does not open it for the bank.
    book.grants["g-su-portal"] = TestGrant(su, "demo-portal-qinghai", "degree-verification")
    status, problem = await call(stack, token, verify(consent="g-su-portal"))
    assert (status, problem["code"]) == (403, "client.grant_refused"), problem
    assert book.asks[-1].subject == DataSubject("person", su.key)


async def test_a_client_names_only_a_province_it_receives_for(stack: PortalStack) -> None:
    token = await bank_token(stack)
    status, problem = await call(stack, token, verify(receiving="61"))
    assert (status, problem["code"]) == (403, "client.province_not_allowed"), problem
    assert problem["receiving_province"] == "61"
    assert stack.sso.backends.recorder(SHAANXI_DEGREE).count == 0


def history(who: Resident, **extra: Any) -> dict[str, Any]:
    return {
        "operation": "contribution-history",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "企业职工养老保险关系转移接续",
        "data": {
            "id_number": who.id_number,
            "name": who.name,
            "insurance_number": "6101002010000123",
        },
        **extra,
    }


async def test_a_department_acts_by_its_authority_only_within_an_open_case_it_handles(
    stack: PortalStack,
) -> None:
    # 马文华 files his pension transfer in Qinghai (a case, polled for its status: open).
    keys = subject_keys(stack)
    citizen = ISSUER.issue(
        "demo-ma-wenhua",
        "L3",
        client_id="demo-portal-qinghai",
        person=keys.person(MA_WENHUA.id_number).key,
    )
    _scenario, _title, key, body = next(
        c for c in DEMO_CASES if c[3]["service"] == "pension-transfer"
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.sso.gateway}/api/v1/cases",
            json=body,
            headers={"Authorization": f"Bearer {citizen}", "Idempotency-Key": key},
        ) as response,
    ):
        receipt = await response.json()
        assert response.status == 202, receipt
    case_id = receipt["case_id"]
    qinghai = await bank_token(stack, DEPT_QH, DEPT_SECRET)
    shaanxi = await bank_token(stack, DEPT_SX, DEPT_SECRET)
    si = stack.sso.backends.recorder(SHAANXI_SI)
    si.clear()

    # Without a case, a department has no authority at all.
    status, problem = await call(stack, qinghai, history(MA_WENHUA), "pension-transfer")
    assert (status, problem["code"]) == (403, "client.no_case_authority"), problem
    # Its case: the applicant's contribution history, from Shaanxi.
    status, answer = await call(
        stack, qinghai, history(MA_WENHUA, case_id=case_id), "pension-transfer"
    )
    assert status == 200, answer
    (seen,) = si.requests
    assert seen.context["case_id"] == case_id
    assert seen.context["client"] == DEPT_QH
    # Someone the case is not about: no authority reaches her.
    status, problem = await call(
        stack, qinghai, history(HAN_XUEMEI, case_id=case_id), "pension-transfer"
    )
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    # Another province's department neither receives for Qinghai nor handles the case.
    status, problem = await call(
        stack, shaanxi, history(MA_WENHUA, case_id=case_id), "pension-transfer"
    )
    assert (status, problem["code"]) == (403, "client.province_not_allowed"), problem
    # The case is its authority for that case's service only.
    filing = {
        "operation": "file",
        "receiving_province": "63",
        "handling_province": "63",
        "purpose": "异地就医备案",
        "case_id": case_id,
        "data": {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "treatment_province": "61",
            "filing_type": "resident-elsewhere",
            "valid_from": "2026-12-01",
        },
    }
    status, problem = await call(stack, qinghai, filing, "medical-filing")
    assert (status, problem["code"]) == (403, "client.no_case_authority"), problem
    # An unknown case is no authority either.
    status, problem = await call(
        stack, qinghai, history(MA_WENHUA, case_id="TB6320261206ABCDEF012345"), "pension-transfer"
    )
    assert (status, problem["code"]) == (403, "client.no_case_authority"), problem
    assert len(si.requests) == 1


async def test_s14_the_bank_reads_the_summary_under_the_enterprises_grant_until_revoked(
    own_book_stack: PortalStack,
) -> None:
    """S14 through the real consent book: the Shaanxi bank's system (client credentials) reads
    a Qinghai enterprise's public record freely and its non-public summary only under the grant
    the enterprise's operator gave it; revoked, the grant stops the very next call."""
    stack = own_book_stack
    gateway = stack.sso.gateway
    enterprise = subject_keys(stack).enterprise(SALT_LAKE.credit_code)
    operator = ISSUER.issue(
        "pw-salt-lake", "LP", client_id="demo-portal-qinghai", actor="pw-han",
        actor_role="agent", enterprise=enterprise.key,
    )  # fmt: skip
    bank = await bank_token(stack, "demo-bank-shaanxi", os.environ["TONGBAN_SECRET_BANK_SHAANXI"])
    credit = stack.sso.backends.recorder(QINGHAI_CREDIT)

    def ask(operation: str, data: dict[str, str], **extra: Any) -> dict[str, Any]:
        return {
            "operation": operation,
            "receiving_province": "61",
            "handling_province": "63",
            "purpose": "流动资金贷款审批",
            "data": data,
            **extra,
        }

    summary = {"credit_code": SALT_LAKE.credit_code}
    status, public = await call(
        stack, bank, ask("public-summary", {"enterprise_name": SALT_LAKE.name}), CREDIT
    )
    assert status == 200, public
    status, problem = await call(stack, bank, ask("nonpublic-summary", summary), CREDIT)
    assert (status, problem["code"]) == (403, "client.not_data_subject"), problem
    assert [r.operation for r in credit.requests] == ["public_record"]

    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway}/api/v1/me/consents",
            json={
                "requester": {"client": "demo-bank-shaanxi", "province": "61"},
                "services": [CREDIT],
                "operations": ["nonpublic-summary"],
                "purpose": "流动资金贷款审批",
                "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
                "enterprise": SALT_LAKE.credit_code,
            },
            headers={"Authorization": f"Bearer {operator}"},
        ) as response:
            grant = await response.json()
            assert response.status == 201, grant
        status, answer = await call(
            stack, bank, ask("nonpublic-summary", summary, consent=grant["id"]), CREDIT
        )
        assert status == 200, answer
        assert answer["data"]["tax_grade"] == "A"
        assert credit.requests[-1].context["authorisation_ref"] == grant["id"]
        async with http.delete(
            f"{gateway}/api/v1/me/consents/{grant['id']}",
            headers={"Authorization": f"Bearer {operator}"},
        ) as response:
            assert response.status == 200
        status, problem = await call(
            stack, bank, ask("nonpublic-summary", summary, consent=grant["id"]), CREDIT
        )
        assert (status, problem["code"]) == (403, "client.grant_revoked"), problem
        assert len(credit.requests) == 2
        # The enterprise's operators see the bank's call in its access log.
        async with http.get(
            f"{gateway}/api/v1/me/access-log", headers={"Authorization": f"Bearer {operator}"}
        ) as response:
            log = await response.json()
            assert response.status == 200, log
    by_bank = [e for e in log["entries"] if e["client"] == "demo-bank-shaanxi"]
    assert any(e["grant_id"] == grant["id"] and e["error_code"] is None for e in by_bank), by_bank
    assert SALT_LAKE.credit_code not in str(log)
