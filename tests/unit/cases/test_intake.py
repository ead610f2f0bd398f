"""收件受理 refusals: each bad application gets its stable code and nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.cases.intake import build_new_case
from gateway.cases.model import Mode
from gateway.errors import GatewayError
from gateway.principal import Principal
from gateway.settings import ServiceSettings
from tests.unit.cases.catalog_fixtures import SERVICE, build_catalog

CITIZEN = Principal("citizen-a", "L3", "portal-63")
CLERK = Principal(
    "citizen-a",
    "Counter",
    "window-61",
    actor="clerk-7",
    actor_role="clerk",
    roles=frozenset({"clerk"}),
)
GOOD: dict[str, Any] = {
    "service": "filing",
    "operation": "apply",
    "receiving_province": "63",
    "handling_province": "61",
    "purpose": "test",
    "data": {"n": 1},
    "materials": [{"code": "id-card", "ref": "urn:elicence:1", "digest": "sha256:" + "c" * 64}],
}


def refused(
    tmp_path: Path,
    body: dict[str, Any],
    principal: Principal = CITIZEN,
    key: str | None = "key-00000001",
) -> str:
    catalog, _ = build_catalog(tmp_path)
    with pytest.raises(GatewayError) as caught:
        build_new_case(catalog, principal, body, idempotency_key=key)
    return caught.value.code


def test_a_good_application_becomes_a_new_case(tmp_path: Path) -> None:
    catalog, _ = build_catalog(tmp_path)
    case, routes = build_new_case(catalog, CITIZEN, GOOD, idempotency_key="key-00000001")
    assert case.mode == Mode.ONLINE
    assert [p.system for p in case.parts] == ["sys-61"]
    assert routes[0].operation_name == "apply"
    assert case.case_id.startswith("TB63")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"service": "nope"}, "client.unknown_service"),
        ({"handling_province": "32"}, "client.no_agreement"),
        ({"receiving_province": "62"}, "client.no_agreement"),
        ({"operation": "status"}, "client.not_a_submission"),
        ({"mode": "proxy"}, "client.clerk_required"),
        ({"materials": []}, "client.materials_invalid"),
        (
            {"materials": [{"code": "id-card", "ref": "urn:x", "digest": "md5:00"}]},
            "client.materials_invalid",
        ),
        (
            {"materials": [{"code": "cv", "ref": "urn:x", "digest": "sha256:" + "d" * 64}]},
            "client.materials_invalid",
        ),
        ({"purpose": ""}, "client.validation_failed"),
        ({"mode": "joint"}, "client.validation_failed"),
    ],
)
def test_bad_applications_are_refused(tmp_path: Path, change: dict[str, Any], code: str) -> None:
    assert refused(tmp_path, {**GOOD, **change}) == code


def test_missing_or_malformed_key_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path, GOOD, key=None) == "client.idempotency_key_missing"
    assert refused(tmp_path, GOOD, key="short") == "client.idempotency_key_missing"


def test_level_too_low_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path, GOOD, Principal("c", "L1", "p")) == "client.insufficient_level"


def test_a_window_case_needs_the_clerk_to_check_originals(tmp_path: Path) -> None:
    body = {**GOOD, "mode": "proxy", "receiving_province": "61", "handling_province": "62"}
    assert refused(tmp_path, body, CLERK) == "client.validation_failed"
    catalog, _ = build_catalog(tmp_path)
    case, _ = build_new_case(
        catalog,
        CLERK,
        {**body, "originals_check": {"checked": True}},
        idempotency_key="key-00000002",
    )
    assert case.originals_checked_by == "clerk-7"
    assert case.actor == "clerk-7"
    assert case.subject == "citizen-a"


def test_case_blocks_must_name_query_operations_of_the_service() -> None:
    broken = {
        **SERVICE,
        "operations": {
            **SERVICE["operations"],
            "apply": {**SERVICE["operations"]["apply"], "case": {"poll_with": "nope"}},
            "apply-once": {
                **SERVICE["operations"]["apply-once"],
                "case": {"reconcile_with": "apply"},
            },
        },
    }
    with pytest.raises(ValidationError) as caught:
        ServiceSettings.model_validate(broken)
    text = str(caught.value)
    assert "case.poll_with: no operation 'nope'" in text
    assert "case.reconcile_with: 'apply' is not a query" in text
