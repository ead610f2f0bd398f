"""批量用证: per requester and licence type, a volume without the issuer's approval; over it the
verification is refused before the issuer is asked, and audited; an approved requester goes on."""

from __future__ import annotations

import asyncio
import copy
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.backends import SHAANXI_LICENCE
from gateway.demo.cases import S12_CASE
from tests.flows.conftest import CONFIG_DIR, Journey, audit_verify, demo_journey


@pytest.fixture
async def journey(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Journey]:
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config, symlinks=False)
    licences = yaml.safe_load((config / "licences.yaml").read_text(encoding="utf-8"))
    licences["bulk_limit"] = "2/hour"
    licences["bulk_approved"] = {"demo-portal-shaanxi": {"birth-medical-certificate": "100/hour"}}
    (config / "licences.yaml").write_text(yaml.safe_dump(licences, allow_unicode=True), "utf-8")
    (tmp_path / "run").mkdir()
    async with demo_journey(tmp_path / "run", monkeypatch, config_dir=config) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path / "run") == 0


async def submit(journey: Journey, n: int, client_id: str) -> tuple[int, dict[str, Any]]:
    token = journey.issuer.issue("demo-ma-wenhua", "L3", client_id=client_id)
    body = copy.deepcopy(S12_CASE[3])
    body["data"]["household_address"] = f"西宁市城中区示范巷{n}号"
    response = await journey.client.post(
        "/api/v1/cases",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"s12-bulk-{n:04d}"},
    )
    return response.status, await response.json(content_type=None)


async def test_a_requester_over_its_volume_is_refused_unless_the_issuer_approved(
    journey: Journey,
) -> None:
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    for n in (1, 2):
        status, receipt = await submit(journey, n, "demo-portal-qinghai")
        assert status == 202, receipt
    asked = len(issuer.recorder.requests)
    status, problem = await submit(journey, 3, "demo-portal-qinghai")
    assert (status, problem["code"]) == (403, "client.licence_volume_exceeded")
    assert "批量用证" in problem["detail"]
    assert len(issuer.recorder.requests) == asked  # refused before the issuer is asked
    # The issuer approved more for the Shaanxi portal.
    for n in (4, 5, 6):
        status, receipt = await submit(journey, n, "demo-portal-shaanxi")
        assert status == 202, receipt
    # The refusal is in the audit trail.
    operator = journey.issuer.issue("demo-auditor", "L3", roles=["auditor"])
    response = await journey.client.get(
        "/admin/audit?type=licence_verified",
        headers={"Authorization": f"Bearer {operator}"},
    )
    records = (await response.json())["records"]
    assert any(r["error_code"] == "client.licence_volume_exceeded" for r in records), records
