"""Scenarios S1, S4, S6 and S7 through the gateway to the demo provinces over real HTTP and SOAP."""

from __future__ import annotations

from typing import Any

from gateway.demo.backends import QINGHAI_SI, SHAANXI_DEGREE, SHAANXI_HOUSING, SHAANXI_SI
from gateway.demo.residents import DUAN_HAORAN, MA_WENHUA, SU_LANXIN
from tests.flows.conftest import Journey


def envelope(operation: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operation": operation,
        "receiving_province": "63",
        "handling_province": extra.pop("handling", "61"),
        "purpose": "跨省通办 demo journey",
        "data": data,
        **extra,
    }


async def test_s1_pension_transfer_history_then_application(journey: Journey) -> None:
    status, history = await journey.call(
        "pension-transfer",
        envelope(
            "contribution-history",
            {
                "id_number": MA_WENHUA.id_number,
                "name": MA_WENHUA.name,
                "insurance_number": "6101002010000123",
            },
        ),
    )
    assert status == 200, history
    data = history["data"]
    assert history["system"] == "shaanxi-si"
    assert data["insurance_number"] == "6101002010000123"
    assert data["total_months"] == sum(c["months"] for c in data["contributions"])
    certificate = data["certificate"]
    assert certificate["number"]
    assert certificate["content_base64"]

    application = envelope(
        "transfer-application",
        {
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "insurance_number": "6301002023004567",
            "out_province": "61",
            "contribution_certificate_no": certificate["number"],
        },
        handling="63",
    )
    first_status, first = await journey.call(
        "pension-transfer", application, **{"Idempotency-Key": "s1-apply-1"}
    )
    again_status, again = await journey.call(
        "pension-transfer", application, **{"Idempotency-Key": "s1-apply-1"}
    )
    assert first_status == again_status == 200, (first, again)
    assert first["system"] == "qinghai-si"
    assert first["data"]["acceptance_number"] == again["data"]["acceptance_number"]
    submitted = journey.backends.recorder(QINGHAI_SI).for_operation("SubmitTransfer")
    # The back-end sees the caller's key scoped to the client and the person, never as sent.
    keys = {r.idempotency_key for r in submitted}
    assert len(submitted) == 2
    assert len(keys) == 1
    assert "s1-apply-1" not in keys
    history_call = journey.backends.recorder(SHAANXI_SI).for_operation("GetContributionHistory")[0]
    assert history_call.context["purpose"] == "跨省通办 demo journey"
    assert history_call.context["principal"] == journey.tokens["citizen-l3"]["subject"]
    assert history_call.context["request_id"] == history["request_id"]


async def test_s1_needs_level_three(journey: Journey) -> None:
    status, body = await journey.call(
        "pension-transfer",
        envelope(
            "contribution-history",
            {
                "id_number": SU_LANXIN.id_number,
                "name": SU_LANXIN.name,
                "insurance_number": "6101002010000123",
            },
        ),
        token="citizen-l2",
    )
    assert status == 403
    assert body["code"] == "client.insufficient_level"
    assert body["required_level"] == "L3"
    assert journey.backends.recorder(SHAANXI_SI).count == 0


async def test_s4_account_then_idempotent_transfer(journey: Journey) -> None:
    status, account = await journey.call(
        "housing-fund-transfer",
        envelope(
            "account-query", {"account_no": "610100201000123456", "id_number": MA_WENHUA.id_number}
        ),
    )
    assert status == 200, account
    assert account["data"]["account_no"] == "610100201000123456"
    assert account["data"]["balance"] > 0
    assert MA_WENHUA.name not in str(account)  # the fund centre masks the holder itself

    transfer = envelope(
        "transfer",
        {
            "account_no": "610100201000123456",
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "in_centre_code": "630100",
        },
    )
    ids = set()
    for _ in range(3):
        status, body = await journey.call(
            "housing-fund-transfer", transfer, **{"Idempotency-Key": "s4-transfer-1"}
        )
        assert status == 200, body
        ids.add(body["data"]["transfer_id"])
    assert len(ids) == 1, "a repeated submission created a second transfer"
    housing = journey.backends.housing
    assert len(housing.transfers) == 1


async def test_s6_degree_verification_needs_consent_and_returns_minimal_fields(
    journey: Journey,
) -> None:
    data = {
        "name": SU_LANXIN.name,
        "id_number": SU_LANXIN.id_number,
        "certificate_number": "106971202005123456",
    }
    # Someone else's degree: a free-text reference opens nothing; no grant, no call.
    status, body = await journey.call(
        "degree-verification",
        envelope("verify", data, authorisation_ref="AUTH-2026-0001"),
        token="citizen-l3",
    )
    assert (status, body["code"]) == (403, "client.not_data_subject"), body
    assert journey.backends.recorder(SHAANXI_DEGREE).count == 0

    # The holder herself.
    status, body = await journey.call(
        "degree-verification", envelope("verify", data), token="citizen-l2"
    )
    assert status == 200, body
    assert body["data"]["valid"] is True
    assert set(body["data"]) <= {
        "valid",
        "result",
        "holder_name",
        "education_level",
        "degree",
        "institution",
        "conferred_on",
    }
    seen = journey.backends.recorder(SHAANXI_DEGREE).requests[-1]
    assert "authorisation_ref" not in seen.context  # no grant was needed, none is named
    assert seen.context["subjects"].startswith("person:")


async def test_s6_mismatch_is_an_answer_and_unknown_holder_a_refusal(journey: Journey) -> None:
    status, body = await journey.call(
        "degree-verification",
        envelope(
            "verify",
            {
                "name": SU_LANXIN.name,
                "id_number": SU_LANXIN.id_number,
                "certificate_number": "1069712020059999",
            },
        ),
        token="citizen-l2",
    )
    assert status == 200, body
    assert body["data"]["valid"] is False

    status, body = await journey.call(
        "degree-verification",
        envelope(
            "verify",
            {
                "name": DUAN_HAORAN.name,
                "id_number": DUAN_HAORAN.id_number,
                "certificate_number": "106971202005123456",
            },
        ),
        token="citizen-l2",
    )
    # Another person's ID number: refused before Shaanxi is asked.
    assert (status, body["code"]) == (403, "client.not_data_subject"), body
    assert DUAN_HAORAN.id_number not in str(body)
    assert journey.backends.recorder(SHAANXI_DEGREE).count == 1


async def test_housing_outage_is_retried_then_answered(journey: Journey) -> None:
    recorder = journey.backends.recorder(SHAANXI_HOUSING)
    recorder.trouble.fail_next = 1
    recorder.trouble.retry_after = 0
    status, body = await journey.call(
        "housing-fund-transfer",
        envelope(
            "account-query", {"account_no": "610100201000123456", "id_number": MA_WENHUA.id_number}
        ),
    )
    assert status == 200, body
    assert body["attempts"] == 2
    assert recorder.count == 2


async def test_a_malformed_idempotency_key_never_reaches_the_back_end(journey: Journey) -> None:
    transfer = envelope(
        "transfer",
        {
            "account_no": "610100201000123456",
            "id_number": MA_WENHUA.id_number,
            "name": MA_WENHUA.name,
            "in_centre_code": "630100",
        },
    )
    status, body = await journey.call(
        "housing-fund-transfer", transfer, **{"Idempotency-Key": "k" * 129}
    )
    assert status == 422, body
    assert body["code"] == "client.validation_failed"
    assert journey.backends.recorder(SHAANXI_HOUSING).count == 0
