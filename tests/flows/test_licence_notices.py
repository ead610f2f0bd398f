"""An issuer's signed status change (吊销、注销、变更同步): cached answers dropped at once, the
cases in flight that rely on the licence told, and a forged, stale or replayed notice refused."""

from __future__ import annotations

import asyncio
import copy
import io
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.demo.backends import ENV_NAMES, SHAANXI_LICENCE
from gateway.demo.cases import S12_CASE
from gateway.demo.licence_system import BIRTH_CERTIFICATE, signed_notice
from tests.flows.conftest import CONFIG_DIR, Journey, audit_verify, demo_journey

NOTICES = "/api/v1/callbacks/licences/61"


# The journey of tests/flows/conftest.py polls statuses at the usual pace, not quickly: a case
# stays in flight while the notice arrives.


def notice(sequence: int, status: str = "revoked") -> dict[str, Any]:
    return {
        "sequence": sequence,
        "licenceType": "birth-medical-certificate",
        "number": BIRTH_CERTIFICATE,
        "status": status,
        "changedAt": "2026-12-06T09:00:00Z",
    }


async def push(
    journey: Journey, body: dict[str, Any], *, secret: str | None = None, now: float | None = None
) -> tuple[int, dict[str, Any]]:
    key = secret or os.environ[ENV_NAMES["shaanxi_licence_notice_key"]]
    raw, headers = signed_notice(key, body, now)
    response = await journey.client.post(NOTICES, data=raw, headers=headers)
    return response.status, await response.json(content_type=None)


async def submit(journey: Journey, key: str) -> tuple[int, dict[str, Any]]:
    body = copy.deepcopy(S12_CASE[3])
    body["materials"] = [
        {"code": "birth-medical-certificate", "licence": {"number": BIRTH_CERTIFICATE}}
    ]
    body["data"]["household_address"] = f"西宁市城中区示范巷{len(key)}号"
    response = await journey.client.post(
        "/api/v1/cases", json=body, headers={**journey.auth(), "Idempotency-Key": key}
    )
    return response.status, await response.json(content_type=None)


async def test_a_revocation_reaches_the_case_in_flight_and_every_later_use(
    journey: Journey,
) -> None:
    issuer = journey.backends.licence_systems[SHAANXI_LICENCE]
    status, receipt = await submit(journey, "s12-in-flight-01")
    assert status == 202, receipt
    # Cached: a second application does not ask the issuer again.
    asked = len(issuer.recorder.requests)
    status, _second = await submit(journey, "s12-in-flight-0002")
    assert status == 202
    assert len(issuer.recorder.requests) == asked
    # The issuer revokes it and says so.
    issuer.set_status("birth-medical-certificate", BIRTH_CERTIFICATE, "revoked")
    status, answer = await push(journey, notice(1))
    assert status == 200, answer
    assert answer["status"] == "applied"
    assert answer["cached_dropped"] >= 1
    assert sorted(answer["cases"]) == sorted([receipt["case_id"], _second["case_id"]])
    response = await journey.client.get(
        f"/api/v1/cases/{receipt['case_id']}", headers=journey.auth()
    )
    case = await response.json()
    told = [t["reason"] for t in case["timeline"] if "now revoked" in (t.get("reason") or "")]
    assert told == [
        f"licence birth-medical-certificate {BIRTH_CERTIFICATE} of province 61 is now revoked at"
        " its issuer on 2026-12-06T09:00:00Z (notice #1)"
    ]
    # Every later use asks the issuer again and is refused.
    status, problem = await submit(journey, "s12-after-revoke-1")
    assert (status, problem["code"]) == (422, "client.licence_revoked")
    # The same notice again changes nothing.
    status, answer = await push(journey, notice(1))
    assert (status, answer["status"], answer["cases"]) == (200, "duplicate", [])


async def test_a_forged_stale_or_malformed_notice_is_refused(journey: Journey) -> None:
    status, problem = await push(journey, notice(1), secret="not-the-issuers-key")
    assert (status, problem["code"]) == (401, "client.callback_refused")
    status, problem = await push(journey, notice(1), now=1_000_000.0)
    assert (status, problem["code"]) == (401, "client.callback_refused")
    status, problem = await push(journey, {**notice(1), "status": "withdrawn"})
    assert (status, problem["code"]) == (422, "client.callback_invalid")
    status, problem = await push(journey, {**notice(1), "licenceType": "real-estate-certificate"})
    assert (status, problem["code"]) == (422, "client.callback_invalid")  # not issued in 61
    raw, headers = signed_notice(os.environ[ENV_NAMES["shaanxi_licence_notice_key"]], notice(1))
    response = await journey.client.post("/api/v1/callbacks/licences/63", data=raw, headers=headers)
    assert (response.status, (await response.json())["code"]) == (401, "client.callback_refused")


@pytest.fixture
async def polled(
    tmp_path: Path, log_stream: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Journey]:
    """The demo with Shaanxi's licence system polled every 0.1 s instead of pushing."""
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config, symlinks=False)
    licences = yaml.safe_load((config / "licences.yaml").read_text(encoding="utf-8"))
    licences["issuers"]["61"]["poll_seconds"] = 0.1
    (config / "licences.yaml").write_text(yaml.safe_dump(licences, allow_unicode=True), "utf-8")
    (tmp_path / "run").mkdir()
    async with demo_journey(tmp_path / "run", monkeypatch, config_dir=config) as journey:
        yield journey
    assert await asyncio.to_thread(audit_verify, tmp_path / "run") == 0


async def test_a_polled_issuers_revocation_reaches_the_case_in_flight(polled: Journey) -> None:
    status, receipt = await submit(polled, "s12-polled-0001")
    assert status == 202, receipt
    polled.backends.licence_systems[SHAANXI_LICENCE].set_status(
        "birth-medical-certificate", BIRTH_CERTIFICATE, "revoked"
    )
    told: list[str] = []
    for _ in range(100):
        response = await polled.client.get(
            f"/api/v1/cases/{receipt['case_id']}", headers=polled.auth()
        )
        case = await response.json()
        told = [t["reason"] for t in case["timeline"] if "now revoked" in (t.get("reason") or "")]
        if told:
            break
        await asyncio.sleep(0.05)
    assert told == [
        f"licence birth-medical-certificate {BIRTH_CERTIFICATE} of province 61 is now revoked at"
        " its issuer (found by polling the issuer)"
    ]
    # Told once, however often the issuer is asked again.
    await asyncio.sleep(0.4)
    response = await polled.client.get(f"/api/v1/cases/{receipt['case_id']}", headers=polled.auth())
    case = await response.json()
    assert len([t for t in case["timeline"] if "now revoked" in (t.get("reason") or "")]) == 1
